"""The output folder of a training run: what it holds, how a run takes it, and how it is tidied.

A run folder holds ``config.json``, ``metrics.jsonl`` (one JSON line per iteration), ``last.pt``,
``last.prev.pt``, ``best.pt`` and, while a run owns it, ``run.lock``
(:class:`linmaml.benchmarks.checkpoint.RunLock`). :func:`open_folder` creates and locks it and
returns the checkpoint to resume; :func:`remove_if_unused` removes a folder that a failed run
created and left empty, so bad input leaves no trace.

``--resume`` of a folder without a checkpoint is refused (it never starts over in place of a run),
and a checkpoint to resume is checked whole (:func:`check_resume_payload`) before any file of the
folder is touched: a crafted ``last.pt`` with a valid digest cannot empty ``metrics.jsonl``.
"""
from __future__ import annotations

import errno
import json
import math
import numbers
import os
from pathlib import Path

import torch

from linmaml import _io
from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.config import TrainConfig
from linmaml.benchmarks.run_files import CONFIG, METRICS
from linmaml.errors import ArgumentError, ArgumentExistsError

#: Files a run writes into its folder; ``overwrite`` removes exactly these.
RUN_FILES = (METRICS, CONFIG, checkpoint.LAST, checkpoint.LAST_PREV, checkpoint.BEST)


def open_folder(out_dir: Path, *, resume: bool, overwrite: bool, report) \
        -> tuple[checkpoint.RunLock, dict | None, Path | None]:
    """Create ``out_dir`` if needed, take its lock, and return ``(lock, checkpoint to resume or None,
    the file it came from or None)``.

    Raises ``PermissionError`` for a folder that cannot be written, ``FileExistsError`` for one
    that holds another run (without ``resume``/``overwrite``) or is locked by a live run, and
    ``ArgumentError`` naming ``resume`` when ``resume`` finds no checkpoint to continue.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"out: {out_dir} is not writable")
    lock = checkpoint.RunLock(out_dir).acquire(overwrite=overwrite)
    try:
        return (lock, *_prepare(out_dir, resume, overwrite, report))
    except BaseException:
        lock.release()
        raise


def _prepare(out_dir: Path, resume: bool, overwrite: bool, report) -> tuple[dict | None, Path | None]:
    # Temporary files of a killed writer (linmaml._io names them ".<target>.<random>"): we hold the
    # lock, so no live process is writing them.
    for name in RUN_FILES:
        for stale in out_dir.glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
    if resume:
        found = checkpoint.latest(out_dir, report=report)
        if found is None:
            raise ArgumentError("resume", f"{out_dir} holds no checkpoint ({checkpoint.LAST} or {checkpoint.LAST_PREV}) "
                                          f"to continue; nothing was changed (leave out --resume to start a run there, "
                                          f"with --overwrite if it holds an old one)")
        check_resume_payload(*found)
        return found
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing == [CONFIG] and not overwrite and not _is_run_config(out_dir / CONFIG):
        raise ArgumentExistsError("out", f"{out_dir} holds a {CONFIG} that linmaml train did not write; "
                                         f"refusing to replace it (choose another --out, or --overwrite to replace it)")
    if existing and not overwrite:
        raise ArgumentExistsError("out", f"{out_dir} already holds a run ({', '.join(existing)}); use --resume "
                                         f"to continue it or --overwrite to start afresh")
    return None, None


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is the config.json of a linmaml run (``{"config": {...}, "image_shape": ...}``)."""
    try:
        data = _io.load_json(path, max_bytes=1 << 20)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("config"), dict) and "image_shape" in data


def _whole(value, minimum: int = 0) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= minimum


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, str)) or (isinstance(value, numbers.Real) and
                                                                 math.isfinite(float(value)))


def check_resume_payload(payload: dict, path: Path) -> None:
    """Raise :class:`~linmaml.benchmarks.checkpoint.CorruptCheckpoint` naming ``path`` unless
    ``payload`` is a whole ``last.pt`` of ``linmaml train``: a non-negative iteration, the run's
    settings, image shape, weights and Adam state, and counters consistent with the iteration.
    Whether the weights fit the settings is checked when they are loaded (``Trainer``), still
    before any file is touched."""
    def bad(what: str):
        raise checkpoint.CorruptCheckpoint(f"checkpoint: {path} cannot be resumed: {what}")

    if not isinstance(payload, dict):
        bad(f"it holds a {type(payload).__name__}, not a training checkpoint")
    missing = [k for k in ("iteration", "config", "image_shape", "learner", "optimizer", "skipped", "elapsed", "best")
               if k not in payload]
    if missing:
        bad(f"it lacks {', '.join(missing)}")
    iteration = payload["iteration"]
    if not _whole(iteration):
        bad(f"its iteration is {iteration!r}, expected a whole number >= 0")
    if not isinstance(payload["config"], dict):
        bad("its settings are not a dict")
    shape = payload["image_shape"]
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 8 or not all(_whole(v, 1) for v in shape):
        bad(f"its image shape is {shape!r}, expected positive whole numbers ((C, H, W), or (D,) for feature vectors)")
    learner = payload["learner"]
    if not isinstance(learner, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in learner.items()):
        bad("its weights are not a dict of tensors")
    optimizer = payload["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list):
        bad("its optimizer state is not Adam's")
    if not _whole(payload["skipped"]) or payload["skipped"] > iteration:
        bad(f"it counts {payload['skipped']!r} skipped steps in {iteration} iterations")
    elapsed = payload["elapsed"]
    if isinstance(elapsed, bool) or not isinstance(elapsed, numbers.Real) or not math.isfinite(elapsed) or elapsed < 0:
        bad(f"its elapsed time is {elapsed!r}")
    best = payload["best"]
    if best is not None and not (isinstance(best, dict) and _whole(best.get("iteration"), 1)
                                 and best["iteration"] <= iteration and all(_plain(v) for v in best.values())
                                 and isinstance(best.get("val_accuracy"), numbers.Real)):
        bad(f"its best validation record is {best!r}")
    pending = payload.get("pending_validation")
    if pending is not None and not (isinstance(pending, dict) and pending.get("iteration") == iteration
                                    and all(isinstance(k, str) and _plain(v) for k, v in pending.items())):
        bad(f"its pending validation record {pending!r} is not that of iteration {iteration}")
    try:
        TrainConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        bad(f"its settings are unusable ({str(error).splitlines()[0]})")


def clear(out_dir: Path) -> None:
    """Remove the files of an old run (``--overwrite``)."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def trim_metrics(path: Path, iteration: int, guard=None) -> None:
    """Keep the metrics of iterations ``<= iteration`` (a resumed run re-runs the later ones) and
    drop a torn last line left by a kill; rewritten atomically (``guard`` as in
    :func:`linmaml._io.atomic_path`). A symlink at ``path`` is refused (``OSError`` naming it), not
    read through; a line whose ``iteration`` is not a whole number is refused with ``ValueError``
    naming the file and the line."""
    if not os.path.lexists(path):
        return
    with _io.open_nofollow(path, "r+") as file:
        size = os.fstat(file.fileno()).st_size
        if size > _io.MAX_TEXT_BYTES:
            raise OSError(errno.EFBIG, f"is {size:,} bytes, more than the {_io.MAX_TEXT_BYTES:,} a metrics log may "
                                       f"have", str(path))
        text = file.buffer.read().decode("utf-8", errors="replace")
    kept = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = _io.loads_json(line, f"{path} line {number}")
        except ValueError:
            continue  # a line torn by a kill (only the last can be) is dropped
        if not isinstance(record, dict):
            continue
        value = record.get("iteration", 0)
        if not _whole(value):
            raise ArgumentError("resume", f"{path} line {number}: 'iteration' is {value!r}, not a whole number >= 0; "
                                          f"correct or delete that line to resume")
        if value <= iteration:
            kept.append(line)
    _io.atomic_write_text(path, "".join(line + "\n" for line in kept), guard=guard)


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
