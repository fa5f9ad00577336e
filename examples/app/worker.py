#!/usr/bin/env python3
"""Background worker: a heartbeat line every 0.2 s in storage/worker-<node>.log."""

import signal
import sys
import time

from lockstep_sample import append_jsonl, node, record, safe_name, say, storage_path

stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True


def main():
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log = storage_path(f"worker-{safe_name(node())}.log")
    say(f"worker.py: started, writing {log}")
    while not stopping:
        append_jsonl(log, record(t=time.time()))
        time.sleep(0.2)
    append_jsonl(log, record(t=time.time(), event="stop"))
    say("worker.py: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
