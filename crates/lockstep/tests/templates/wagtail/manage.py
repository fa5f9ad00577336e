#!/usr/bin/env python3
"""Management commands: `collectstatic` for the build hook, `migrate` for the deploy hook."""

import sys

from myapp import commands

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) == 2 else None
    if command not in commands.ALL:
        sys.exit("usage: manage.py collectstatic|migrate")
    commands.ALL[command]()
