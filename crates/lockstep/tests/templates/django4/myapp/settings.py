"""Settings, with what the platform says in its environment variables."""

import base64
import json
import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Host names the app answers for; any other gets 400, as a Django site with DEBUG off does.
# A leading dot also admits subdomains.
ALLOWED_HOSTS = [
    "localhost",
    "127.0.0.1",
    ".platformsh.site",
]

INSTALLED_APPS = ["hello"]

STATIC_ROOT = os.path.join(os.environ.get("PLATFORM_APP_DIR", BASE_DIR), "static")
LOG_DIR = os.path.join(BASE_DIR, "logs")


def database():
    """The `database` relationship: host, port, username, password, path (the database)."""
    relationships = json.loads(base64.b64decode(os.environ["PLATFORM_RELATIONSHIPS"]))
    return relationships["database"][0]
