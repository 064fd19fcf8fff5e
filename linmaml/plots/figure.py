"""What every figure script in ``analysis/`` shares: atomic saving, the ``run`` contract, ``main``.

A figure script defines ``NAME``, ``compute(quick) -> dict`` and ``draw(result, path)``; then

    def run(out_dir, quick=False):
        return run_figure(NAME, compute, draw, out_dir, quick)

writes ``<out_dir>/<NAME>.png`` and ``<out_dir>/<NAME>.json`` (the result without its private
``_``-prefixed keys, plus the seconds it took) and returns that JSON's dict, which is what
``linmaml reproduce`` collects into ``figures/results.json``.
"""
from __future__ import annotations

import argparse
import pathlib
import time
from typing import Callable

from linmaml._io import atomic_path, atomic_write_json

#: Where figure scripts write by default: the repository's figures/ folder.
DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[2] / "figures"


def save_figure(fig, path, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically (the format follows the suffix) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
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


def figure_main(name: str, doc: str, run: Callable, argv=None, quick_help: str = "a fast, small version") -> dict:
    """The command line of a figure script: ``--out DIR`` and ``--quick``; returns the record."""
    parser = argparse.ArgumentParser(description=(doc or name).strip().splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output folder (default: figures/)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    record = run(args.out, quick=args.quick)
    print(f"wrote {args.out / (name + '.png')} and {name}.json in {record['seconds']} s")
    return record
