"""Atomic file output: a reader sees the old file or the new one, never half of either.

Everything the toolkit writes (figures, JSON results, checkpoints, caches) goes through these
helpers: the bytes go to a temporary file in the same folder, are flushed and fsynced, and the file
is renamed over the target (``os.replace`` is atomic on POSIX and Windows).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it vanishes.

    For writers that want a file name rather than bytes (``matplotlib.savefig``, ``torch.save``).
    ``suffix`` defaults to the target's own, so format detection by extension keeps working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the mode an ordinary open() would have.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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
