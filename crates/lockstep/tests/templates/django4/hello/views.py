"""The pages: / shows the greeting the migration stored and which migrations ran."""

import html
import os

from myapp import db


def route(path):
    if path != "/":
        return "404 Not Found", "<h1>Not Found</h1>"
    greeting = db.run("SELECT message FROM hello_greeting ORDER BY id LIMIT 1")
    migrations = db.run("SELECT name FROM applied_migrations ORDER BY name")
    body = (
        "<!doctype html><title>django4 corpus</title>"
        f"<h1>{html.escape(greeting[0] if greeting else 'no greeting')}</h1>"
        f"<p>migrations: {html.escape(', '.join(migrations))}</p>"
        f"<p>environment file: {html.escape(os.environ.get('CORPUS_ENVIRONMENT_FILE', 'not sourced'))}</p>"
    )
    return "200 OK", body
