INSERT INTO home_page (title, slug, depth) VALUES ('Welcome to the wagtail corpus', 'home', 2)
