#!/usr/bin/env python3
"""Cron job: `cron.py` runs one tick; `cron.py --stop` is the cron's stop command."""

import os
import signal
import sys
import time

from lockstep_sample import append_jsonl, local_path, record, say, storage_path

PIDFILE = local_path("cron.pid")
LOG = storage_path("cron.log")


def on_term(signum, frame):
    append_jsonl(LOG, record(event="terminated", t=time.time()))
    say("cron.py: terminated")
    sys.exit(143)  # raised at the interrupted sleep, so the finally below still runs


def run():
    signal.signal(signal.SIGTERM, on_term)  # before the pid file exists, so --stop can't outrun it
    with open(PIDFILE, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    try:
        append_jsonl(LOG, record(event="start", t=time.time()))
        sleep = float(os.environ.get("CRON_SLEEP") or 1)
        say(f"cron.py: tick, working for {sleep}s")
        time.sleep(sleep)
        append_jsonl(LOG, record(event="end", t=time.time()))
        say("cron.py: done")
    finally:
        if read_pid() == os.getpid():
            os.remove(PIDFILE)
    return 0


def read_pid():
    try:
        with open(PIDFILE, encoding="utf-8") as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_cron(pid):
    """Guard against a stale pid file naming an unrelated process that reused the pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"cron.py" in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc")  # no /proc: trust the pid file


def stop():
    pid = read_pid()
    if pid is None or pid == os.getpid() or not is_cron(pid):
        pid = None
    # Logged before signalling, so it precedes the run's "terminated" line.
    append_jsonl(LOG, record(event="stop-command", t=time.time(), target=pid))
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid = None
    say(f"cron.py --stop: sent SIGTERM to {pid}" if pid else "cron.py --stop: no running cron")
    return 0

if __name__ == "__main__":
    sys.exit(stop() if sys.argv[1:] == ["--stop"] else run())
