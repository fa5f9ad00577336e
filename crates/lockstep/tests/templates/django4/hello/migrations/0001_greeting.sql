CREATE TABLE hello_greeting (id serial PRIMARY KEY, message text NOT NULL);
INSERT INTO hello_greeting (message) VALUES ('Hello from the django4 corpus, migrated by the deploy hook')
