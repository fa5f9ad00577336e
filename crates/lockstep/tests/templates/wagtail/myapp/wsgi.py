"""The WSGI application: the host check of the settings, then the pages."""

import html
import os

from myapp import db
from myapp.settings import load


def allowed(host, patterns):
    name = host.split(":")[0]
    return any(
        pattern == "*" or name == pattern
        or (pattern.startswith(".") and (name == pattern[1:] or name.endswith(pattern)))
        for pattern in patterns
    )


def home_page():
    rows = db.run("SELECT title || '|' || slug FROM home_page WHERE live ORDER BY depth LIMIT 1")
    if not rows:
        return "404 Not Found", "<h1>No site is set up yet</h1>"
    title, slug = rows[0].split("|", 1)
    return "200 OK", (
        "<!doctype html><link rel=stylesheet href=/static/css/welcome.css>"
        f"<h1>{html.escape(title)}</h1><p>page /{html.escape(slug)}/, "
        f"settings {html.escape(load().NAME)}</p>"
    )


def application(environ, start_response):
    settings = load()
    host = environ.get("HTTP_HOST", "")
    os.makedirs(settings.LOG_DIR, exist_ok=True)
    with open(os.path.join(settings.LOG_DIR, "access.log"), "a") as log:
        log.write(f"{host} {environ.get('PATH_INFO')}\n")
    if not allowed(host, settings.ALLOWED_HOSTS):
        start_response("400 Bad Request", [("Content-Type", "text/html")])
        return [b"<h1>Bad Request (400)</h1>"]
    if environ.get("PATH_INFO", "/") == "/":
        status, body = home_page()
    else:
        status, body = "404 Not Found", "<h1>Page not found</h1>"
    start_response(status, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")])
    return [body.encode()]
