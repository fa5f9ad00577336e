#!/usr/bin/env python3
"""A test origin for lockstep-edge's integration tests: a stand-in for a node router.

It speaks the gate protocol (every answer carries x-lockstep-gate and x-lockstep-generation;
GET /.lockstep/gate answers the gate as JSON; a closed gate answers 503 with Retry-After), and it
can be switched, through its admin port, between:

  healthy   answers normally
  500       answers 500 to every app request (the gate path still answers)
  refuse    stops listening and drops its connections, so connections are refused
  slow      waits delay_ms before answering app requests

and its gate between open and closed, at any generation.

Responses are shaped by the query string (each request of a test uses its own path):
  cc=...        Cache-Control           vary=...      Vary
  set_cookie=.. Set-Cookie              etag=...      ETag (and 304 on If-None-Match)
  expires=...   Expires                 status=N      status code
  size=N        body of N bytes         chunked=1     chunked transfer encoding
  wait=NAME     send the first chunk, then wait until POST /release/NAME
  header=Name:value   any other header (repeatable)

Run: origin.py  -> prints "READY <app_port> <admin_port>" and exits when stdin closes.
Admin API (JSON): POST /mode {"mode", "delay_ms", "gate", "generation", "close"},
GET /counts (app requests by path), GET /log (every app request), POST /reset,
POST /release/NAME.
"""

import hashlib
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GATE_PATH = "/.lockstep/gate"

LOCK = threading.Lock()
STATE = {"mode": "healthy", "delay_ms": 0, "gate": "open", "generation": 1, "close": False}
COUNTS = {}
LOG = []
RELEASES = {}  # name -> threading.Event
CONNECTIONS = set()
CONN_SEQ = {}
NEXT_CONN = [0]


def release_event(name):
    with LOCK:
        if name not in RELEASES:
            RELEASES[name] = threading.Event()
        return RELEASES[name]


class AppServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def process_request(self, request, client_address):
        # Runs in the accept loop: connections are numbered in accept order.
        with LOCK:
            NEXT_CONN[0] += 1
            CONN_SEQ[request] = NEXT_CONN[0]
            CONNECTIONS.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with LOCK:
            CONNECTIONS.discard(request)
            CONN_SEQ.pop(request, None)
        super().shutdown_request(request)


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def gate_headers(self, state):
        if state["gate"] == "open":
            self.send_header("x-lockstep-gate", "open")
            self.send_header("x-lockstep-generation", str(state["generation"]))
        else:
            self.send_header("x-lockstep-gate", "closed")

    def finish_headers(self, state):
        if state["close"]:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def read_body(self, entry):
        """Reads the request body, recording progress in the log entry as it arrives."""
        data = bytearray()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
                with LOCK:
                    entry["received"] = len(data)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            while len(data) < length:
                chunk = self.rfile.read(min(65536, length - len(data)))
                if not chunk:
                    break
                data += chunk
                with LOCK:
                    entry["received"] = len(data)
        return bytes(data)

    def answer(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        with LOCK:
            state = dict(STATE)
        if url.path == GATE_PATH:
            if state["gate"] == "open":
                body = json.dumps({"state": "open", "generation": state["generation"]})
            else:
                body = json.dumps({"state": "closed"})
            body = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.gate_headers(state)
            self.finish_headers(state)
            self.wfile.write(body)
            return

        entry = {
            "method": self.command,
            "path": url.path,
            "target": self.path,
            "conn": CONN_SEQ.get(self.request, 0),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "received": 0,
            "time": time.time(),
        }
        with LOCK:
            COUNTS[url.path] = COUNTS.get(url.path, 0) + 1
            count = COUNTS[url.path]
            LOG.append(entry)
        request_body = self.read_body(entry)

        if state["gate"] != "open":
            body = b"closed\n"
            self.send_response(503)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", str(len(body)))
            self.gate_headers(state)
            self.finish_headers(state)
            self.wfile.write(body)
            return
        if state["mode"] == "slow":
            time.sleep(state["delay_ms"] / 1000.0)
        if state["mode"] == "500":
            body = b"origin error\n"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.gate_headers(state)
            self.finish_headers(state)
            self.wfile.write(body)
            return

        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.websocket(state)
            return

        def first(name, default=None):
            return query.get(name, [default])[0]

        status = int(first("status", "200"))
        etag = first("etag")
        if etag and self.headers.get("If-None-Match") == etag and self.command in ("GET", "HEAD"):
            self.send_response(304)
            self.send_header("ETag", etag)
            if first("cc"):
                self.send_header("Cache-Control", first("cc"))
            self.gate_headers(state)
            self.finish_headers(state)
            return

        size = first("size")
        if size is not None:
            body = b"x" * int(size)
        elif self.command in ("POST", "PUT"):
            digest = hashlib.sha256(request_body).hexdigest()
            body = f"received {len(request_body)} {digest}\n".encode()
        else:
            lang = self.headers.get("Accept-Language", "")
            body = f"{url.path} #{count} gen {state['generation']} port {self.server.server_address[1]} lang {lang}\n".encode()

        self.send_response(status)
        for name, header in (("cc", "Cache-Control"), ("vary", "Vary"), ("set_cookie", "Set-Cookie"),
                             ("expires", "Expires")):
            if first(name) is not None:
                self.send_header(header, first(name))
        if etag:
            self.send_header("ETag", etag)
        for raw in query.get("header", []):
            name, _, value = raw.partition(":")
            self.send_header(name.strip(), value.strip())
        self.send_header("X-Origin-Count", str(count))
        self.send_header("X-Origin-Port", str(self.server.server_address[1]))
        self.send_header("Content-Type", "text/plain")
        self.gate_headers(state)
        wait = first("wait")
        if first("chunked") or wait:
            self.send_header("Transfer-Encoding", "chunked")
            self.finish_headers(state)
            if self.command == "HEAD":
                return
            half = max(1, len(body) // 2)
            parts = [body[:half], body[half:]]
            for i, part in enumerate(parts):
                if part:
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.flush()
                if i == 0 and wait:
                    release_event(wait).wait(30)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.finish_headers(state)
            if self.command != "HEAD":
                self.wfile.write(body)

    def websocket(self, state):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        import base64
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(accept).decode())
        self.gate_headers(state)
        self.end_headers()
        self.wfile.flush()
        # Not real WebSocket framing: the edge copies bytes, so echoing bytes shows the tunnel.
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            self.request.sendall(data)
        self.close_connection = True


class AppHolder:
    def __init__(self):
        self.server = AppServer(("127.0.0.1", 0), App)
        self.port = self.server.server_address[1]
        self.thread = None
        self.start_thread()

    def start_thread(self):
        server = self.server
        self.thread = threading.Thread(target=lambda: server.serve_forever(0.02), daemon=True)
        self.thread.start()

    def stop(self):
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        self.server = None
        with LOCK:
            conns = list(CONNECTIONS)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def start(self):
        if self.server is not None:
            return
        for _ in range(100):
            try:
                self.server = AppServer(("127.0.0.1", self.port), App)
                break
            except OSError:
                time.sleep(0.02)
        self.start_thread()


APP = None


class Admin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, value):
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            if self.path == "/counts":
                value = dict(COUNTS)
            elif self.path == "/log":
                value = [dict(e) for e in LOG]
            else:
                value = dict(STATE)
        self.reply(value)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        if self.path == "/mode":
            change = json.loads(raw or b"{}")
            with LOCK:
                STATE.update(change)
                mode = STATE["mode"]
            if mode == "refuse":
                APP.stop()
            else:
                APP.start()
        elif self.path == "/reset":
            with LOCK:
                COUNTS.clear()
                LOG.clear()
        elif self.path.startswith("/release/"):
            release_event(self.path[len("/release/"):]).set()
        with LOCK:
            value = dict(STATE)
        self.reply(value)


def watch_stdin():
    while sys.stdin.buffer.read(1024):
        pass
    os._exit(0)


def main():
    global APP
    APP = AppHolder()
    admin = ThreadingHTTPServer(("127.0.0.1", 0), Admin)
    admin.daemon_threads = True
    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {APP.port} {admin.server_address[1]}", flush=True)
    admin.serve_forever()


if __name__ == "__main__":
    main()
