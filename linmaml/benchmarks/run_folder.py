"""The output folder of a training run: what it holds, how a run takes it, and how it is tidied.

A run folder holds ``config.json``, ``metrics.jsonl`` (one JSON line per iteration), ``last.pt``,
``last.prev.pt``, ``best.pt`` and, while a run owns it, ``run.lock``
(:class:`linmaml.benchmarks.checkpoint.RunLock`). :func:`open_folder` creates and locks it and
returns the checkpoint to resume; :func:`remove_if_unused` removes a folder that a failed run
created and left empty, so bad input leaves no trace.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from linmaml import _io
from linmaml.benchmarks import checkpoint

METRICS = "metrics.jsonl"
CONFIG = "config.json"
#: Files a run writes into its folder; ``overwrite`` removes exactly these.
RUN_FILES = (METRICS, CONFIG, checkpoint.LAST, checkpoint.LAST_PREV, checkpoint.BEST)


def open_folder(out_dir: Path, *, resume: bool, overwrite: bool, report) -> tuple[checkpoint.RunLock, dict | None]:
    """Create ``out_dir`` if needed, take its lock, and return ``(lock, checkpoint to resume or None)``.

    Raises ``PermissionError`` for a folder that cannot be written and ``FileExistsError`` for one
    that holds another run (without ``resume``/``overwrite``) or is locked by a live run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"out: {out_dir} is not writable")
    lock = checkpoint.RunLock(out_dir).acquire(overwrite=overwrite)
    try:
        return lock, _prepare(out_dir, resume, overwrite, report)
    except BaseException:
        lock.release()
        raise


def _prepare(out_dir: Path, resume: bool, overwrite: bool, report) -> dict | None:
    # Temporary files of a killed writer (linmaml._io names them ".<target>.<random>"): we hold the
    # lock, so no live process is writing them.
    for name in RUN_FILES:
        for stale in out_dir.glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
    if resume:
        payload = checkpoint.load_latest(out_dir, report=report)
        if payload is None:
            report(f"resume: no checkpoint in {out_dir} yet; starting from iteration 0")
        return payload
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"out: {out_dir} already holds a run ({', '.join(existing)}); use --resume to continue"
                              f" it or --overwrite to start afresh")
    return None


def clear(out_dir: Path) -> None:
    """Remove the files of an old run (``--overwrite``)."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def trim_metrics(path: Path, iteration: int) -> None:
    """Keep the metrics of iterations ``<= iteration`` (a resumed run re-runs the later ones) and
    drop a torn last line left by a kill; rewritten atomically. A symlink at ``path`` is refused
    (``OSError`` naming it), not read through."""
    if not os.path.lexists(path):
        return
    with _io.open_nofollow(path, "r+") as file:
        text = file.buffer.read().decode("utf-8", errors="replace")
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and int(record.get("iteration", 0)) <= iteration:
            kept.append(line)
    _io.atomic_write_text(path, "".join(line + "\n" for line in kept))


def remove_if_unused(out_dir: Path) -> None:
    """Remove a run folder that holds nothing but (at most) its lock file."""
    try:
        entries = list(out_dir.iterdir())
        if all(entry.name == checkpoint.LOCK for entry in entries):
            for entry in entries:
                entry.unlink()
            out_dir.rmdir()
    except OSError:
        pass  # best effort: never mask the error that made the run fail


class MetricsLog:
    """``metrics.jsonl`` opened for appending: one JSON line per record, flushed at once;
    :meth:`sync` forces it to disk (before a checkpoint names the iteration it reached).

    Opened with :func:`linmaml._io.open_nofollow`: a symlink planted at ``metrics.jsonl`` is refused
    (``OSError`` naming the path), never written through. An ``OSError`` from writing or syncing
    ("File too large" under ``ulimit -f``, "No space left on device") is re-raised with the path
    attached when it has none, so the one-line message says which file failed.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = _io.open_nofollow(self.path, "a")

    def _named(self, error: OSError) -> OSError:
        if error.filename is not None or error.errno is None:
            return error
        return type(error)(error.errno, error.strerror or str(error), str(self.path))

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as error:
            raise self._named(error) from error

    def sync(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as error:
            raise self._named(error) from error

    def close(self) -> None:
        self.file.close()
