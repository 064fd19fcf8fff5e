"""A cache of preprocessed data, keyed by the content of the source files.

Reading and preprocessing a dataset (decoding Omniglot's drawings, resizing them to 28x28; decoding an
image folder) costs seconds each time a command starts. :func:`load_or_build` keeps the result as
numpy arrays in one ``.npz`` file per (kind, content key) under the cache folder, so that the next
command reads it back instead.

Where: ``$LINMAML_CACHE`` if set (``off``, ``0`` or ``none`` turn the cache off), else
``<per-user cache folder>/preprocessed`` (:func:`linmaml.benchmarks.data.paths.user_cache_dir`, e.g.
``~/.cache/linmaml/preprocessed``). The data root itself is never written (it may be read-only).

The key (:func:`content_key`) is the sha256 of the kind, the preprocessing settings (and
:data:`CACHE_VERSION`, raised whenever a preprocessing changes its output) and, for every source file
in sorted order, its path relative to its source and its **bytes**: a changed byte anywhere in the
sources makes a new key, so a stale entry is never found. Renaming or touching a file without
changing its bytes keeps the key (the content decides, not sizes or modification times).

An entry is ``<kind>-<key>.npz`` and beside it ``<kind>-<key>.json``, which records the sha256 and
size of the ``.npz``. Both are written atomically (:func:`linmaml._io.atomic_write_bytes`; the
``.json`` last, so an entry without it does not exist) and read with the bounded readers of
:mod:`linmaml._io`. An entry whose ``.npz`` does not hash to the recorded digest, does not parse, or
lacks an array is treated as absent and rebuilt (and overwritten): a damaged cache is never trusted.
Arrays are stored without pickles (``allow_pickle=False``); text arrays as numpy unicode arrays.
A cache that cannot be written (read-only, disk full) is skipped: the data is still returned.
Entries of older contents are not removed (each is one file pair, about 100 MB for Omniglot at 28x28):
delete the folder to reclaim the space.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from linmaml import _io
from linmaml.benchmarks.data.paths import user_cache_dir

#: Environment variable naming the cache folder (or turning the cache off).
ENV_VAR = "LINMAML_CACHE"
#: Values of :data:`ENV_VAR` that turn the cache off.
OFF = ("off", "0", "none", "false", "no")
#: Raised whenever a preprocessing changes what it makes from the same bytes (part of every key).
CACHE_VERSION = 1
#: The largest cache entry read back (the full Omniglot at 28x28 is 102 MB; at 105x105 1.4 GB).
MAX_ENTRY_BYTES = 4 << 30
_CHUNK = 1 << 20

__all__ = ["ENV_VAR", "cache_dir", "content_key", "entry_paths", "load_or_build", "read_entry", "write_entry"]


def cache_dir() -> Path | None:
    """The cache folder (not created here), or None when ``$LINMAML_CACHE`` turns the cache off."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in OFF:
        return None
    return Path(value).expanduser() if value else user_cache_dir() / "preprocessed"


def _source_files(source: Path) -> list[tuple[str, Path]]:
    """``(name relative to source, path)`` of a file, or of every file under a folder (sorted; hidden
    entries and symbolic links to folders skipped)."""
    if source.is_file():
        return [(source.name, source)]
    out = []
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(folder) / name
                out.append((path.relative_to(source).as_posix(), path))
    return out


def content_key(kind: str, sources: Iterable, settings: Mapping) -> str:
    """The sha256 (hex) of ``kind``, ``settings`` (JSON with sorted keys; plus :data:`CACHE_VERSION`)
    and the bytes of every file of ``sources`` (files or folders, each walked in sorted order; each
    file's relative name and length go in before its bytes, so no two layouts hash alike)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": kind, "version": CACHE_VERSION, "settings": dict(settings)},
                             sort_keys=True, default=str).encode())
    for index, source in enumerate(sources):
        source = Path(source)
        for name, path in _source_files(source):
            with _io.open_regular(path, MAX_ENTRY_BYTES) as handle:
                size = os.fstat(handle.fileno()).st_size
                digest.update(f"\0{index}\0{name}\0{size}\0".encode())
                for block in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(block)
    return digest.hexdigest()


def entry_paths(kind: str, key: str, folder: Path | None = None) -> tuple[Path, Path]:
    """``(arrays .npz, record .json)`` of the entry ``(kind, key)`` in ``folder`` (default :func:`cache_dir`)."""
    folder = cache_dir() if folder is None else Path(folder)
    stem = f"{kind}-{key}"
    return folder / f"{stem}.npz", folder / f"{stem}.json"


def read_entry(kind: str, key: str, names: Iterable[str], folder: Path | None = None) -> dict | None:
    """The arrays of entry ``(kind, key)`` (a dict holding at least ``names``), or None when it is absent
    or damaged (missing record, other digest or size, unreadable archive, an array missing)."""
    if folder is None and cache_dir() is None:
        return None
    npz, record_file = entry_paths(kind, key, folder)
    try:
        record = _io.load_json(record_file, max_bytes=1 << 16)
        if not isinstance(record, dict) or record.get("key") != key or record.get("kind") != kind:
            return None
        size = record.get("size")
        if not isinstance(size, int) or not 0 < size <= MAX_ENTRY_BYTES:
            return None
        data = _io.read_bytes(npz, size)
        if len(data) != size or hashlib.sha256(data).hexdigest() != record.get("sha256"):
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, KeyError, TypeError):
        return None
    except Exception:  # noqa: BLE001 - any failure to read a cache entry means: rebuild it
        return None
    if not all(name in arrays for name in names):
        return None
    return arrays


def write_entry(kind: str, key: str, arrays: Mapping[str, np.ndarray], folder: Path | None = None) -> bool:
    """Store ``arrays`` as entry ``(kind, key)``; False (nothing raised) when the cache is off or cannot
    be written."""
    folder = cache_dir() if folder is None else Path(folder)
    if folder is None:
        return False
    npz, record_file = entry_paths(kind, key, folder)
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    data = buffer.getvalue()
    record = {"format": "linmaml-cache", "kind": kind, "key": key, "size": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "arrays": sorted(arrays)}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _io.atomic_write_bytes(npz, data)
        _io.atomic_write_json(record_file, record)  # last: without it the entry does not exist
    except OSError:
        return False
    return True


def load_or_build(kind: str, sources: Iterable, settings: Mapping, build: Callable[[], Mapping[str, np.ndarray]],
                  names: Iterable[str], *, cache: bool = True) -> tuple[dict, bool]:
    """``(arrays, hit)``: the arrays ``build()`` makes from ``sources`` with ``settings``, read back from
    the cache when an entry of the same content key is there and intact (``hit`` True), else built
    and stored (``hit`` False). ``cache=False`` (or the cache turned off) always builds and stores
    nothing."""
    if not cache or cache_dir() is None:
        return dict(build()), False
    key = content_key(kind, list(sources), settings)
    found = read_entry(kind, key, tuple(names))
    if found is not None:
        return found, True
    arrays = dict(build())
    write_entry(kind, key, arrays)
    return arrays, False
