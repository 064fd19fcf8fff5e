"""Dataset integrity: one exception type and checksum helpers.

Every reader verifies what it reads before a single image reaches training: file checksums where
they are known (the Omniglot ``.npz`` files and official zips, the CIFAR-100 pickles), and always
the counts (classes, images per class) and array shapes. Anything wrong raises :class:`DatasetError`
with a one-line message that names the file or folder and says what was expected, so the CLI can
print it as is (exit status 2).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from linmaml import _io

_CHUNK = 1 << 20
#: The largest data file any reader accepts (the mini-ImageNet train cache, the largest published
#: file, is about 0.8 GB): a larger file, a sparse one, or a device is refused before it is hashed.
MAX_DATA_BYTES = 4 << 30


class DatasetError(ValueError):
    """A dataset is missing, incomplete, truncated or altered. The message is one line.

    A ``ValueError`` so that code (and the CLI) treating bad input uniformly keeps working.
    """


def file_digest(path, algorithm: str = "sha256", max_bytes: int = MAX_DATA_BYTES) -> str:
    """Hex digest of a file's bytes (read in 1 MiB chunks; ``algorithm`` as in :mod:`hashlib`).
    A regular file of at most ``max_bytes`` only (:func:`linmaml._io.open_regular`, ``OSError`` else)."""
    digest = hashlib.new(algorithm)
    with _io.open_regular(path, max_bytes) as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path, expected: str, algorithm: str = "sha256", *, size: int | None = None, hint: str = "",
                max_bytes: int = MAX_DATA_BYTES) -> str:
    """Check that ``path`` exists, has ``size`` bytes (if given) and the ``algorithm`` digest
    ``expected``; return the digest.

    Raises :class:`DatasetError` naming the file and what was expected (the size, which makes a
    truncated download obvious, and the checksum). ``hint`` (e.g. how to get a fresh copy) is appended
    to the message. The size is checked before a byte is hashed: a file larger than ``max_bytes`` (a
    sparse 20 GiB file, say), a FIFO or a device is refused at once.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found{_tail(hint)}")
    try:
        actual_size = os.path.getsize(path)
        if actual_size > max_bytes:
            raise DatasetError(f"{path}: {actual_size:,} bytes, more than the {max_bytes:,} any data file may have "
                               f"(expected {algorithm} {expected}); refusing to read it{_tail(hint)}")
        if size is not None and actual_size != size:
            raise DatasetError(f"{path}: {actual_size:,} bytes, expected {size:,} with {algorithm} {expected} "
                               f"(the file is {'truncated' if actual_size < size else 'altered'}){_tail(hint)}")
        actual = file_digest(path, algorithm)
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror or error}){_tail(hint)}") from None
    if actual != expected.lower():
        raise DatasetError(f"{path}: {algorithm} {actual} does not match the expected {expected} "
                           f"({actual_size:,} bytes: the file is truncated or altered){_tail(hint)}")
    return actual


def _tail(hint: str) -> str:
    return f"; {hint}" if hint else ""
