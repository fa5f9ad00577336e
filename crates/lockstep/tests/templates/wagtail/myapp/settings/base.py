"""Settings common to every place the CMS runs."""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "base"
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["home"]
STATIC_ROOT = os.path.join(BASE_DIR, "static")
LOG_DIR = os.path.join(BASE_DIR, "logs")
DATABASE = None
