"""``linmaml verify``: run the verification table and print it (or one JSON object)."""
from __future__ import annotations

import json
import sys
import time

from linmaml.errors import ArgumentError


def register(subparsers):
    p = subparsers.add_parser("verify", help="check every closed-form identity on random instances",
                              description="Check every row of the verification table (each closed-form identity "
                                          "against an independent computation) on random instances; print the table. "
                                          "Exit status 1 if a row fails.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--markdown", action="store_true", help="print the table as the README shows it (Markdown)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random instances (default 0)")
    p.add_argument("--only", metavar="TEXT", help="run only identities whose name contains TEXT")
    p.set_defaults(func=run)


def run(args) -> int:
    from linmaml.verification import format_markdown, format_table, run_all  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    if args.seed < 0:  # checked before any identity runs (numpy would refuse it halfway through)
        raise ArgumentError("--seed", f"expected an integer >= 0, got {args.seed}")
    if args.json and args.markdown:
        raise ArgumentError("--markdown", "cannot be combined with --json")
    began = time.perf_counter()
    progress = None if args.json else (lambda name: print(f"  checking {name} ...", file=sys.stderr, flush=True))
    report = run_all(seed=args.seed, only=args.only, progress=progress)
    if args.only and not report["identities"]:
        raise ArgumentError("--only", f"no identity name contains {args.only!r}")
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.markdown:
        report["seed"] = args.seed
        print(format_markdown(report, time.perf_counter() - began))
    else:
        print(format_table(report))
    return 0 if report["passed"] else 1
