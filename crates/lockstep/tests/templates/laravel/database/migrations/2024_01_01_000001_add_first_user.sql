INSERT INTO users (name, email) VALUES ('Corpus Admin', 'admin@corpus.test')
