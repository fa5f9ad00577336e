#!/usr/bin/env python3
"""Summarises cache-tests results per test suite, as the suite's own display classifies them.

Usage: python3 summarize.py [tests-meta.json] [NAME=results.json ...]
Defaults: /tmp/cache-tests/tests-meta.json, the Lockstep edge's results from this folder, and
the nginx and Varnish results published in the installed package's results/ folder (they are
the suite's files, so they are read from the package, not kept here).
Prints a Markdown table of pass / fail / optional-fail per suite (a "check" test's yes counts
as pass, its no is counted apart), then the totals of every result type, then the Lockstep
edge's failures. Standard library only.
"""

import json
import os
import sys

WORK = "/tmp/cache-tests"
PACKAGE = os.path.join(WORK, "node_modules", "http-cache-tests")
HERE = os.path.dirname(os.path.abspath(__file__))
PASS_TYPES = ("pass", "yes")


def classify(tests, test_id, results, seen=()):
    """lib/display.mjs determineTestResult, with dependencies honoured."""
    test = tests[test_id]
    result = results.get(test_id)
    if result is None:
        return "untested"
    for dep in test["depends_on"]:
        if dep in seen or dep not in tests:
            continue
        if classify(tests, dep, results, seen + (test_id,)) not in PASS_TYPES:
            return "dependency_fail"
    if isinstance(result, list) and result and result[0] == "Setup":
        return "retry" if len(result) > 1 and result[1] == "retry" else "setup_fail"
    kind = test["kind"]
    if kind == "required":
        return "pass" if result is True else "fail"
    if kind == "optimal":
        return "pass" if result is True else "optional_fail"
    if kind == "check":
        return "yes" if result is True else "no"
    raise ValueError(f"unknown kind {kind}")


def main(argv):
    meta_path = os.path.join(WORK, "tests-meta.json")
    if argv and not "=" in argv[0]:
        meta_path, argv = argv[0], argv[1:]
    impls = [a.split("=", 1) for a in argv] or [
        ("Lockstep edge", "lockstep-edge.json"),
        ("nginx", os.path.join(PACKAGE, "results", "nginx.json")),
        ("Varnish", os.path.join(PACKAGE, "results", "varnish.json")),
    ]
    suites = json.load(open(meta_path))
    tests = {}
    for suite in suites:
        for test in suite["tests"]:
            tests[test["id"]] = dict(test, suite=suite["id"])
    results = {}
    for name, path in impls:
        with open(path if os.path.isabs(path) else os.path.join(HERE, path)) as f:
            results[name] = json.load(f)

    # Proxy tests only (browser_only tests never run against a proxy).
    proxy = [s for s in suites if any(not t["browser_only"] for t in s["tests"])]
    names = [n for n, _ in impls]
    print("| Suite (tests) | " + " | ".join(f"{n} P / F / O" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    totals = {n: {} for n in names}
    for suite in proxy:
        ids = [t["id"] for t in suite["tests"] if not t["browser_only"]]
        cells = []
        for n in names:
            counts = {}
            for i in ids:
                c = classify(tests, i, results[n])
                counts[c] = counts.get(c, 0) + 1
                totals[n][c] = totals[n].get(c, 0) + 1
            p = counts.get("pass", 0) + counts.get("yes", 0)
            cells.append(f"{p} / {counts.get('fail', 0)} / {counts.get('optional_fail', 0)}")
        print(f"| {suite['name']} ({len(ids)}) | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        t = totals[n]
        cells.append(
            f"**{t.get('pass', 0) + t.get('yes', 0)} / {t.get('fail', 0)} / {t.get('optional_fail', 0)}**"
        )
    print("| **Total** | " + " | ".join(cells) + " |")
    print()
    kinds = ["pass", "fail", "optional_fail", "yes", "no", "setup_fail", "retry",
             "dependency_fail", "untested"]
    print("| Result type | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in kinds:
        print(f"| {k} | " + " | ".join(str(totals[n].get(k, 0)) for n in names) + " |")
    print()
    first = names[0]
    print(f"{first}: tests not passed (class, suite, id, detail)")
    for suite in proxy:
        for t in suite["tests"]:
            if t["browser_only"]:
                continue
            c = classify(tests, t["id"], results[first])
            if c in PASS_TYPES:
                continue
            r = results[first].get(t["id"])
            detail = r[1] if isinstance(r, list) and len(r) > 1 else r
            print(f"- {c:15} {suite['id']:16} {t['id']}: {detail}")


if __name__ == "__main__":
    main(sys.argv[1:])
