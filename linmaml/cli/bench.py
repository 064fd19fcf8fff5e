"""``linmaml bench``: the performance benchmark (:mod:`linmaml.bench.harness`), printed as a table.

    linmaml bench [--quick] [--only CASE ...] [--out DIR] [--device cpu|cuda] [--threads N]
                  [--allocator keep|system]

Times each case against its reference in the same process (closed-form surfaces, the deep-linear
meta-gradient, the per-task MAML loop on sinusoids against learn2learn- and higher-style loops,
meta-training iterations of MAML, KFO and ANIL, the allocator policy in fresh processes), checks that they agree, prints the table and
writes ``DIR/bench.json`` (``bench_cuda.json`` for ``--device cuda``) atomically. The harness is a
module of the installed package, so this runs from any folder.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import tempfile

from linmaml import _validate
from linmaml.cli._paths import path_option
from linmaml.bench.sizes import CASES
from linmaml.benchmarks.allocator import ALLOCATORS, apply_for_command, default_policy
from linmaml.errors import ArgumentError, ArgumentNotADirectoryError
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.default_out


def register(subparsers):
    p = subparsers.add_parser("bench", help="performance benchmark: each case against its reference, one table",
                              description="Time the closed forms and the meta-training step against their "
                                          "references in one process; print the table and write bench.json.")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (seconds): checks that every case runs and agrees, not the timings")
    p.add_argument("--only", action="append", metavar="CASE",
                   help=f"run only this case (repeatable): {', '.join(CASES)}; the other cases of an existing "
                        "bench.json of the same mode are kept, and the file says so")
    p.add_argument("--out", metavar="DIR", help="output folder (default: figures/ of the source tree, else ./figures; "
                                                "with --quick ./figures-quick)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default) or cuda: the meta-training cases on the GPU (no auto: the device names the "
                        "file written, bench.json or bench_cuda.json)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads (default 1, as every linmaml command; the committed figures/bench.json CNN "
                        "cases were measured with --threads 2, as make bench runs it)")
    p.add_argument("--allocator", choices=ALLOCATORS, default=None,
                   help="malloc policy of the benchmark process (default keep, as linmaml train runs, or "
                        "$LINMAML_ALLOCATOR; the allocator case compares both in fresh processes)")
    p.set_defaults(func=run)


def _writable_folder(out: pathlib.Path) -> list[pathlib.Path]:
    """Create ``out`` if needed and prove a file can be written there, before minutes of timing.

    Returns the folders this call created (deepest first), so a failed run can remove them again.
    A probe file is written and removed because ``os.access`` says yes to root even where the
    write would fail (read-only mounts) and cannot see every filesystem's refusals.
    """
    if out.exists() and not out.is_dir():
        raise ArgumentNotADirectoryError("--out", f"{out} is not a folder")
    created, folder = [], out
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".bench-probe-", dir=out)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        _remove_empty(created)
        # Keep the specific kinds the CLI reports as one line; anything else (read-only
        # filesystem, quota) is reported as a permission problem.
        kind = type(error) if isinstance(error, (NotADirectoryError, FileNotFoundError, PermissionError)) \
            else PermissionError
        raise kind(f"--out: cannot write into {out}: {error.strerror or error}") from None
    return created


def _remove_empty(folders: list[pathlib.Path]) -> None:
    """Remove the folders this command created, deepest first, as long as they are still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def run(args) -> int:
    for case in args.only or ():
        if case not in CASES:
            raise ArgumentError("--only", f"expected one of {', '.join(CASES)}, got {case!r}")
    if args.device not in ("cpu", "cuda"):
        raise ArgumentError("--device", f"expected cpu or cuda, got {args.device!r}")
    threads = args.threads if args.threads is not None else 1  # one policy for every command (run_settings)
    from linmaml.benchmarks.config import THREADS_MAX  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    threads = _validate.integer(threads, "--threads", minimum=1, maximum=THREADS_MAX)
    if args.device == "cuda":
        import torch  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

        if not torch.cuda.is_available():
            raise ArgumentError("--device", "cuda requested, but torch sees no GPU on this machine")
    if args.out is None:
        # the same default as linmaml reproduce: a quick run never replaces the committed figures/bench.json
        out = plots_figure.default_out(args.quick)
        if args.quick:
            print(f"linmaml bench: --quick without --out writes to {out} (smoke-test numbers; --out figures to "
                  f"replace the committed figures/bench.json)", file=sys.stderr, flush=True)
    else:
        out = path_option(args.out, "--out")  # ~ expanded (also in --out=~/x), '' refused; printed below
    # Every check on the input comes before the benchmark: a full run takes minutes, and an
    # output folder that cannot be written must not be discovered only at its end.
    apply_for_command(args.allocator or default_policy(), "linmaml bench")
    created = _writable_folder(out)
    try:
        from linmaml.bench import harness as bench  # lazy: as torch above

        record = bench.run(out, quick=args.quick, only=args.only, device=args.device, threads=threads)
    except BaseException:
        _remove_empty(created)  # a failed run leaves no empty folder behind
        raise
    print(bench.table(record))
    print(f"wrote {out / ('bench.json' if args.device == 'cpu' else f'bench_{args.device}.json')} "
          f"in {record['seconds']} s")
    return 0
