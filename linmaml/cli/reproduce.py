"""``linmaml reproduce``: regenerate every figure and ``figures/results.json`` (the main job).

    linmaml reproduce [--out DIR] [--only NAME ...] [--quick] [--threads N] [--list]

The figures are the modules ``fig_*`` of the installed package :mod:`linmaml.analysis`, found with
``pkgutil`` (no file paths: an installed wheel runs from any folder); each has a ``NAME`` and a
``run(out_dir, quick)``. Every figure writes into a private staging folder inside DIR; only when all
of them have succeeded are their files moved into DIR and ``results.json`` (one entry per figure:
settings and numbers) rewritten atomically, so an interrupted or failed run leaves the previous
results as they were. With ``--only``, the new entries are merged into the existing ``results.json``.

Re-running on unchanged code leaves DIR byte for byte as it was: a figure whose new JSON equals the
old one (every float within a relative 1e-6, the ``seconds`` it took ignored) keeps its old PNG, JSON
and ``results.json`` entry, so ``make reproduce`` does not dirty a git checkout for nothing.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import math
import multiprocessing
import os
import pathlib
import pkgutil
import shutil
import sys
import tempfile
import time

from linmaml import _io, _validate
from linmaml._extras import require
from linmaml._io import atomic_write_json
from linmaml.benchmarks.run_settings import threads_for
from linmaml.cli._paths import path_option
from linmaml.errors import ArgumentError, ArgumentNotADirectoryError, FileContentError
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.default_out

RESULTS = "results.json"
#: The package whose ``fig_*`` modules are the figures (a module attribute so tests can point it at
#: stand-ins).
FIGURE_PACKAGE = "linmaml.analysis"
#: Floats that agree within this relative tolerance count as unchanged (rounding across machines).
SAME_RTOL = 1e-6
#: Figures computed at once by default (each in its own process; a module attribute so tests can
#: run stand-in figures one after the other).
DEFAULT_JOBS = min(2, os.cpu_count() or 1)
SAME_ATOL = 1e-12


def register(subparsers):
    p = subparsers.add_parser(
        "reproduce", help="regenerate every figure and figures/results.json (the main job)",
        description="Regenerate every figure (the fig_* modules of linmaml.analysis) and figures/results.json; "
                    "files are replaced only after every figure has succeeded, and only where something changed.",
        epilog="Default --out: figures/ of the source checkout when linmaml runs from one, else ./figures; "
               "with --quick, ./figures-quick (a quick run writes into figures/ only when told --out figures).")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: figures/ of the source tree, else ./figures; with --quick "
                        "./figures-quick)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this figure (repeatable); its entry is merged into DIR/results.json")
    p.add_argument("--quick", action="store_true", help="each figure's quick mode (seconds; for smoke tests)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default 1, as every linmaml command)")
    p.add_argument("--jobs", type=int, default=None, metavar="J",
                   help="figures computed at once, each in its own process (default: 2 where there are 2 or more "
                        "cores, else 1); every figure computes the same numbers whatever J")
    p.add_argument("--list", action="store_true", help="list the figures and their modules, run nothing")
    p.set_defaults(func=run)


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str
    module_name: str
    module: object


def discover(package: str = FIGURE_PACKAGE) -> list[Figure]:
    """Import every ``fig_*`` module of ``package`` (sorted by module name) and check its interface."""
    pkg = importlib.import_module(package)
    figures, seen = [], {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("fig_") or info.ispkg:
            continue
        module_name = f"{package}.{info.name}"
        module = importlib.import_module(module_name)
        name = getattr(module, "NAME", None)
        if not isinstance(name, str) or not name or not callable(getattr(module, "run", None)):
            raise ValueError(f"{module_name}: expected a module-level NAME string and a run(out_dir, quick) function")
        if name in seen:
            raise ValueError(f"{module_name}: figure name {name!r} is also used by {seen[name]}")
        seen[name] = module_name
        figures.append(Figure(name, module_name, module))
    return figures


def select(figures: list[Figure], only: list[str] | None) -> list[Figure]:
    """The figures named in ``only`` (in discovery order), or all; unknown names raise ValueError."""
    if not only:
        return figures
    known = {f.name: f for f in figures}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ArgumentError("--only", f"unknown figure {unknown[0]!r} (known: {', '.join(known)})")
    return [f for f in figures if f.name in set(only)]


def _output_folder(out: pathlib.Path | None, quick: bool = False) -> pathlib.Path:
    # ~ expanded (also in --out=~/x), '' refused; the folder used is printed by reproduce(). A quick
    # run without --out goes to ./figures-quick: smoke-test numbers never replace the committed figures.
    if out is None and quick:
        out = plots_figure.default_out(quick=True)
        print(f"linmaml reproduce: --quick without --out writes to {out} (smoke-test numbers; --out figures to "
              f"replace the committed figures)", file=sys.stderr, flush=True)
        return out
    out = plots_figure.default_out() if out is None else path_option(out, "--out")
    if out.exists() and not out.is_dir():
        raise ArgumentNotADirectoryError("--out", f"{out} exists and is not a folder")
    return out


def _read_results(path: pathlib.Path) -> dict:
    if not path.exists():
        return {"generated_by": "linmaml reproduce", "figures": {}}
    try:
        data = _io.load_json(path)  # a regular file of bounded size and depth (never a FIFO that blocks)
    except (OSError, ValueError) as error:
        raise FileContentError(path, f"cannot merge into an unreadable results file ({error}); move it away first") from None
    if not isinstance(data, dict) or not isinstance(data.get("figures"), dict):
        raise FileContentError(path, "not a results file of linmaml reproduce (no 'figures' object); move it away first")
    return data


def _timing(key) -> bool:
    """Keys that hold wall times ("seconds", "meta_seconds", "seconds_per_model", ...): never results."""
    return isinstance(key, str) and "seconds" in key


def same_numbers(a, b, rtol: float = SAME_RTOL) -> bool:
    """Whether two JSON values agree: same structure and strings, floats within ``rtol`` (relative to
    the larger magnitude) or both within ``SAME_ATOL`` of zero (the rounding noise of float64
    quantities that are zero in exact arithmetic, e.g. an off-diagonal part of 1e-16), and timing
    keys (any key naming ``seconds``) ignored at every level."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in a if not _timing(k)}
        return keys == {k for k in b if not _timing(k)} and all(same_numbers(a[k], b[k], rtol) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_numbers(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=SAME_ATOL)
    return a == b


def _unchanged(name: str, stage: pathlib.Path, out: pathlib.Path) -> bool:
    """The staged ``name.json`` has the same numbers as the one already in ``out``."""
    old = out / f"{name}.json"
    if not old.is_file() or not (out / f"{name}.png").is_file():
        return False
    try:
        return same_numbers(_io.load_json(old), _io.load_json(stage / f"{name}.json"))
    except (OSError, ValueError):
        return False


def _run_in_worker(module_name: str, stage: str, quick: bool, threads: int) -> tuple[dict, float]:
    """One figure in a worker process (forked, so the parent's already imported figure modules are
    there): ``(record, seconds)``."""
    import torch  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    torch.set_num_threads(threads)
    module = importlib.import_module(module_name)
    start = time.perf_counter()
    record = module.run(pathlib.Path(stage), quick)
    return record, time.perf_counter() - start


def _computed(figures: list[Figure], stage: pathlib.Path, quick: bool, jobs: int, threads: int | None, say):
    """Yield ``(figure, record, seconds)`` as each figure finishes: in order in this process when
    ``jobs == 1``, else ``jobs`` at a time in forked worker processes (each figure writes only its own
    ``NAME.*`` files into ``stage``, so they never collide). A failure stops the rest."""
    if jobs <= 1 or len(figures) <= 1:
        for i, figure in enumerate(figures, 1):
            say(f"[{i}/{len(figures)}] {figure.name} ({figure.module_name}{', quick' if quick else ''}) ...")
            start = time.perf_counter()
            try:
                record = figure.module.run(stage, quick)
            except BaseException:
                yield figure, None, None
                raise
            yield figure, record, time.perf_counter() - start
        return

    import torch  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    threads = threads or torch.get_num_threads()
    # fork, not spawn: the workers inherit the imported figure modules (also stand-ins a test planted),
    # and the parent has run no torch computation, so no thread pool is copied half-way.
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        pending = {}
        for figure in figures:
            pending[pool.submit(_run_in_worker, figure.module_name, str(stage), quick, threads)] = figure
        say(f"{len(figures)} figures, {jobs} at a time ({', '.join(f.name for f in figures)}{', quick' if quick else ''})")
        try:
            for done in concurrent.futures.as_completed(pending):
                figure = pending[done]
                try:
                    record, seconds = done.result()
                except BaseException:
                    yield figure, None, None
                    raise
                yield figure, record, seconds
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def reproduce(out: pathlib.Path, figures: list[Figure], *, quick: bool = False, merge: bool = False,
              progress=None, jobs: int = 1, threads: int | None = None) -> dict:
    """Run ``figures`` into ``out`` transactionally (``jobs`` at a time, each in its own process when
    ``jobs > 1``); returns the results written to ``out/results.json``."""
    say = progress or (lambda message: None)
    results_path = out / RESULTS
    results = _read_results(results_path) if merge else {"generated_by": "linmaml reproduce", "figures": {}}
    previous = _read_results(results_path) if results_path.exists() and not merge else results
    out.mkdir(parents=True, exist_ok=True)
    stage = pathlib.Path(tempfile.mkdtemp(prefix=".reproduce-", dir=out))
    began = time.perf_counter()
    try:
        entries, kept = {}, set()
        for figure, record, seconds in _computed(figures, stage, quick, jobs, threads, say):
            if record is None:
                say(f"reproduce: {figure.name} failed; nothing was written to {out}")
                continue  # the generator re-raises the figure's error
            _check_record(figure, record, stage)
            entry = dict(record)
            entry["seconds"] = round(seconds, 3)
            entry["module"] = figure.module_name
            entry["files"] = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name.startswith(figure.name + "."))
            old_entry = previous["figures"].get(figure.name)
            if _unchanged(figure.name, stage, out) and old_entry is not None and same_numbers(old_entry, entry):
                kept.add(figure.name)
                entry = old_entry
                for path in stage.glob(f"{figure.name}.*"):
                    path.unlink()
            entries[figure.name] = entry
            say(f"      {figure.name} done in {seconds:.1f} s{' (unchanged: previous files kept)' if figure.name in kept else ''}")
        # Every figure succeeded: publish. Each move is atomic; results.json goes last, so it
        # never names files that are not there yet.
        for path in sorted(stage.iterdir()):
            if path.is_file():
                os.replace(path, out / path.name)
        results["figures"].update(dict(sorted(entries.items())))
        results["figures"] = dict(sorted(results["figures"].items()))
        if not (results_path.exists() and _read_results(results_path) == results):
            atomic_write_json(results_path, results)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"wrote {len(figures) - len(kept)} figure(s) ({len(kept)} unchanged) and {results_path} "
        f"in {time.perf_counter() - began:.1f} s")
    return results


def _check_record(figure: Figure, record, stage: pathlib.Path) -> None:
    if not isinstance(record, dict) or record.get("figure") != figure.name or not {"settings", "numbers"} <= set(record):
        raise ValueError(f"{figure.module_name}: run() must return {{'figure': {figure.name!r}, 'settings': ..., "
                         f"'numbers': ...}}")
    missing = [f"{figure.name}{ext}" for ext in (".png", ".json") if not (stage / f"{figure.name}{ext}").is_file()]
    if missing:
        raise ValueError(f"{figure.module_name}: run() did not write {', '.join(missing)}")


def run(args) -> int:
    figures = discover(FIGURE_PACKAGE)
    if args.list:
        width = max((len(f.name) for f in figures), default=0)  # the longest name sets the column
        for f in figures:
            print(f"{f.name:<{width}}  {f.module_name}")
        return 0
    chosen = select(figures, args.only)
    require("matplotlib", "drawing figures")  # before minutes of computing, not at the first drawing

    threads = threads_for(None if args.threads is None else _validate.integer(args.threads, "--threads", minimum=1))
    out = _output_folder(args.out, args.quick)
    import torch  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    torch.set_num_threads(threads)  # one policy for every command (linmaml.benchmarks.run_settings)
    jobs = (DEFAULT_JOBS if args.jobs is None
            else _validate.integer(args.jobs, "--jobs", minimum=1, maximum=64))
    reproduce(out, chosen, quick=args.quick, merge=bool(args.only), jobs=jobs, threads=threads,
              progress=lambda message: print(message, file=sys.stderr, flush=True))
    return 0
