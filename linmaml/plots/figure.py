"""What every figure module of :mod:`linmaml.analysis` shares: atomic saving, the ``run`` contract, ``main``.

A figure module defines ``NAME``, ``compute(quick) -> dict`` and ``draw(result, path)``, and takes
its ``run`` and ``main`` from the runner in one line:

    run, main = figure_module(NAME, __doc__, compute, draw, quick_help="…", summary=None)

``run(out_dir, quick)`` writes ``<out_dir>/<NAME>.png`` and ``<out_dir>/<NAME>.json`` (the result
without its private ``_``-prefixed keys, plus the seconds it took) and returns that JSON's dict,
which is what ``linmaml reproduce`` collects into ``figures/results.json``; ``main(argv)`` is the
``python -m linmaml.analysis.fig_<name>`` command line (``--out``, ``--quick``), printing the
``summary(record)`` lines after the file names.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Callable, Mapping, Sequence

from linmaml._io import atomic_path, atomic_write_json

#: Where quick (smoke-test) outputs go unless ``--out`` says otherwise: never the committed figures/.
QUICK_OUT = "figures-quick"


def source_checkout() -> pathlib.Path | None:
    """The root of the source checkout linmaml runs from (an editable install: the folder above the
    package with ``pyproject.toml`` and ``figures/``), else None (an installed wheel, whose package
    folder sits in site-packages with no checkout around it)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "figures").is_dir():
        return root
    return None


def default_out(quick: bool = False) -> pathlib.Path:
    """Where figures go by default: ``figures/`` of the source checkout linmaml runs from (an
    editable install), else ``./figures`` (an installed wheel has no checkout to write into).
    ``quick``: ``./figures-quick`` of the current folder, so that smoke-test numbers never replace
    the committed figures (only an explicit ``--out figures`` writes a quick run there)."""
    if quick:
        return pathlib.Path.cwd() / QUICK_OUT
    root = source_checkout()
    return (root if root is not None else pathlib.Path.cwd()) / "figures"


def default_runs(name: str) -> pathlib.Path:
    """Where an analysis trains its runs by default: ``runs/<name>`` of the source checkout, else of
    the current folder (never inside site-packages)."""
    root = source_checkout()
    return (root if root is not None else pathlib.Path.cwd()) / "runs" / name


#: PNG metadata: no "Software" line with matplotlib's version, so the same picture gives the same
#: bytes on any installation (PNG output carries no timestamp).
PNG_METADATA = {"Software": None}


def save_figure(fig, path, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically (the format follows the suffix) and close it; PNGs are
    byte-reproducible (no version or time stamp)."""
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    path = pathlib.Path(path)
    try:
        with atomic_path(path) as tmp:
            metadata = PNG_METADATA if path.suffix.lower() == ".png" else None
            fig.savefig(tmp, dpi=dpi, metadata=metadata)
    finally:
        plt.close(fig)


def run_figure(name: str, compute: Callable[[bool], dict], draw: Callable[[dict, pathlib.Path], None],
               out_dir, quick: bool = False) -> dict:
    out_dir = pathlib.Path(out_dir)
    began = time.perf_counter()
    result = compute(quick)
    draw(result, out_dir / f"{name}.png")
    record = {key: value for key, value in result.items() if not key.startswith("_")}
    record["seconds"] = round(time.perf_counter() - began, 3)
    atomic_write_json(out_dir / f"{name}.json", record)
    return record


def figure_main(name: str, doc: str, run: Callable, argv=None, quick_help: str = "a fast, small version",
                flags: Mapping[str, tuple[str, Callable[[], None]]] | None = None) -> dict:
    """The command line of a figure module: ``--out DIR`` and ``--quick``; returns the record.
    ``flags``: a figure's own switches, ``{"--name": (help, action)}``; each one given runs its
    ``action()`` (in the order declared) before the figure is computed."""
    parser = argparse.ArgumentParser(description=(doc or name).strip().splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: figures/ of the source checkout, else ./figures; with "
                             "--quick ./figures-quick)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    for flag, (text, _) in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    args = parser.parse_args(argv)
    for flag, (_, action) in (flags or {}).items():
        if getattr(args, flag.lstrip("-").replace("-", "_")):
            action()
    if args.out is None:
        args.out = default_out(args.quick)
        if args.quick:
            print(f"--quick without --out: writing to {args.out} (smoke-test numbers; --out figures to replace "
                  f"the committed figures)", file=sys.stderr)
    record = run(args.out, quick=args.quick)
    print(f"wrote {args.out / (name + '.png')} and {name}.json in {record['seconds']} s")
    return record


def _current(function: Callable) -> Callable:
    """The function of this name in its module when called (as a plain module-level call would find
    it), so that swapping ``module.draw`` (a test, a user's variant) takes effect; the function
    itself when its module is not imported (code run by ``exec``)."""
    return getattr(sys.modules.get(function.__module__), function.__name__, function)


def criteria_summary(record: dict) -> list[str]:
    """A figure's ``numbers["criteria"]`` (``{key: {value, ci95, required, met}}``), one line each: the
    ``summary`` of the figures whose claims are pass/fail criteria."""
    return [f"{key}: {value['value']:.3f} ± {value['ci95']:.3f} (required {value['required']}: "
            f"{'met' if value['met'] else 'NOT met'})" for key, value in record["numbers"]["criteria"].items()]


def figure_module(name: str, doc: str, compute: Callable[[bool], dict], draw: Callable[[dict, pathlib.Path], None], *,
                  quick_help: str, summary: Callable[[dict], Sequence[str]] | None = None,
                  flags: Mapping[str, tuple[str, Callable[[], None]]] | None = None):
    """``(run, main)`` of a figure module (module docstring): ``run(out_dir, quick=False) -> dict`` by
    :func:`run_figure`, and ``main(argv=None)`` by :func:`figure_main` (with the figure's own
    ``flags``, if any), then each line of ``summary(record)`` (if given) printed indented by two spaces."""

    def run(out_dir, quick: bool = False) -> dict:
        return run_figure(name, _current(compute), _current(draw), out_dir, quick)

    def main(argv=None) -> None:
        record = figure_main(name, doc, run, argv, quick_help=quick_help, flags=flags)
        for line in summary(record) if summary is not None else ():
            print("  " + line)

    run.__doc__ = (f"Compute, draw ``<out_dir>/{name}.png`` and write ``<out_dir>/{name}.json``; return the "
                   f"JSON's dict.")
    main.__doc__ = f"The command line of the {name} figure (``--out DIR``, ``--quick``: {quick_help})."
    return run, main
