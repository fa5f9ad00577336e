#!/usr/bin/env python3
"""searchd: a tiny document search engine over HTTP, its indexes kept as JSON files in
./data.ms (a mount, so they outlive deployments).

  GET    /                              status and the document count of each index
  GET    /indexes/NAME/search?q=WORDS   documents whose fields contain every word
  POST   /indexes/NAME/documents        adds (or replaces, by "id") a JSON list of documents
  DELETE /indexes/NAME                  drops an index
"""

import argparse
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data.ms")
LOCK = threading.Lock()
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def index_path(name):
    return os.path.join(DATA, f"{name}.json")


def load(name):
    try:
        with open(index_path(name)) as file:
            return json.load(file)
    except FileNotFoundError:
        return {}


def save(name, documents):
    temporary = index_path(name) + ".tmp"
    with open(temporary, "w") as file:
        json.dump(documents, file)
    os.replace(temporary, index_path(name))


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self):
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] == ["indexes"] and len(parts) >= 2 and not NAME.match(parts[1]):
            return None, None, None
        return url, parts, parse_qs(url.query)

    def do_GET(self):
        url, parts, query = self.route()
        if parts == []:
            names = sorted(f[:-5] for f in os.listdir(DATA) if f.endswith(".json"))
            self.reply(200, {"status": "available", "indexes": {n: len(load(n)) for n in names}})
        elif parts and len(parts) == 3 and parts[0] == "indexes" and parts[2] == "search":
            words = query.get("q", [""])[0].lower().split()
            hits = [d for d in load(parts[1]).values()
                    if all(any(w in str(v).lower() for v in d.values()) for w in words)]
            self.reply(200, {"hits": hits, "query": " ".join(words)})
        else:
            self.reply(404, {"message": "not found"})

    def do_POST(self):
        url, parts, _ = self.route()
        if parts and len(parts) == 3 and parts[0] == "indexes" and parts[2] == "documents":
            length = int(self.headers.get("Content-Length", 0))
            documents = json.loads(self.rfile.read(length))
            with LOCK:
                index = load(parts[1])
                for document in documents:
                    index[str(document["id"])] = document
                save(parts[1], index)
            self.reply(202, {"indexed": len(documents)})
        else:
            self.reply(404, {"message": "not found"})

    def do_DELETE(self):
        url, parts, _ = self.route()
        if parts and len(parts) == 2 and parts[0] == "indexes":
            with LOCK:
                if os.path.exists(index_path(parts[1])):
                    os.remove(index_path(parts[1]))
            self.reply(202, {"deleted": parts[1]})
        else:
            self.reply(404, {"message": "not found"})

    def log_message(self, format, *args):
        print(format % args, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-addr", required=True, help="HOST:PORT")
    host, port = parser.parse_args().http_addr.rsplit(":", 1)
    os.makedirs(DATA, exist_ok=True)
    print(f"searchd listening on {host}:{port}", flush=True)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
