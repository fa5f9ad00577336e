#!/usr/bin/env python3
"""Deploy hooks: `hooks.py deploy` and `hooks.py post_deploy`, recorded in shared storage."""

import fcntl
import os
import sys
import time

from lockstep_sample import append_jsonl, record, say, storage_path


def deployment():
    return os.environ.get("LOCKSTEP_DEPLOYMENT") or "manual"


def bump_counter():
    path = storage_path("deploy-count")
    try:
        with open(path, encoding="utf-8") as f:
            count = int(f.read().strip() or 0) + 1
    except FileNotFoundError:
        count = 1
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{count}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return count


def deploy():
    with open(storage_path("hooks.lock"), "a") as lock:
        # Try without blocking first so the record shows whether another
        # deploy hook held the lock at the same time (it never should).
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            say("hooks.py: another deploy hook holds the lock, waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
            waited = True

        t_start = time.time()
        count = bump_counter()
        say(f"hooks.py: deploy hook run #{count} for deployment {deployment()}")
        sleep = float(os.environ.get("DEPLOY_HOOK_SLEEP") or 0)
        if sleep > 0:
            say(f"hooks.py: migrating for {sleep}s")
            time.sleep(sleep)
        fail = bool(os.environ.get("DEPLOY_HOOK_FAIL"))
        # Where the web process listens, and what `.environment` set: a hook can reach the app.
        append_jsonl(storage_path("hooks.log"), record(
            hook="deploy", deployment=deployment(), count=count, waited_for_lock=waited,
            failed=fail, t_start=t_start, t_end=time.time(), port=os.environ.get("PORT"),
            environment_file=os.environ.get("SAMPLE_ENVIRONMENT_FILE")))

    if fail:
        print("hooks.py: DEPLOY_HOOK_FAIL is set, failing the deploy hook on purpose", file=sys.stderr, flush=True)
        return 1
    say("hooks.py: deploy hook done")
    return 0


def post_deploy():
    t_start = time.time()
    say(f"hooks.py: post_deploy hook for deployment {deployment()}")
    append_jsonl(storage_path("hooks.log"), record(
        hook="post_deploy", deployment=deployment(), t_start=t_start, t_end=time.time()))
    say("hooks.py: post_deploy hook done")
    return 0


HOOKS = {"deploy": deploy, "post_deploy": post_deploy}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in HOOKS:
        print(f"usage: {sys.argv[0]} {'|'.join(HOOKS)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(HOOKS[sys.argv[1]]())
