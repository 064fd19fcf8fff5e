"""Checkpoints that are never half-written, read by a plain ``torch.load``, and a lock so that one
run owns its output folder.

File format (version 2): exactly the zip archive that ``torch.save`` writes, whose zip *comment*
(the free text a zip archive may carry after its end-of-central-directory record) holds the checksum::

    <torch.save bytes, end record's comment length set to 92> linmaml-checkpoint 2 sha256=<64 hex>

So ``torch.load(path, weights_only=True)`` reads ``last.pt`` and ``best.pt`` like any PyTorch file
(zip readers accept an archive comment), and :func:`load` verifies first: the digest covers every
byte before the comment, the end record with its comment length included, so a damaged file
(truncated, padded, bit-flipped) is detected (:class:`CorruptCheckpoint`, naming the file and the
expected checksum). The digest protects against damage, not tampering: an edited file whose digest
was recomputed passes it. What such a file can cost is bounded instead (:func:`load`: a regular file
of at most :data:`MAX_BYTES`, members stored uncompressed, the pickle's nesting bounded, no tensor
larger than the file; ``weights_only`` runs no code). The digest is needed because ``torch.load`` itself does not check the archive's
CRCs: a flipped bit in a tensor's bytes loads silently as a different number. Files of version 1
(one ``LINMAML-CHECKPOINT 1 sha256=… bytes=…`` header line, then the ``torch.save`` bytes) are
still read and verified by :func:`load`; new files are always version 2.

Every file is written through :mod:`linmaml._io` (temporary file, flush, fsync, rename), so a reader
sees an old complete file or a new complete file. Before ``last.pt`` is replaced, the previous one is
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
import re
import socket
import zipfile
from pathlib import Path
from typing import Callable

import torch

from linmaml import _io
# The run folder's file names, defined once in run_files (re-exported here for the writers).
from linmaml.benchmarks.run_files import BEST, LAST, LAST_PREV, LOCK, SNAPSHOTS, snapshot_path  # noqa: F401
from linmaml.errors import ArgumentExistsError, FileContentError

MAGIC = b"LINMAML-CHECKPOINT"  # version 1's header line
VERSION = 2
#: The zip comment of a version-2 file: this prefix, then the 64 hex digits of the sha256.
RECORD_PREFIX = b"linmaml-checkpoint 2 sha256="
RECORD_SIZE = len(RECORD_PREFIX) + 64
_END_RECORD = b"PK\x05\x06"  # zip end-of-central-directory signature; 22 bytes with an empty comment


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated, altered or not a checkpoint at all (names the file)."""


def encode(payload: dict) -> bytes:
    """The bytes of a checkpoint file holding ``payload`` (any ``torch.save``-able object)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    archive = buffer.getvalue()
    end = len(archive) - 22
    if archive[end:end + 4] != _END_RECORD or archive[-2:] != b"\x00\x00":
        raise RuntimeError("torch.save wrote an archive without the expected zip end record")  # a torch change
    body = archive[:-2] + RECORD_SIZE.to_bytes(2, "little")  # the comment length, covered by the digest
    return body + RECORD_PREFIX + hashlib.sha256(body).hexdigest().encode()


#: The largest checkpoint file read (the built-in ConvNet's is about 1 MB; a user's model may be far
#: larger): a bigger file, a sparse one or a device is refused before it is read or hashed.
MAX_BYTES = 4 << 30


def _check_archive(data: bytes, name: str) -> None:
    """Refuse, before ``torch.load`` allocates anything, an archive that could cost more than its own
    size: every member must be stored uncompressed (``torch.save`` never compresses; a deflated
    member could unpack to gigabytes), the members' sizes must fit in the file, and ``data.pkl`` must
    pass :func:`linmaml._io.check_pickle` (bounded nesting: a 2,000,000-deep tuple crashes CPython)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
        declared = sum(info.file_size for info in members)
        for info in members:
            if info.compress_type != zipfile.ZIP_STORED:
                raise CorruptCheckpoint(f"checkpoint: {name} is not a checkpoint written by linmaml (its member "
                                        f"{info.filename} is compressed; torch.save stores members as they are)")
        if declared > len(data):
            raise CorruptCheckpoint(f"checkpoint: {name} declares {declared:,} bytes of members in a file of "
                                    f"{len(data):,}; refusing it")
        pickles = [info for info in members if info.filename.endswith("/data.pkl") or info.filename == "data.pkl"]
        for info in pickles:
            body = archive.read(info)
            _io.check_pickle(io.BytesIO(body), len(body), f"checkpoint: {name}")
    except CorruptCheckpoint:
        raise
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, RecursionError) as error:
        detail = _detail(error, f"checkpoint: {name}")
        raise CorruptCheckpoint(f"checkpoint: {name} could not be unpacked ({detail})") from None


def _detail(error: BaseException, where: str) -> str:
    """What ``error`` says, without the file name when it is one of _io's refusals naming ``where``."""
    return error.detail if isinstance(error, FileContentError) and error.where == where else str(error)


def _unpack(data: bytes, name: str):
    _check_archive(data, name)
    # weights_only: a checkpoint is data (tensors, numbers, strings, dicts), never code to run.
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        _io.check_sizes(payload, len(data), f"checkpoint: {name}")
        return payload
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not our data"
        detail = _detail(error, f"checkpoint: {name}")
        raise CorruptCheckpoint(f"checkpoint: {name} could not be unpacked"
                                f" ({type(error).__name__}: {detail.splitlines()[0] if detail else ''})") from None


def decode(data: bytes, name: str = "checkpoint") -> dict:
    """Verify and unpack the bytes of a checkpoint file (version 2, or version 1's header format);
    ``name`` is used in error messages."""
    if data.startswith(MAGIC + b" "):
        return _decode_v1(data, name)
    record = data[-RECORD_SIZE:]
    if len(data) > RECORD_SIZE and record.startswith(RECORD_PREFIX) \
            and not re.fullmatch(rb"[0-9a-f]{64}", record[len(RECORD_PREFIX):]):
        raise CorruptCheckpoint(f"checkpoint: {name} is corrupt (its sha256 record at the end is damaged:"
                                f" {record[len(RECORD_PREFIX):].decode(errors='replace')!r})")
    if not (len(data) > RECORD_SIZE and record.startswith(RECORD_PREFIX)):
        # Name the checksum if the record is still there, displaced by padding or cut by truncation.
        at = data.rfind(RECORD_PREFIX, max(0, len(data) - 4096))
        if at < 0:
            raise CorruptCheckpoint(f"checkpoint: {name} is not a linmaml checkpoint (no checksum record at its end)")
        expected = data[at + len(RECORD_PREFIX):at + RECORD_SIZE].decode(errors="replace")
        raise CorruptCheckpoint(f"checkpoint: {name} is truncated or padded (its checksum record is not at the end;"
                                f" expected sha256 {expected})")
    expected = record[len(RECORD_PREFIX):].decode()
    actual = hashlib.sha256(data[:-RECORD_SIZE]).hexdigest()
    if actual != expected:
        raise CorruptCheckpoint(f"checkpoint: {name} is corrupt (sha256 {actual}, expected {expected})")
    return _unpack(data, name)


def _decode_v1(data: bytes, name: str) -> dict:
    """Version 1: ``LINMAML-CHECKPOINT 1 sha256=<hex> bytes=<n>\\n`` then the ``torch.save`` bytes."""
    newline = data.find(b"\n", 0, 256)
    fields = data[:newline].split(b" ") if newline > 0 else []
    if len(fields) != 4 or not fields[2].startswith(b"sha256=") or not fields[3].startswith(b"bytes="):
        raise CorruptCheckpoint(f"checkpoint: {name} is not a linmaml checkpoint (no valid header)")
    if fields[1] != b"1":
        raise CorruptCheckpoint(f"checkpoint: {name} has format version {fields[1].decode(errors='replace')},"
                                f" this linmaml reads versions 1 and {VERSION}")
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
    return _unpack(body, name)


def save(path, payload: dict, guard=None) -> Path:
    """Write ``payload`` to ``path`` atomically, with its checksum in the zip comment. ``guard()`` is
    called right before the file takes its name (:func:`linmaml._io.atomic_path`)."""
    return _io.atomic_write_bytes(path, encode(payload), guard=guard)


def load(path) -> dict:
    """Read and verify a checkpoint file; raises :class:`CorruptCheckpoint`, ``FileNotFoundError``, or
    ``OSError`` naming the file when it is not a regular file or larger than :data:`MAX_BYTES`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint: {path} is a folder, expected a checkpoint file")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    # a regular file of at most MAX_BYTES: never a FIFO (which would block), a device or a sparse giant
    return decode(_io.read_bytes(path, MAX_BYTES), str(path))


def save_last(out_dir, payload: dict, guard=None) -> Path:
    """Write ``<out>/last.pt``, keeping the previous one as ``last.prev.pt``.

    Order matters for ``kill -9`` at any moment: the new file is complete (fsynced) under a
    temporary name before anything is renamed, then ``last.pt`` becomes ``last.prev.pt`` and the new
    file becomes ``last.pt``. Between the two renames only ``last.prev.pt`` exists, which
    :func:`load_latest` accepts. ``guard()`` is called before the first rename; what it raises
    cancels the write and leaves both files as they were.
    """
    out_dir = Path(out_dir)
    target = out_dir / LAST
    data = encode(payload)
    with _io.atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
        if guard is not None:
            guard()
        if target.exists():
            os.replace(target, out_dir / LAST_PREV)
    return target


def has_checkpoint(out_dir) -> bool:
    """Whether ``out_dir`` holds a ``last.pt`` or ``last.prev.pt`` (valid or not) to resume from."""
    return any((Path(out_dir) / name).exists() for name in (LAST, LAST_PREV))


def load_latest(out_dir, report: Callable[[str], None] | None = None) -> dict | None:
    """The newest valid ``last.pt`` / ``last.prev.pt`` in ``out_dir`` (by ``payload['iteration']``).

    Corrupt files, and files whose payload is not a dict with a non-negative integer
    ``iteration``, are reported through ``report`` (one line each, naming the file) and skipped;
    returns None when neither file exists. Raises :class:`CorruptCheckpoint` when files exist but
    none is valid.
    """
    found = latest(out_dir, report)
    return None if found is None else found[0]


def latest(out_dir, report: Callable[[str], None] | None = None) -> tuple[dict, Path] | None:
    """:func:`load_latest`, with the file the payload came from: ``(payload, path)`` or None."""
    out_dir = Path(out_dir)
    found, errors = [], []
    for name in (LAST, LAST_PREV):
        path = out_dir / name
        if not path.exists():
            continue
        try:
            payload = load(path)
            iteration = payload.get("iteration") if isinstance(payload, dict) else None
            if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
                raise CorruptCheckpoint(f"checkpoint: {path} is not a training checkpoint (its iteration is "
                                        f"{iteration!r}, expected a whole number >= 0)")
            found.append((payload, path))
        except CorruptCheckpoint as error:
            errors.append(str(error))
    if found:
        payload, path = max(found, key=lambda item: item[0]["iteration"])
        if report is not None:
            for error in errors:
                report(f"{error}; using {path.name} (iteration {payload.get('iteration')}) instead")
        return payload, path
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
        import fcntl  # lazy: POSIX-only, needed only for the lock; reading checkpoints works without it

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
                    raise ArgumentExistsError(
                        "out", f"{self.path.parent} is in use by another run ({holder}; lock file {self.path});"
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
            raise ArgumentExistsError("out", f"could not lock {self.path} (it keeps changing under us)")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        handle.flush()
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(_io.read_text(self.path, 1 << 16) or "{}")
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
