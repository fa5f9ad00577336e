"""SQL on the app's PostgreSQL database, through psql."""

import os
import subprocess

from myapp import settings


def run(sql):
    """Runs `sql`; the rows, one string per line (columns joined by |)."""
    db = settings.database()
    result = subprocess.run(
        ["psql", "-h", db["host"], "-p", str(db["port"]), "-U", db["username"], "-d", db["path"],
         "-qtA", "-v", "ON_ERROR_STOP=1", "-c", sql],
        env={**os.environ, "PGPASSWORD": db["password"]},
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip())
    return result.stdout.splitlines()
