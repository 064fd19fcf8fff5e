"""One policy for the CPU threads and the data root of every command that works on a run.

``linmaml train`` records, in the run's ``config.json``, the data root it read (absolute; None when
the caller supplied the splits) and the torch threads it ran with. Later commands on that run
(``evaluate``, ``analyze``, ``train --resume``) reuse them unless told otherwise:

* threads: ``--threads N`` if given, else the run's recorded count, else :data:`DEFAULT_THREADS` (1);
* data root: ``--data-root DIR`` if given, else the run's recorded root if that folder still exists,
  else the library's default (``$LINMAML_DATA``, then the per-user cache).

Commands that work on no run (``bench``, ``reproduce``) use :data:`DEFAULT_THREADS` unless told
``--threads``. One thread is the default everywhere: on a busy 2-core machine several threads ran
17-20x slower than one (``linmaml/cli/train.py`` says where that was measured).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from linmaml.benchmarks.run_files import CONFIG, run_folder_of
from linmaml.benchmarks.settings import THREADS_MAX

#: The thread count of every command unless told otherwise or recorded by the run.
DEFAULT_THREADS = 1

#: config.json is a few kilobytes; anything far larger is not one (and is not read whole).
_CONFIG_LIMIT = 1 << 20


def config_path(run_or_checkpoint) -> Path:
    """The ``config.json`` of the run a path names: a run folder, a checkpoint inside one, or a
    snapshot in its ``snapshots/`` (:func:`~linmaml.benchmarks.run_files.run_folder_of`)."""
    return run_folder_of(run_or_checkpoint) / CONFIG


def recorded(run_or_checkpoint) -> dict:
    """``{"data_root": str | None, "threads": int | None}`` recorded in the run's ``config.json``;
    None for what is not recorded (an older run, a checkpoint outside its folder) or not readable.
    Only a regular file of at most 1 MiB is read (never a FIFO or a device)."""
    empty = {"data_root": None, "threads": None}
    try:
        fd = os.open(config_path(run_or_checkpoint), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except (OSError, ValueError):
        return empty
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _CONFIG_LIMIT:
            return empty
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = json.loads(file.read(_CONFIG_LIMIT + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return empty
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return empty
    root, threads = data.get("data_root"), data.get("threads")
    return {"data_root": root if isinstance(root, str) and root else None,
            # a recorded count beyond what --threads accepts (a crafted file) is not reused
            "threads": threads if isinstance(threads, int) and not isinstance(threads, bool)
            and 1 <= threads <= THREADS_MAX else None}


def threads_for(given: int | None, run=None) -> int:
    """The thread count of a command: ``given``, else the run's recorded one, else :data:`DEFAULT_THREADS`."""
    if given is not None:
        return given
    if run is not None:
        return recorded(run)["threads"] or DEFAULT_THREADS
    return DEFAULT_THREADS


def data_root_for(given, run=None):
    """The data root of a command on ``run``: ``given``, else the run's recorded root if it is still a
    folder, else None (the library's default: ``$LINMAML_DATA``, then the per-user cache)."""
    if given is not None or run is None:
        return given
    root = recorded(run)["data_root"]
    return Path(root) if root is not None and Path(root).is_dir() else None
