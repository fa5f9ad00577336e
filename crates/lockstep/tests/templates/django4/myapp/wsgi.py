"""The WSGI application: checks the host as ALLOWED_HOSTS says, then hands over to the views."""

import os
from datetime import datetime, timezone

from hello import views
from myapp import settings


def host_allowed(host):
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    for pattern in settings.ALLOWED_HOSTS:
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith(".") and (name == pattern[1:] or name.endswith(pattern)):
            return True
    return False


def log(line):
    os.makedirs(settings.LOG_DIR, exist_ok=True)
    with open(os.path.join(settings.LOG_DIR, "requests.log"), "a") as file:
        file.write(f"{datetime.now(timezone.utc).isoformat()} {line}\n")


def application(environ, start_response):
    host = environ.get("HTTP_HOST", "")
    if not host_allowed(host):
        log(f"400 disallowed host {host!r}")
        start_response("400 Bad Request", [("Content-Type", "text/html")])
        return [b"<h1>Bad Request (400)</h1>"]
    status, body = views.route(environ.get("PATH_INFO", "/"))
    log(f"{status[:3]} {environ.get('PATH_INFO')}")
    start_response(status, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")])
    return [body.encode()]
