"""What manage.py runs."""

import os
import shutil

from myapp import db, settings


def collectstatic():
    os.makedirs(settings.STATIC_ROOT, exist_ok=True)
    copied = 0
    for app in settings.INSTALLED_APPS:
        source = os.path.join(settings.BASE_DIR, app, "static")
        if os.path.isdir(source):
            shutil.copytree(source, settings.STATIC_ROOT, dirs_exist_ok=True)
            copied += sum(len(files) for _, _, files in os.walk(source))
    print(f"{copied} static files copied to '{settings.STATIC_ROOT}'.")


def migrate():
    db.run("CREATE TABLE IF NOT EXISTS applied_migrations "
           "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    done = set(db.run("SELECT name FROM applied_migrations"))
    for app in settings.INSTALLED_APPS:
        folder = os.path.join(settings.BASE_DIR, app, "migrations")
        for name in sorted(f for f in os.listdir(folder) if f.endswith(".sql")):
            key = f"{app}.{name[:-4]}"
            if key in done:
                print(f"  {key}: already applied")
                continue
            with open(os.path.join(folder, name)) as migration:
                db.run(f"BEGIN; {migration.read()}; INSERT INTO applied_migrations (name) VALUES ('{key}'); COMMIT;")
            print(f"  Applying {key}... OK")


ALL = {"collectstatic": collectstatic, "migrate": migrate}
