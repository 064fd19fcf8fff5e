"""``linmaml data``: verify the few-shot datasets (``check``) and fetch Omniglot (``download``).

    linmaml data check omniglot [--data-root DIR] [--json]
    linmaml data download omniglot [--root DIR] [--url-base URL] [--force]

The data root defaults to ``$LINMAML_DATA``, then ``~/.cache/linmaml``; each benchmark lives in a
folder under it (``omniglot/``, ``cifar-fs/``, ``mini-imagenet/``). A missing, incomplete or
corrupt dataset is one line on stderr and exit status 2.
"""
from __future__ import annotations

import json

from linmaml.benchmarks.data import BENCHMARKS, check_dataset
from linmaml.cli._paths import path_option
from linmaml.errors import ArgumentError

DOWNLOADABLE = ("omniglot",)
#: Longest network timeout accepted: a day (socket timeouts of ~1e9 s and more overflow C's time type).
MAX_TIMEOUT = 86400.0


def register(subparsers):
    """Add ``data check`` (alias ``data info``) and ``data download``."""
    p = subparsers.add_parser("data", help="verify or download the few-shot datasets",
                              description="Verify the few-shot datasets (check) and fetch Omniglot (download).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True

    check = actions.add_parser("check", aliases=["info"], help="verify a dataset and print what was found",
                               description="Verify a dataset under the data root (its counts, and its checksums "
                                           "where the format has them) and print what was found; exit status 2 if it is missing, "
                                           "incomplete or corrupt.")
    check.add_argument("benchmark", choices=BENCHMARKS)
    _data_root_option(check)
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=run_check)

    download = actions.add_parser("download", help="fetch the official files and verify their md5",
                                  description="Fetch Omniglot's official zips into the data root's omniglot/ "
                                              "folder and verify their md5.")
    download.add_argument("benchmark", choices=DOWNLOADABLE,
                          help="only omniglot can be fetched; CIFAR-100 and mini-ImageNet are placed by hand")
    _data_root_option(download)
    download.add_argument("--url-base", metavar="URL",
                          help="where the zips are (default: the official brendenlake/omniglot repository)")
    download.add_argument("--force", action="store_true", help="download even if a verified copy is present")
    download.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                          help=f"seconds each file's download may take in all (a deadline, not per read), at most "
                               f"{MAX_TIMEOUT:g} (default 600)")
    download.set_defaults(func=run_download)
    p.set_defaults(func=lambda args: p.error("expected an action: check or download"))


def _data_root_option(parser):
    parser.add_argument("--data-root", "--root", dest="data_root", metavar="DIR",
                        help="data root (default: $LINMAML_DATA, else ~/.cache/linmaml)")


def run(args) -> int:
    """Dispatch to the chosen action."""
    return args.func(args)


def run_check(args) -> int:
    """Verify one benchmark and print the report (text or JSON)."""
    report = check_dataset(args.benchmark, path_option(args.data_root, "--data-root"))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format(report))
    return 0


def run_download(args) -> int:
    """Fetch the official Omniglot zips into ``<root>/omniglot/``, md5-verified."""
    from linmaml.benchmarks.data.download import download_omniglot  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    _check_timeout(args.timeout)
    # progress goes to stdout: stderr carries only the one-line error, if any
    report = download_omniglot(path_option(args.data_root, "--root"), url_base=args.url_base, force=args.force, timeout=args.timeout,
                               log=lambda line: print(line, flush=True))
    for name, entry in report.items():
        if entry["downloaded"]:
            print(f"{name}: {entry['path']} (downloaded, md5 {entry['md5']} verified)")
        else:
            print(f"{name}: {entry['path']} (already present)")
    return 0


def _check_timeout(timeout) -> None:
    if not (timeout > 0):  # also NaN
        raise ArgumentError("--timeout", f"expected a positive number of seconds, got {timeout}")
    if not timeout <= MAX_TIMEOUT:
        raise ArgumentError("--timeout", f"expected at most {MAX_TIMEOUT:g} seconds (a day), got {timeout:g}")


def _format(report: dict) -> str:
    lines = [f"{report['benchmark']}: OK"]
    if "sets" in report:  # omniglot
        lines.append(f"  folder {report['folder']}")
        for name, s in report["sets"].items():
            digest = s["checksum"]
            check = f"{digest['algorithm']} {digest['digest']} verified" if digest else "counts verified (no checksum for this format)"
            lines.append(f"  {name}: {s['format']} {s['path']}")
            lines.append(f"    {s['alphabets']} alphabets, {s['characters']} characters, {s['images']:,} images, "
                         f"ink fraction {s['ink_fraction']}; {check}")
        lines.append(f"  {report['images']:,} images in all")
    else:
        if "path" in report:
            lines.append(f"  {report['format']} {report['path']}")
        for name, digest in report.get("checksums", {}).items():
            lines.append(f"  {name}: md5 {digest['digest']} verified")
    for split, s in report.get("splits", {}).items():
        detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s.items() if k not in ("path",))
        lines.append(f"  split {split}: {detail}")
    lines.append(f"  checked in {report['seconds']} s")
    return "\n".join(lines)
