"""Atomic file output: a reader sees the old file or the new one, never half of either.

Everything the toolkit writes (figures, JSON results, checkpoints, caches) goes through these
helpers: the bytes go to a temporary file in the same folder, are flushed and fsynced, and the file
is renamed over the target (``os.replace`` is atomic on POSIX and Windows).

Symbolic links planted in an output folder are never written through: the temporary file is created
with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (``tempfile.mkstemp``) and checked to be the same regular file
when it is renamed, and the rename replaces a symlink named like the target rather than the file it
points to. Files that are appended to or locked in place (``metrics.jsonl``, ``run.lock``) are
opened with :func:`open_nofollow`, which refuses symlinks and anything but a regular file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it vanishes.

    For writers that want a file name rather than bytes (``matplotlib.savefig``, ``torch.save``).
    ``suffix`` defaults to the target's own, so format detection by extension keeps working. If
    the temporary name no longer holds the file created here when the writer is done (replaced by a
    symlink or another file meanwhile), nothing is renamed and ``OSError`` is raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp opens with O_CREAT | O_EXCL | O_NOFOLLOW: never an existing file, never through a link.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                                   dir=path.parent)
    except OSError as error:  # name the file the user asked for, not the temporary's random name
        raise type(error)(error.errno, error.strerror, str(path)) from error
    try:
        # mkstemp makes the file private (0600); give it the mode an ordinary open() would have.
        os.fchmod(fd, 0o666 & ~_umask())
        yield Path(tmp)
        _same_regular_file(fd, tmp)
        os.fsync(fd)
        os.replace(tmp, path)  # renames over a symlink named `path`, never writes through it
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.filename is None and error.errno is not None:
            # a write through a file object names no file (disk full, file too large): name the target
            raise type(error)(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _same_regular_file(fd: int, name) -> None:
    """Raise OSError unless ``name`` (not followed) is still the regular file open as ``fd``."""
    mine, there = os.fstat(fd), os.lstat(name)
    if not stat.S_ISREG(there.st_mode) or (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
        raise OSError(errno.EEXIST, "the temporary file was replaced while it was written; nothing was renamed",
                      str(name))


def open_nofollow(path, mode: str = "a"):
    """Open ``path`` as a text file for appending (``"a"``) or reading and writing (``"r+"``, created if
    missing), without following a symlink and refusing anything but a regular file.

    ``OSError`` naming the path when ``path`` is a symlink (``ELOOP``), a folder, a FIFO or a device.
    Used for the run folder's files that are written in place: ``metrics.jsonl``, ``run.lock``.
    """
    flags = {"a": os.O_RDWR | os.O_APPEND, "r+": os.O_RDWR}.get(mode)
    if flags is None:
        raise ValueError(f"mode: expected 'a' or 'r+', got {mode!r}")
    # O_RDWR and O_NONBLOCK: a FIFO opens at once (write-only would wait for a reader, or fail with
    # ENXIO under O_NONBLOCK), so that the fstat below can name the problem.
    flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link; refusing to follow it", str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "is not a regular file; refusing to write into it", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent: int = 2) -> Path:
    # allow_nan=False: a NaN in results is a bug to surface, not a token to hide in the JSON.
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False, sort_keys=False) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
