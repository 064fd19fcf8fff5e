"""Checkpoints that are never half-written, and a lock so that one run owns its output folder.

File format: one ASCII header line, then the ``torch.save`` bytes of the payload::

    LINMAML-CHECKPOINT 1 sha256=<64 hex> bytes=<n>\\n<n bytes>

The header's digest covers the payload bytes, so a truncated, altered or bit-flipped file is
detected on load (:class:`CorruptCheckpoint`, naming the file and the expected checksum). Every file
is written through :mod:`linmaml._io` (temporary file, flush, fsync, rename), so a reader sees an
old complete file or a new complete file. Before ``last.pt`` is replaced, the previous one is
kept as ``last.prev.pt``; :func:`load_latest` falls back to it (and reports which file was bad) when
``last.pt`` is missing or corrupt — e.g. after ``kill -9`` between the two renames.

The run lock (:class:`RunLock`) is an ``fcntl.flock`` on ``<out>/run.lock``, which the kernel
releases when the process dies, so a lock left by a killed run (a dead pid) is stale by
construction and simply taken over. The file records pid and host for the refusal message. The lock
is opened without following symlinks (:func:`linmaml._io.open_nofollow`): a ``run.lock`` planted as a
link to another file is refused, and that file is left untouched.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
from pathlib import Path
from typing import Callable

import torch

from linmaml import _io

MAGIC = b"LINMAML-CHECKPOINT"
VERSION = 1
LAST = "last.pt"
LAST_PREV = "last.prev.pt"
BEST = "best.pt"
LOCK = "run.lock"


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated, altered or not a checkpoint at all (names the file)."""


def encode(payload: dict) -> bytes:
    """The bytes of a checkpoint file holding ``payload`` (any ``torch.save``-able object)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = b"%s %d sha256=%s bytes=%d\n" % (MAGIC, VERSION, hashlib.sha256(body).hexdigest().encode(), len(body))
    return header + body


def decode(data: bytes, name: str = "checkpoint") -> dict:
    """Verify and unpack the bytes written by :func:`encode`; ``name`` is used in error messages."""
    newline = data.find(b"\n", 0, 256)
    fields = data[:newline].split(b" ") if newline > 0 else []
    if len(fields) != 4 or fields[0] != MAGIC or not fields[2].startswith(b"sha256=") \
            or not fields[3].startswith(b"bytes="):
        raise CorruptCheckpoint(f"checkpoint: {name} is not a linmaml checkpoint (no valid header)")
    if fields[1] != str(VERSION).encode():
        raise CorruptCheckpoint(f"checkpoint: {name} has format version {fields[1].decode(errors='replace')},"
                                f" this linmaml reads version {VERSION}")
    expected = fields[2][len(b"sha256="):].decode(errors="replace")
    body = data[newline + 1:]
    try:
        size = int(fields[3][len(b"bytes="):])
    except ValueError:
        raise CorruptCheckpoint(f"checkpoint: {name} has a damaged header") from None
    if len(body) != size:
        raise CorruptCheckpoint(f"checkpoint: {name} is truncated or padded ({len(body)} bytes of payload,"
                                f" expected {size}; expected sha256 {expected})")
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise CorruptCheckpoint(f"checkpoint: {name} is corrupt (sha256 {actual}, expected {expected})")
    # weights_only: a checkpoint is data (tensors, numbers, strings, dicts), never code to run.
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not our data"
        raise CorruptCheckpoint(f"checkpoint: {name} could not be unpacked"
                                f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


def save(path, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically, with its checksum in the header."""
    return _io.atomic_write_bytes(path, encode(payload))


def load(path) -> dict:
    """Read and verify a checkpoint file; raises :class:`CorruptCheckpoint` or ``FileNotFoundError``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint: {path} is a folder, expected a checkpoint file")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    return decode(path.read_bytes(), str(path))


def save_last(out_dir, payload: dict) -> Path:
    """Write ``<out>/last.pt``, keeping the previous one as ``last.prev.pt``.

    Order matters for ``kill -9`` at any moment: the new file is complete (fsynced) under a
    temporary name before anything is renamed, then ``last.pt`` becomes ``last.prev.pt`` and the new
    file becomes ``last.pt``. Between the two renames only ``last.prev.pt`` exists, which
    :func:`load_latest` accepts.
    """
    out_dir = Path(out_dir)
    target = out_dir / LAST
    data = encode(payload)
    with _io.atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
        if target.exists():
            os.replace(target, out_dir / LAST_PREV)
    return target


def load_latest(out_dir, report: Callable[[str], None] | None = None) -> dict | None:
    """The newest valid ``last.pt`` / ``last.prev.pt`` in ``out_dir`` (by ``payload['iteration']``).

    Corrupt files are reported through ``report`` (one line each, naming the file) and skipped;
    returns None when neither file exists. Raises :class:`CorruptCheckpoint` when files exist but
    none is valid.
    """
    out_dir = Path(out_dir)
    found, errors = [], []
    for name in (LAST, LAST_PREV):
        path = out_dir / name
        if not path.exists():
            continue
        try:
            found.append((load(path), path))
        except CorruptCheckpoint as error:
            errors.append(str(error))
    if found:
        payload, path = max(found, key=lambda item: int(item[0].get("iteration", -1)))
        if report is not None:
            for error in errors:
                report(f"{error}; using {path.name} (iteration {payload.get('iteration')}) instead")
        return payload
    if errors:
        raise CorruptCheckpoint(f"{errors[0]} (and no older valid checkpoint in {out_dir})")
    return None


class RunLock:
    """Exclusive ownership of an output folder by one process (``<out>/run.lock``).

    ``acquire(overwrite=False)`` refuses with ``FileExistsError`` (one line: folder, pid, host) when
    a live process holds the lock; with ``overwrite=True`` it breaks that lock (the other run notices
    at its next checkpoint through :meth:`still_owned` and stops). A lock whose process has died is
    taken over silently: the kernel has already released its ``flock``.
    """

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK
        self._handle = None

    def acquire(self, overwrite: bool = False) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            # never through a symlink planted as run.lock, never into a FIFO or device (OSError naming it)
            handle = _io.open_nofollow(self.path, "r+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                handle.close()
                if not overwrite:
                    raise FileExistsError(
                        f"out: {self.path.parent} is in use by another run ({holder}; lock file {self.path});"
                        f" use --overwrite to take it over") from None
                # Break the lock: a new inode under the same name, which the old holder can detect.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            # The file may have been unlinked (released or broken) between open and flock: then the
            # lock we hold is on an orphan inode and protects nothing; start again.
            self._handle = handle
            if self.still_owned():
                break
            self._handle = None
            handle.close()
        else:
            raise FileExistsError(f"out: could not lock {self.path} (it keeps changing under us)")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        handle.flush()
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info.get('pid')} on {info.get('host')}"
        except (OSError, ValueError):
            return "unknown process"

    def still_owned(self) -> bool:
        """False once another run has taken the folder over with ``--overwrite``."""
        if self._handle is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._handle is None:
            return
        owned = self.still_owned()
        handle, self._handle = self._handle, None
        if owned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        handle.close()  # closing releases the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
