"""What manage.py runs."""

import os
import shutil

from myapp import db
from myapp.settings import load


def collectstatic():
    settings = load()
    for app in settings.INSTALLED_APPS:
        source = os.path.join(settings.BASE_DIR, app, "static")
        if os.path.isdir(source):
            shutil.copytree(source, settings.STATIC_ROOT, dirs_exist_ok=True)
    print(f"static files collected into {settings.STATIC_ROOT} ({settings.NAME} settings)")


def migrate():
    settings = load()
    db.run("CREATE TABLE IF NOT EXISTS migrations_done (app text, name text, PRIMARY KEY (app, name))")
    done = set(db.run("SELECT app || '.' || name FROM migrations_done"))
    for app in settings.INSTALLED_APPS:
        folder = os.path.join(settings.BASE_DIR, app, "migrations")
        for file in sorted(f for f in os.listdir(folder) if f.endswith(".sql")):
            name = file[:-4]
            if f"{app}.{name}" in done:
                continue
            with open(os.path.join(folder, file)) as migration:
                sql = migration.read()
            db.run(f"BEGIN; {sql}; INSERT INTO migrations_done VALUES ('{app}', '{name}'); COMMIT;")
            print(f"  Applying {app}.{name}... OK")


ALL = {"collectstatic": collectstatic, "migrate": migrate}
