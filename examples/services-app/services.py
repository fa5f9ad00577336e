"""The app's services, reached through PLATFORM_RELATIONSHIPS as on Platform.sh.

Standard library only: PostgreSQL and MariaDB through their command-line clients (psql,
mariadb), Redis over its own protocol on a socket.
"""

import base64
import json
import os
import socket
import subprocess


def relationship(name):
    relationships = json.loads(base64.b64decode(os.environ["PLATFORM_RELATIONSHIPS"]))
    return relationships[name][0]


def postgresql(sql):
    """Runs `sql` on the `database` relationship; the rows, one string per line."""
    db = relationship("database")
    result = subprocess.run(
        ["psql", "-h", db["host"], "-p", str(db["port"]), "-U", db["username"],
         "-d", db["path"], "-qtA", "-v", "ON_ERROR_STOP=1", "-c", sql],
        env={**os.environ, "PGPASSWORD": db["password"]},
        capture_output=True, text=True, check=True,
    )
    return result.stdout.splitlines()


def mariadb(sql):
    """Runs `sql` on the `shop` relationship; the rows, one string per line."""
    db = relationship("shop")
    result = subprocess.run(
        ["mariadb", "--no-defaults", "-h", db["host"], "-P", str(db["port"]),
         "-u", db["username"], db["path"], "-N", "-e", sql],
        env={**os.environ, "MYSQL_PWD": db["password"]},
        capture_output=True, text=True, check=True,
    )
    return result.stdout.splitlines()


def redis(*args):
    """One Redis command on the `cache` relationship; its answer."""
    cache = relationship("cache")
    with socket.create_connection((cache["host"], cache["port"]), timeout=10) as connection:
        request = f"*{len(args)}\r\n" + "".join(f"${len(str(a))}\r\n{a}\r\n" for a in args)
        connection.sendall(request.encode())
        reply = connection.makefile("rb").readline().decode().rstrip("\r\n")
    kind, rest = reply[0], reply[1:]
    if kind == "-":
        raise RuntimeError(rest)
    if kind == ":":
        return int(rest)
    return rest
