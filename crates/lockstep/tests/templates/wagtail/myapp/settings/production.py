"""Settings on the platform: its database relationship, its app folder, a strict host list."""

import base64
import json
import os

from myapp.settings.base import *  # noqa: F401,F403

NAME = "production"

if os.getenv("PLATFORM_APPLICATION_NAME") is not None:
    DEBUG = False
    # Hosts the CMS answers for; any other gets 400, as a Django site with DEBUG off does.
    ALLOWED_HOSTS = [
        "localhost",
        "127.0.0.1",
        ".platformsh.site",
    ]
    if os.getenv("PLATFORM_APP_DIR") is not None:
        STATIC_ROOT = os.path.join(os.environ["PLATFORM_APP_DIR"], "static")
    # Services exist at runtime only, not in the build.
    if os.getenv("PLATFORM_ENVIRONMENT") is not None:
        relationships = json.loads(base64.b64decode(os.environ["PLATFORM_RELATIONSHIPS"]))
        DATABASE = relationships["database"][0]
