"""The deploy hook: brings both schemas up to date and records that it ran, on which node."""

import os

from services import mariadb, postgresql

postgresql(
    "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL, node text NOT NULL);"
    "CREATE TABLE IF NOT EXISTS migrations (id serial PRIMARY KEY, node text NOT NULL, deployment text NOT NULL)"
)
mariadb("CREATE TABLE IF NOT EXISTS carts (id INT PRIMARY KEY, node VARCHAR(64) NOT NULL)")
postgresql(
    "INSERT INTO migrations (node, deployment) VALUES "
    f"('{os.environ['LOCKSTEP_NODE']}', '{os.environ['LOCKSTEP_DEPLOYMENT']}')"
)
print(f"migrated on {os.environ['LOCKSTEP_NODE']}")
