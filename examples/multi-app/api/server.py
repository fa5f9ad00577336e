"""The api: its release at /api/release, its deploy hook's runs at /api/hooks."""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = os.environ["PLATFORM_TREE_ID"]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/api/release":
            self.answer(200, RELEASE)
        elif self.path == "/api/hooks":
            log = "data/hooks.log"
            self.answer(200, open(log).read() if os.path.exists(log) else "")
        else:
            self.answer(404, "no such api\n")

    def answer(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
