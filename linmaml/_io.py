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
import pickletools
import stat
import tempfile
import warnings
from pathlib import Path

from linmaml.errors import ArgumentError, FileContentError


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None, guard=None):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it vanishes.

    For writers that want a file name rather than bytes (``matplotlib.savefig``, ``torch.save``).
    ``suffix`` defaults to the target's own, so format detection by extension keeps working. If
    the temporary name no longer holds the file created here when the writer is done (replaced by a
    symlink or another file meanwhile), nothing is renamed and ``OSError`` is raised. ``guard()``,
    if given, is called right before the rename; whatever it raises cancels the write (a training
    run checks there that it still owns its folder).
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
        if guard is not None:
            guard()
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
        raise ArgumentError("mode", f"expected 'a' or 'r+', got {mode!r}")
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


def atomic_write_bytes(path, data: bytes, guard=None) -> Path:
    with atomic_path(path, guard=guard) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path, text: str, guard=None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), guard=guard)


def atomic_write_json(path, obj, indent: int = 2, guard=None) -> Path:
    # allow_nan=False: a NaN in results is a bug to surface, not a token to hide in the JSON.
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False, sort_keys=False) + "\n",
                             guard=guard)


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


# --- reading: regular files only, size-checked, decoded with bounded depth and allocation ----------
#
# Every file the toolkit reads (checkpoints, configs, results, metrics, data caches, images,
# archives) goes through these helpers, so that a hostile or broken file costs at most a small
# multiple of its own size and never hangs, crashes the interpreter or prints a traceback:
#
# * it is opened without blocking and must be a regular file (a FIFO, a device, a folder, or a link
#   to one of them is refused, naming the file; a link to a regular file is read like the file);
# * its size is checked before a byte is read or hashed (a sparse 100 GiB file is refused at once);
# * JSON is parsed with a bounded nesting depth (:data:`MAX_DEPTH`), pickles are scanned opcode by
#   opcode first (:func:`check_pickle`): nesting depth bounded, and every length a pickle declares
#   must fit in the bytes that remain, so a 20-byte file cannot make the reader allocate 2**40 bytes.

#: Deepest nesting of lists, dicts or tuples accepted in a JSON file or a pickle. Real files nest a
#: handful of levels; Python's own recursion (repr, hash, ==) fails or crashes near a few thousand.
MAX_DEPTH = 100
#: Default size limits (bytes) of the readers below; each caller passes its own where it knows better.
MAX_JSON_BYTES = 64 << 20
MAX_TEXT_BYTES = 1 << 30


def _size_words(size: int) -> str:
    return f"{size:,} bytes"


def open_regular(path, max_bytes: int):
    """``path`` opened for binary reading, if it is a regular file of at most ``max_bytes`` bytes.

    Never blocks: a FIFO (or a link to one) is opened non-blocking and refused, as are devices
    (``/dev/zero``) and folders, with ``OSError`` naming the path. A larger file is refused with
    ``OSError(EFBIG)`` naming the path and both sizes, before anything is read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, expected a file", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "is not a regular file (a FIFO, device or socket); refusing to read it",
                          str(path))
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"is {_size_words(info.st_size)}, more than the {_size_words(max_bytes)} "
                                       f"this reader accepts; refusing to read it", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes (:func:`open_regular`); a file that
    grows past the limit while it is read is refused too."""
    with open_regular(path, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"grew past the {_size_words(max_bytes)} this reader accepts while it was read",
                      str(path))
    return data


def read_text(path, max_bytes: int = MAX_TEXT_BYTES, encoding: str = "utf-8") -> str:
    """A regular text file of at most ``max_bytes`` bytes; ``ValueError`` naming it if not ``encoding``."""
    data = read_bytes(path, max_bytes)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise FileContentError(path, f"is not {encoding.upper()} text") from None


def depth_of(obj, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of lists, tuples, sets and dicts in ``obj`` (a scalar is 0), counted without
    recursion; stops counting at ``limit + 1``."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.keys()) + list(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def loads_json(text, where: str, max_depth: int = MAX_DEPTH):
    """``json.loads`` with nesting refused beyond ``max_depth`` and every failure a ``ValueError``
    starting with ``where`` (a file name, or a file and line): ``"<where> is not valid JSON (…)"``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise FileContentError(where, f"nests JSON more than {max_depth} levels deep; refusing it", " ") from None
    except ValueError as error:
        raise FileContentError(where, f"is not valid JSON ({error})", " ") from None
    if depth_of(value, max_depth) > max_depth:
        raise FileContentError(where, f"nests JSON more than {max_depth} levels deep; refusing it", " ")
    return value


def load_json(path, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH):
    """The JSON value in the regular file ``path`` (:func:`open_regular`, :func:`loads_json`)."""
    return loads_json(read_text(path, max_bytes), str(path), max_depth)


class BoundedReader:
    """A binary reader over ``handle`` that refuses any read longer than what remains of its ``size``
    bytes: what a pickle declares (a BINBYTES8 of 2**40 bytes, say) is checked against the file
    before the unpickler allocates it. ``ValueError`` naming ``where``."""

    def __init__(self, handle, size: int, where: str):
        self.handle, self.size, self.where = handle, int(size), where
        self.start = handle.tell()

    def _room(self, n: int) -> None:
        left = self.size - (self.handle.tell() - self.start)
        if n is not None and n > left:
            raise FileContentError(self.where, f"declares {n:,} bytes where {max(left, 0):,} remain; the file is "
                                               f"truncated or crafted")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - (self.handle.tell() - self.start)
        self._room(n)
        return self.handle.read(n)

    def readinto(self, buffer) -> int:
        self._room(len(buffer))
        return self.handle.readinto(buffer)

    def readline(self, limit: int = -1) -> bytes:
        return self.handle.readline(1 << 20 if limit is None or limit < 0 else limit)

    def tell(self) -> int:
        return self.handle.tell() - self.start


#: Opcodes that change the container below their operands in place (``stack_before`` starts with it).
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})


def check_pickle(handle, size: int, where: str, max_depth: int = MAX_DEPTH) -> None:
    """Scan the pickle in ``handle`` (``size`` bytes from its position, which is restored) opcode by
    opcode without building anything, and raise ``ValueError`` naming ``where`` when it declares more
    bytes than remain or nests containers more than ``max_depth`` deep.

    The depth is tracked on a model of the unpickler's stack (each item carries its depth, memo
    entries share the item's cell), so a 2,000,000-deep tuple that would crash CPython's ``hash`` is
    refused after ``max_depth`` opcodes.
    """
    start = handle.tell()
    reader = BoundedReader(handle, size, where)
    stack: list = []  # cells [depth]; None marks a MARK
    memo: dict = {}
    try:
        for opcode, arg, _ in pickletools.genops(reader):
            name = opcode.name
            if name == "MARK":
                stack.append(None)
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else [0]
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else [0]
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, [0]))
                continue
            if name == "DUP":
                stack.append(stack[-1] if stack else [0])
                continue
            popped: list = []
            for kind in reversed(opcode.stack_before):
                if kind is pickletools.stackslice:
                    while stack and stack[-1] is not None:
                        popped.append(stack.pop())
                elif kind is pickletools.markobject:
                    if stack:
                        stack.pop()
                elif stack:
                    item = stack.pop()
                    if item is not None:
                        popped.append(item)
            if not opcode.stack_after:
                continue
            if name in _IN_PLACE:
                # the container was pushed before its operands, so it is popped last; nesting an
                # item in it deepens the container itself (and every memo entry sharing its cell)
                container, items = popped[-1], popped[:-1]
                container[0] = max([container[0]] + [cell[0] + 1 for cell in items])
                cell = container
            else:
                cell = [1 + max((c[0] for c in popped), default=0)] if popped else [1 if name.startswith(
                    ("EMPTY", "TUPLE", "LIST", "DICT", "FROZENSET")) else 0]
            if cell[0] > max_depth:
                raise FileContentError(where, f"nests containers more than {max_depth} levels deep; refusing it")
            stack.append(cell)
    except FileContentError:
        raise
    except ValueError as error:  # pickletools' own complaint about a broken stream
        raise FileContentError(where, str(error)) from None
    finally:
        handle.seek(start)


def check_sizes(obj, limit: int, where: str) -> None:
    """Refuse (``ValueError`` naming ``where``) any numpy array or torch tensor in ``obj`` (walked
    without recursion) with more elements or bytes than ``limit``: an array unpickled from a file
    holds at most the file's bytes, unless it is a crafted view (zero strides, zero-size items)
    that would allocate far more the first time it is copied."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        else:
            count = _elements(item)
            if count is not None and count > limit:
                raise FileContentError(where, f"holds an array of {count[0]:,} elements ({count[1]:,} bytes) in a "
                                              f"file of {limit:,} bytes; refusing it (a crafted view)")


class _Count(tuple):
    def __gt__(self, limit):  # elements or bytes beyond the limit
        return self[0] > limit or self[1] > limit


def _elements(item):
    shape = getattr(item, "shape", None)
    if shape is None or not hasattr(item, "dtype"):
        return None
    try:
        count = 1
        for n in shape:
            count *= int(n)
    except (TypeError, ValueError):
        return None
    itemsize = getattr(item, "itemsize", None)
    if itemsize is None:
        itemsize = item.element_size() if hasattr(item, "element_size") else 1
    return _Count((count, count * int(itemsize)))


@contextlib.contextmanager
def bounded_image(handle, max_pixels: int, where: str):
    """``PIL.Image.open(handle)``, refusing a picture of more than ``max_pixels`` pixels before it is
    decoded (Pillow's decompression-bomb warning and error become one ``ValueError`` naming ``where``)."""
    from PIL import Image  # lazy: an optional extra (linmaml/_extras.py)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise FileContentError(where, f"the picture is too large to decode ({str(error).split('.')[0]})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise FileContentError(where, f"{width}x{height} pixels, more than the {max_pixels:,} this reader "
                                          f"decodes; refusing it")
        yield image
