"""A small threaded WSGI server for a unix socket, started as
`python -m myapp.serve --workers N --bind unix:PATH module:callable`."""

import argparse
import importlib
import os
import socket
import socketserver
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


class UnixWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    address_family = socket.AF_UNIX
    daemon_threads = True

    def server_bind(self):
        if os.path.exists(self.server_address):
            os.unlink(self.server_address)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 80
        self.setup_environ()


class Handler(WSGIRequestHandler):
    def setup(self):
        # A unix socket's peer has no address; WSGI wants one.
        self.client_address = ("127.0.0.1", 0)
        super().setup()

    def log_message(self, format, *args):
        print(format % args, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1, help="accepted; threads serve instead")
    parser.add_argument("--bind", required=True)
    parser.add_argument("app")
    options = parser.parse_args()
    if not options.bind.startswith("unix:"):
        parser.error("--bind takes unix:PATH")
    module, name = options.app.split(":")
    app = getattr(importlib.import_module(module), name)
    with UnixWSGIServer(options.bind[len("unix:"):], Handler) as server:
        server.set_app(app)
        print(f"listening at {options.bind}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
