#!/usr/bin/env python3
"""Build hook: write build-info.json into the app dir, deterministically."""

import json
import os
import sys

# A .pyc of lockstep_sample would embed the source file's mtime and make two
# builds of the same tree differ; the app dir is read-only at runtime anyway.
sys.dont_write_bytecode = True

from lockstep_sample import APP_DIR, BUILD_INFO, say  # noqa: E402


def bump_cache_counter(cache_dir):
    """Count builds in the build cache, to show it survives between builds. Never touches the app dir."""
    path = os.path.join(cache_dir, "sample-app-build-count")
    try:
        with open(path, encoding="utf-8") as f:
            count = int(f.read().strip() or 0) + 1
    except (OSError, ValueError):
        count = 1
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{count}\n")
    return count


def main():
    if os.environ.get("FAIL_BUILD"):
        print("build.py: FAIL_BUILD is set, failing the build on purpose", file=sys.stderr, flush=True)
        return 1

    tree_id = os.environ.get("PLATFORM_TREE_ID")
    say(f"build.py: building {os.environ.get('PLATFORM_APPLICATION_NAME') or 'app'} tree={tree_id or 'unknown'} in {APP_DIR}")

    # Only inputs that are a function of the tree and its build-visible
    # variables: no time, no randomness, no cache contents.
    info = {
        "application": os.environ.get("PLATFORM_APPLICATION_NAME") or "app",
        "project": os.environ.get("PLATFORM_PROJECT"),
        "tree_id": tree_id,
    }
    note = os.environ.get("APP_RELEASE_NOTE")
    if note:
        info["release_note"] = note
    with open(BUILD_INFO, "w", encoding="utf-8") as f:
        f.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
    say(f"build.py: wrote {os.path.basename(BUILD_INFO)}" + (f" (release note: {note})" if note else ""))

    cache_dir = os.environ.get("PLATFORM_CACHE_DIR")
    if cache_dir and os.path.isdir(cache_dir):
        say(f"build.py: build #{bump_cache_counter(cache_dir)} using cache {cache_dir}")
    else:
        say("build.py: no PLATFORM_CACHE_DIR, skipping the cache counter")

    say("build.py: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
