CREATE TABLE home_page (id serial PRIMARY KEY, title text NOT NULL, slug text NOT NULL, depth int NOT NULL, live boolean NOT NULL DEFAULT true)
