#!/usr/bin/env python3
"""The project's management commands: `collectstatic` (build hook) copies each app's static
files into STATIC_ROOT; `migrate` (deploy hook) applies the SQL migrations not yet applied."""

import sys

from myapp import commands

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in commands.ALL:
        sys.exit(f"usage: manage.py {{{'|'.join(commands.ALL)}}}")
    commands.ALL[sys.argv[1]]()
