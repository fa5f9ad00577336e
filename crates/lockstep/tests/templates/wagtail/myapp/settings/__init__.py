"""The settings module DJANGO_SETTINGS_MODULE names (base when unset)."""

import importlib
import os


def load():
    return importlib.import_module(os.environ.get("DJANGO_SETTINGS_MODULE", "myapp.settings.base"))
