"""The deploy hook: fills the running engine's demo index from movies.json, talking to it on
$PORT as any client would (the engine is up before the deploy hook runs)."""

import json
import os
import sys
import urllib.request

INDEX = "movies"


def engine_url():
    port = os.environ.get("PORT")
    if not port:
        sys.exit("PORT is not set: the deploy hook cannot reach the running engine")
    return f"http://127.0.0.1:{port}"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(engine_url() + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def update():
    if os.environ.get("TEMPLATE_DEMO"):
        # The demo index starts afresh at each deployment.
        call("DELETE", f"/indexes/{INDEX}")
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "movies.json")) as file:
            documents = json.load(file)
        print(call("POST", f"/indexes/{INDEX}/documents", documents))
    print(call("GET", "/"))


if __name__ == "__main__":
    update()
