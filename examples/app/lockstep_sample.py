"""Helpers shared by the sample app's build, web, worker, cron and hook scripts.

Every value read from the environment has a default so that each script also
runs by hand from the app folder with nothing set.
"""

import base64
import binascii
import functools
import json
import os
import re

APP_DIR = os.environ.get("PLATFORM_APP_DIR") or os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(APP_DIR, "build-info.json")


def say(*parts):
    """Print one progress/log line to stdout right away (stdout is a pipe)."""
    print(*parts, flush=True)


def node():
    return os.environ.get("LOCKSTEP_NODE") or "local"


def environment():
    return os.environ.get("PLATFORM_ENVIRONMENT") or "local"


def build_info():
    try:
        with open(BUILD_INFO, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@functools.lru_cache(maxsize=None)
def release():
    """The tree id the running code was built from (the app dir is read-only, so it never changes)."""
    return build_info().get("tree_id") or os.environ.get("PLATFORM_TREE_ID") or "dev"


def decode_env_json(name):
    """Decode a base64-of-JSON variable such as PLATFORM_ROUTES; {} if missing or malformed."""
    raw = os.environ.get(name)
    if not raw:
        return {}
    try:
        return json.loads(base64.b64decode(raw))
    except (binascii.Error, ValueError):
        return {"_undecodable": raw}


def mount_path(mount, name):
    """Path of `name` inside a mount (storage, local or tmp), creating the mount when run by hand."""
    directory = os.path.join(APP_DIR, mount)
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, name)


def storage_path(name):
    """Shared by every node of the environment."""
    return mount_path("storage", name)


def local_path(name):
    """Private to this node."""
    return mount_path("local", name)


def safe_name(value):
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)


def record(**fields):
    """A log record stamped with who wrote it: node, release and pid."""
    return {**fields, "node": node(), "release": release(), "pid": os.getpid()}


def append_jsonl(path, rec):
    # One write() on an O_APPEND descriptor, so concurrent writers (other
    # processes, other nodes on shared storage) never interleave inside a line.
    line = (json.dumps(rec, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_jsonl(path):
    """Records of a JSON-lines file; [] if it does not exist. Skips a torn last line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out
