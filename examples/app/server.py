#!/usr/bin/env python3
"""Web process: a small HTTP server on 127.0.0.1:$PORT that tells who answered."""

import http.cookies
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from lockstep_sample import (decode_env_json, environment, node, read_jsonl, release,
                             say, storage_path)

NO_STORE = "no-store"
USER_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def env_json():
    env = {k: v for k, v in sorted(os.environ.items())
           if k.startswith(("PLATFORM_", "LOCKSTEP_", "SAMPLE_")) or k == "PORT"}
    variables = decode_env_json("PLATFORM_VARIABLES")
    # `env:`-prefixed variables should also be plain environment variables.
    names = {"GREETING"} | {k[4:] for k in variables if isinstance(k, str) and k.startswith("env:")}
    try:
        with open("/run/config.json", encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = None
    return {
        "variables": variables,
        "routes": decode_env_json("PLATFORM_ROUTES"),
        "relationships": decode_env_json("PLATFORM_RELATIONSHIPS"),
        "application": decode_env_json("PLATFORM_APPLICATION"),
        "env": env,
        "env_variables": {n: os.environ.get(n) for n in sorted(names)},
        "home": os.environ.get("HOME"),
        "cwd": os.getcwd(),
        "uid": os.getuid(),
        "config_json": config,
    }


def hooks_json():
    try:
        with open(storage_path("deploy-count"), encoding="utf-8") as f:
            count = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        count = 0
    return {"deploy_count": count, "hooks": read_jsonl(storage_path("hooks.log"))}


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so on shutdown only in-flight
    # requests are waited for, never idle keep-alive connections.
    protocol_version = "HTTP/1.0"
    server_version = "LockstepSample/1"

    def end_headers(self):
        # Also covers the stdlib's own error answers (400, 501...).
        self.send_header("X-Release", release())
        self.send_header("X-Node", node())
        super().end_headers()

    def log_message(self, fmt, *args):
        say(f"{self.address_string()} node={node()} release={release()} {fmt % args}")

    def answer(self, status, body, cache_control=NO_STORE, content_type="text/plain; charset=utf-8",
               headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache_control)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def answer_json(self, status, data):
        self.answer(status, json.dumps(data, indent=2, sort_keys=True) + "\n",
                    content_type="application/json")

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        route = {
            "/": self.index,
            "/private": self.private,
            "/login": self.login,
            "/slow": self.slow,
            "/health": lambda q: self.answer(200, "ok\n"),
            "/hooks": lambda q: self.answer_json(200, hooks_json()),
            "/env": lambda q: self.answer_json(200, env_json()),
        }.get(url.path)
        if route is None:
            self.answer(404, "not found\n")
        else:
            route(query)

    do_HEAD = do_GET

    def do_POST(self):
        if urlsplit(self.path).path != "/echo":
            self.read_body()  # drain it so the client sees the 404, not a reset
            self.answer(404, "not found\n")
            return
        body = self.read_body()
        self.answer(200, body, content_type=self.headers.get("Content-Type", "application/octet-stream"))

    def index(self, query):
        greeting = os.environ.get("GREETING") or "hello (GREETING is not set)"
        self.answer(200, f"{greeting}\nrelease={release()} node={node()} environment={environment()}\n",
                    cache_control="public, max-age=60")

    def private(self, query):
        cookies = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
        session = cookies.get("session")
        if session is None or not session.value:
            self.answer(403, "forbidden: log in at /login?user=NAME\n")
        else:
            self.answer(200, f"hello {session.value}\n", cache_control="private")

    def login(self, query):
        user = query.get("user", [""])[0]
        if not USER_RE.fullmatch(user):
            self.answer(400, "login needs ?user=NAME (letters, digits, . _ @ -)\n")
            return
        self.answer(200, f"logged in as {user}\n", headers=[("Set-Cookie", f"session={user}; Path=/")])

    def slow(self, query):
        try:
            ms = int(query.get("ms", ["1000"])[0])
        except ValueError:
            self.answer(400, "slow needs ?ms=INTEGER\n")
            return
        time.sleep(max(ms, 0) / 1000)
        self.answer(200, f"slept {ms} ms release={release()} node={node()}\n")

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


def exit_on_term():
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def main():
    port = int(os.environ.get("PORT") or 8000)

    if os.environ.get("SERVER_EXIT_AT_START"):
        print("SERVER_EXIT_AT_START is set: exiting before listening", file=sys.stderr, flush=True)
        return 1

    if os.environ.get("SERVER_NEVER_LISTEN"):
        say(f"SERVER_NEVER_LISTEN is set: never listening on port {port} release={release()} node={node()}")
        exit_on_term()
        while True:
            time.sleep(3600)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    # Non-daemon request threads, so server_close() waits for in-flight requests.
    server.daemon_threads = False

    def on_term(signum, frame):
        say("SIGTERM: finishing in-flight requests")
        # shutdown() blocks until serve_forever() returns, and serve_forever()
        # runs in this (the main) thread: call it from another one.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    crash_after = os.environ.get("SERVER_CRASH_AFTER")
    if crash_after:
        def crash():
            print(f"SERVER_CRASH_AFTER={crash_after}: crashing on purpose", file=sys.stderr, flush=True)
            os._exit(1)
        timer = threading.Timer(float(crash_after), crash)
        timer.daemon = True  # a clean SIGTERM exit must not wait for it
        timer.start()

    say(f"listening on 127.0.0.1:{port} release={release()} node={node()}")
    # A short poll interval lets shutdown() return quickly: a deploy waits for this process to
    # stop, and every tenth of a second here is a tenth of a second of closed site.
    server.serve_forever(poll_interval=0.02)
    server.server_close()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
