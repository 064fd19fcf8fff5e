"""Thin wrapper: the benchmark lives in :mod:`linmaml.bench.harness` (so an installed wheel runs it too).

    python analysis/bench.py [--quick] [--only CASE ...] [--out DIR] [--device cpu|cuda] [--threads N]

writes ``figures/bench.json`` of this source tree unless ``--out`` says otherwise (as ``linmaml bench``).
"""
import pathlib
import sys

from linmaml.bench.harness import main

if __name__ == "__main__":
    sys.exit(main(default_out=pathlib.Path(__file__).resolve().parents[1] / "figures"))
