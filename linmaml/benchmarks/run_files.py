"""The names of the files in a run folder of ``linmaml train``, written once (no torch import, so the
command line can use them at start-up).

A run folder holds ``config.json`` (the settings, the image shape and where the data was read),
``metrics.jsonl`` (one JSON line per iteration), ``last.pt`` and ``last.prev.pt`` (the newest
checkpoint and the one before it), ``best.pt`` (the weights of the best validation), ``run.lock``
while a run owns it, and ``snapshots/iter-<t>.pt`` with ``--snapshot-every``.
:mod:`~linmaml.benchmarks.checkpoint`, :mod:`~linmaml.benchmarks.run_folder`,
:mod:`~linmaml.benchmarks.run_settings` and :mod:`~linmaml.benchmarks.run` read these names from here.
"""
from __future__ import annotations

from pathlib import Path

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LAST = "last.pt"
LAST_PREV = "last.prev.pt"
BEST = "best.pt"
LOCK = "run.lock"
#: Folder of the weights kept every ``snapshot_every`` iterations (``linmaml train --snapshot-every``).
SNAPSHOTS = "snapshots"


def snapshot_path(out_dir, iteration: int) -> Path:
    """``<out>/snapshots/iter-<iteration, six digits>.pt``: the weights after ``iteration`` outer steps."""
    return Path(out_dir) / SNAPSHOTS / f"iter-{int(iteration):06d}.pt"


def run_folder_of(path) -> Path:
    """The run folder a path names: the folder itself, the folder a checkpoint file lies in, or for a
    snapshot (``<run>/snapshots/iter-<t>.pt``) the run folder above ``snapshots/``."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path
    folder = path.parent
    return folder.parent if folder.name == SNAPSHOTS else folder
