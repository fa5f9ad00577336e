"""GET / checks both services and says how each went, as JSON: MariaDB with a query through the
`database` relationship, Redis with a write and a read through `rediscache`."""

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def relationship(name):
    return json.loads(base64.b64decode(os.environ["PLATFORM_RELATIONSHIPS"]))[name][0]


def database_credentials():
    # From .environment's variables when the platform sourced it, else from the relationship.
    if os.environ.get("DB_HOST"):
        return {"host": os.environ["DB_HOST"], "port": os.environ["DB_PORT"],
                "username": os.environ["DB_USER"], "password": os.environ["DB_PASSWORD"],
                "path": os.environ["DB_NAME"]}
    return relationship("database")


def check_mariadb():
    db = database_credentials()
    result = subprocess.run(
        ["mariadb", "--no-defaults", "-h", db["host"], "-P", str(db["port"]), "-u", db["username"],
         "-N", "-B", db["path"], "-e", "SELECT CONCAT('mariadb ', VERSION())"],
        env={**os.environ, "MYSQL_PWD": db["password"]}, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return result.stdout.strip()


def redis(connection, *args):
    connection.sendall((f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)).encode())
    reader = connection.makefile("rb")
    line = reader.readline().decode().rstrip("\r\n")
    if line.startswith("-"):
        raise RuntimeError(line[1:])
    if line.startswith("$"):
        size = int(line[1:])
        return None if size < 0 else reader.read(size + 2)[:-2].decode()
    return line[1:]


def check_redis():
    cache = relationship("rediscache")
    key, value = f"corpus-{uuid.uuid4()}", "bar"
    with socket.create_connection((cache["host"], cache["port"]), timeout=10) as connection:
        redis(connection, "SET", key, value)
        got = redis(connection, "GET", key)
    if got != value:
        raise RuntimeError(f"read back {got!r}")
    return got


def wrap(check):
    try:
        return {"status": "OK", "return": check()}
    except Exception:
        return {"status": "ERROR", "error": traceback.format_exception(*sys.exc_info())}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/":
            self.send_error(404)
            return
        body = json.dumps({
            "database": wrap(check_mariadb),
            "redis": wrap(check_redis),
            "environment_file": bool(os.environ.get("DB_HOST")),
            "venv": sys.prefix,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-p", "--port", type=int, required=True)
    port = parser.parse_args().port
    print(f"serving on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
