"""A web app whose every answer comes from its services, so that a test can write through one
node and read back through another.

GET  /notes          the notes in PostgreSQL
POST /notes?body=B   adds a note
GET  /carts          the carts in MariaDB
POST /carts?id=N     adds a cart
POST /counter        increments the Redis counter
GET  /migrations     the deploy hook's runs
"""

import json
import os
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from services import mariadb, postgresql, redis

NODE = os.environ.get("LOCKSTEP_NODE", "?")


class Handler(BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps({"node": NODE, **body}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/notes":
            self.answer({"notes": postgresql("SELECT body FROM notes ORDER BY id")})
        elif path == "/carts":
            self.answer({"carts": [int(r) for r in mariadb("SELECT id FROM carts ORDER BY id")]})
        elif path == "/migrations":
            rows = postgresql("SELECT node || ' ' || deployment FROM migrations ORDER BY id")
            self.answer({"migrations": [dict(zip(("node", "deployment"), r.split())) for r in rows]})
        else:
            self.answer({"hello": "services"})

    def do_POST(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/notes" and re.fullmatch(r"[\w ]{1,64}", query.get("body", "")):
            postgresql(f"INSERT INTO notes (body, node) VALUES ('{query['body']}', '{NODE}')")
            self.answer({"added": query["body"]})
        elif url.path == "/carts" and query.get("id", "").isdigit():
            mariadb(f"INSERT INTO carts (id, node) VALUES ({int(query['id'])}, '{NODE}')")
            self.answer({"added": int(query["id"])})
        elif url.path == "/counter":
            self.answer({"counter": redis("INCR", "counter")})
        else:
            self.send_error(400)

    def log_message(self, format, *args):
        print(f"{self.command} {self.path}", flush=True)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
