"""The site: answers with its release and the release of the api it reached through its
`backend` relationship, so that a mix of releases would show."""

import base64
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = os.environ["PLATFORM_TREE_ID"]
BACKEND = json.loads(base64.b64decode(os.environ["PLATFORM_RELATIONSHIPS"]))["backend"][0]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/hooks":
            body = open("data/hooks.log").read() if os.path.exists("data/hooks.log") else ""
            self.answer(200, "text/plain", body)
            return
        url = f"http://{BACKEND['host']}:{BACKEND['port']}/api/release"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                api = reply.read().decode()
        except OSError as error:
            self.answer(502, "text/plain", f"the api did not answer: {error}\n")
            return
        self.answer(200, "application/json", json.dumps({"app": RELEASE, "api": api}))

    def answer(self, status, kind, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
