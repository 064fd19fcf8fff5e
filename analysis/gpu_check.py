"""Thin wrapper: the GPU check lives in :mod:`linmaml.bench.gpu_check` (so an installed wheel runs it too).

    python analysis/gpu_check.py --out gpu_check.json [--data-root DIR] [--iterations 200] [--bench-reps 5] [--no-bench]

Besides ``--data-root`` and ``$LINMAML_DATA``, the Omniglot files are looked for in ``data/`` and
``../shared/data`` of this source tree.
"""
import pathlib
import sys

from linmaml.bench.gpu_check import main

REPO = pathlib.Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    sys.exit(main(data_roots=(REPO / "data", REPO.parent / "shared" / "data")))
