"""Your own data as few-shot splits: arrays (an ``.npz`` file or numpy arrays) or an image folder tree.

Both give ``{split: FewShotSplit}`` (:mod:`.fewshot`) under a name of your choice, so the episode
sampler, training, validation and evaluation run on them unchanged (``benchmark="arrays"`` or
``"folder"`` with ``data=PATH`` in :func:`linmaml.benchmarks.train.train` and ``linmaml train``).

**Arrays** (:func:`array_splits`). Each example may have any shape: ``(C, H, W)`` images of any size
and channels (channels first), ``(H, W)`` one-channel images (a channel axis is added), or ``(D,)``
feature vectors (the built-in model is then an MLP, :class:`linmaml.benchmarks.models.MLP`). Floating
values are used as they are (as float32); uint8 values are scaled by 1/255 (images), bool and other
integers become float32. An ``.npz`` holds either

- per split: ``train_x``, ``train_y``, ``val_x``, ``val_y`` (and ``test_x``, ``test_y``), ``*_x`` of
  shape ``(n, *example_shape)`` and ``*_y`` of ``n`` labels (integers or strings); or
- all examples in ``x`` and ``y`` and the split as lists of labels: arrays ``train_classes``,
  ``val_classes`` (, ``test_classes``) in the file, or split files (below).

In Python, pass ``{"train": (x, y), "val": (x, y)}`` or ``(x, y)`` with ``classes={"train": [...],
...}`` or split files.

**An image folder** (:func:`folder_splits`; needs Pillow, the ``images`` extra): either
``root/<split>/<class>/<image files>`` (splits ``train``, ``val``, ``test``) or
``root/<class>/<image files>`` with split files. Every file with an image suffix (.png, .jpg, .jpeg,
.bmp, .gif, .tif, .tiff, .webp) is read; one-band pictures become one channel, pictures with
transparency four (RGBA), all others three (RGB); all must have the same size and channels (resize
them first otherwise). Pixels are kept as uint8 (scaled by 1/255 when sampled). The decoded arrays
are kept in the cache of preprocessed data (:mod:`.cache`), keyed by the files' bytes.

**Split files**: a folder (``split_dir``; for a folder tree without split sub-folders, the root by
default) holding ``train.txt``, ``val.txt`` and optionally ``test.txt``, one class name per line
(blank lines and lines starting with ``#`` ignored). For arrays a class name is ``str(label)``.

**Checks** (an :class:`~linmaml.errors.ArgumentError` naming the argument, one line): a split that is
missing or has no class, a class in two splits, a split file naming a class the data lacks, labels
and examples of different lengths, examples (or images) of different shapes, a class folder without
images, non-finite values. Too few classes for ``ways`` or too few examples per class for ``shots``
plus ``query`` are refused by the task checks
(:func:`linmaml.benchmarks.config.check_task_fits`), naming ``ways``, ``shots`` or ``query``.
Classes may hold different numbers of examples (``FewShotSplit.counts``): a task draws from each
class's own examples, and the fewest any class holds bounds ``shots + query``.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from linmaml import _io
from linmaml._extras import require as require_extra
from linmaml.benchmarks.data.cache import load_or_build
from linmaml.benchmarks.data.fewshot import SPLITS, FewShotSplit
from linmaml.benchmarks.data.integrity import MAX_DATA_BYTES
from linmaml.benchmarks.data.omniglot import _check_npz
from linmaml.errors import ArgumentError, ArgumentTypeError

__all__ = ["IMAGE_SUFFIXES", "array_splits", "check_name", "default_name", "folder_splits", "read_split_files", "splits_from_arrays"]

#: File suffixes read as images in a folder tree (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: The largest picture decoded (pixels) and image file read (bytes).
MAX_IMAGE_PIXELS = 1 << 26
MAX_IMAGE_BYTES = 256 << 20
#: The largest array an npz of your own may declare.
MAX_NPZ_ARRAY_BYTES = 4 << 30
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name, argument: str = "data_name") -> str:
    """A dataset name: letters, digits, ``_``, ``.``, ``-`` (1 to 64 characters, starting with a letter
    or digit); it names the splits (``"<name>/train"``) in messages and is recorded in config.json."""
    if not isinstance(name, str):
        raise ArgumentTypeError(argument, f"expected a name (str), got {type(name).__name__}")
    if not _NAME.match(name):
        raise ArgumentError(argument, f"expected 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
                                      f"digit), got {name!r}")
    return name


def default_name(data, benchmark: str = "arrays") -> str:
    """The name of your own data when none is given: the .npz file's stem (``benchmark="arrays"``) or
    the folder's name, with characters other than letters, digits, ``_``, ``.``, ``-`` replaced by
    ``-`` (``benchmark`` itself when nothing is left)."""
    path = Path(data).expanduser().resolve()
    stem = path.stem if benchmark == "arrays" else path.name
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("_.-")[:64]
    return stem or benchmark


def read_split_files(split_dir, splits=SPLITS, argument: str = "data_splits") -> dict[str, list[str]]:
    """``{split: [class names]}`` from ``<split_dir>/<split>.txt`` (module docstring) for each of
    ``splits`` whose file exists; ``ArgumentError`` naming ``argument`` for an unreadable file, a
    repeated name, or a class in two splits."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ArgumentError(argument, f"{split_dir} is not a folder (expected one holding train.txt, val.txt, test.txt)")
    out, seen = {}, {}
    for split in splits:
        path = split_dir / f"{split}.txt"
        if not path.exists():
            continue
        try:
            text = _io.read_text(path, 64 << 20)
        except (OSError, ValueError) as error:
            raise ArgumentError(argument, f"{path}: not a readable text file ({error})") from None
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        for name in names:
            if name in seen:
                where = "twice in" if seen[name] == split else f"in {seen[name]}.txt and"
                raise ArgumentError(argument, f"class {name!r} is listed {where} {split}.txt of {split_dir}")
            seen[name] = split
        out[split] = names
    return out


# --------------------------------------------------------------------------- arrays

def _as_examples(x, where: str, argument: str) -> np.ndarray:
    """``x`` as float32 or uint8 examples ``(n, *example_shape)`` (a channel axis added to ``(n, H, W)``)."""
    x = np.asarray(x)
    if x.dtype == object or x.dtype.kind not in "biuf":
        raise ArgumentTypeError(argument, f"{where}: expected numbers, got an array of {x.dtype}")
    if x.ndim < 2:
        raise ArgumentError(argument, f"{where}: expected (n, *example_shape) with at least one axis per example, "
                                      f"got shape {x.shape}")
    if x.ndim == 3:
        x = x[:, None]  # (n, H, W): one-channel images
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.size and not np.isfinite(x).all():
            raise ArgumentError(argument, f"{where}: holds NaN or infinite values")
    return x


def _as_labels(y, n: int, where: str, argument: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ArgumentError(argument, f"{where}: expected {n} labels (one per example), got shape {y.shape}")
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)  # whole numbers stored as floats
    if y.dtype == object or y.dtype.kind not in "biuUS":
        raise ArgumentTypeError(argument, f"{where}: expected integer or string labels, got {y.dtype}")
    return y


def _group(x: np.ndarray, y: np.ndarray, wanted: list[str] | None, name: str, split: str,
           offset: int, argument: str) -> tuple[FewShotSplit, int]:
    """The split's examples grouped by class (classes in sorted label order, or ``wanted``'s order)."""
    keys = np.array([str(v) for v in y]) if len(y) else np.array([], dtype=str)
    present = sorted(set(keys.tolist()), key=lambda k: (len(k), k) if all(c.isdigit() for c in k) else (1 << 30, k))
    if wanted is None:
        wanted = present
    else:
        lacking = [c for c in wanted if c not in set(present)]
        if lacking:
            raise ArgumentError(argument, f"the {split} split names {len(lacking)} classes the data lacks (e.g. "
                                          f"{lacking[0]!r})")
    if not wanted:
        raise ArgumentError(argument, f"the {split} split of {name} has no class")
    rows = [np.flatnonzero(keys == c) for c in wanted]
    counts = np.array([len(r) for r in rows], np.int64)
    pixels = np.zeros((len(wanted), int(counts.max())) + x.shape[1:], dtype=x.dtype)
    for i, r in enumerate(rows):
        pixels[i, :len(r)] = x[r]
    count = len(wanted)
    split_obj = FewShotSplit(name, split, pixels, np.arange(count), np.zeros(count, np.int64),
                             offset + np.arange(count), tuple(wanted),
                             None if (counts == counts[0]).all() else counts)
    return split_obj, offset + count


def splits_from_arrays(per_split: Mapping, name: str, argument: str = "data") -> dict[str, FewShotSplit]:
    """``{split: FewShotSplit}`` from ``{split: (x, y, class names or None)}`` (checked, module docstring).

    The classes of different splits are different classes (distinct ``source_ids``) even where their
    labels coincide: per-split labels may restart at 0."""
    examples = {}
    for split, (x, y, _) in per_split.items():
        x = _as_examples(x, f"{name}/{split}", argument)
        examples[split] = (x, _as_labels(y, len(x), f"{name}/{split}", argument))
    first = next(iter(examples), None)
    for split, (x, _) in examples.items():
        if x.shape[1:] != examples[first][0].shape[1:]:
            raise ArgumentError(argument, f"the {split} examples of {name} have shape {x.shape[1:]}, the {first} "
                                          f"ones {examples[first][0].shape[1:]}: every split must have examples of "
                                          f"one shape")
    if len({x.dtype for x, _ in examples.values()}) > 1:  # uint8 in one split, floats in another: all float32
        examples = {s: (x.astype(np.float32) * np.float32(1 / 255) if x.dtype == np.uint8 else x, y)
                    for s, (x, y) in examples.items()}
    out, offset = {}, 0
    for split, (x, y) in examples.items():
        out[split], offset = _group(x, y, per_split[split][2], name, split, offset, argument)
    return out


def _load_npz(path: Path, argument: str) -> dict[str, np.ndarray]:
    try:
        with _io.open_regular(path, MAX_DATA_BYTES) as handle:
            _check_npz(handle, path, MAX_NPZ_ARRAY_BYTES, "write it again")
            archive = np.load(handle, allow_pickle=False)
            if not hasattr(archive, "files"):
                raise ArgumentError(argument, f"{path}: a single array, not an npz archive of arrays")
            with archive:
                return {k: archive[k] for k in archive.files}
    except ArgumentError:
        raise
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported in one line naming it
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArgumentError(argument, f"{path}: not a readable npz file ({first})") from None


def array_splits(data, *, name: str | None = None, classes: Mapping | None = None, split_dir=None,
                 splits=None, argument: str = "data") -> dict[str, FewShotSplit]:
    """Few-shot splits from arrays (module docstring): ``data`` is an ``.npz`` path, a mapping
    ``{split: (x, y)}``, or ``(x, y)`` with ``classes={split: labels}`` or ``split_dir``. ``name``
    (default: the file's stem, else ``"arrays"``) names the splits. Returns the ``splits`` asked for
    (each required), in that order; by default (None) ``train``, ``val`` and ``test`` if the data has it."""
    optional_test = splits is None
    splits = SPLITS if splits is None else ((splits,) if isinstance(splits, str) else tuple(splits))
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if not path.is_file():
            raise ArgumentError(argument, f"{path} is not a file (expected an .npz of arrays)")
        name = default_name(path, "arrays") if name is None else name
        arrays = _load_npz(path, argument)
        if "x" in arrays or "y" in arrays:
            if "x" not in arrays or "y" not in arrays:
                raise ArgumentError(argument, f"{path}: holds {'x' if 'x' in arrays else 'y'} without "
                                              f"{'y' if 'x' in arrays else 'x'}")
            listed = {s: [str(v) for v in arrays[f"{s}_classes"].tolist()] for s in SPLITS if f"{s}_classes" in arrays}
            data, classes = (arrays["x"], arrays["y"]), (classes if classes is not None else (listed or None))
        else:
            found = [s for s in SPLITS if f"{s}_x" in arrays or f"{s}_y" in arrays]
            if not found:
                raise ArgumentError(argument, f"{path}: expected arrays train_x, train_y, val_x, val_y (and test_x, "
                                              f"test_y), or x, y with train_classes, val_classes; found "
                                              f"{', '.join(sorted(arrays)) or 'none'}")
            for s in found:
                if f"{s}_x" not in arrays or f"{s}_y" not in arrays:
                    raise ArgumentError(argument, f"{path}: holds {s}_x or {s}_y without the other")
            data = {s: (arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in found}
    name = check_name("arrays" if name is None else name)
    if isinstance(data, Mapping):
        if classes is not None or split_dir is not None:
            raise ArgumentError("classes" if classes is not None else "split_dir",
                                "the data is already split ({split: (x, y)}); pass classes or split files only "
                                "with (x, y) of all examples")
        unknown = [s for s in data if s not in SPLITS]
        if unknown:
            raise ArgumentError(argument, f"expected splits among {', '.join(SPLITS)}, got {unknown[0]!r}")
        per_split = {}
        for s in splits:
            if s not in data and s == "test" and optional_test:
                continue
            if s not in data:
                raise ArgumentError(argument, f"the data of {name} has no {s} split")
            try:
                x, y = data[s]
            except (TypeError, ValueError):
                raise ArgumentTypeError(argument, f"{s}: expected a pair (x, y)") from None
            per_split[s] = (x, y, None)
        return splits_from_arrays(per_split, name, argument)
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ArgumentTypeError(argument, "expected an .npz path, {split: (x, y)} or (x, y)") from None
    if split_dir is not None:
        if classes is not None:
            raise ArgumentError("split_dir", "pass classes or split files, not both")
        classes = read_split_files(split_dir)
    if classes is None:
        raise ArgumentError("data_splits", f"the examples of {name} are not split: pass split files (train.txt, "
                                           f"val.txt, test.txt listing labels) or classes={{split: labels}}")
    classes = {s: [str(c) for c in v] for s, v in dict(classes).items()}
    _disjoint(classes, "data_splits")
    per_split = {}
    for s in splits:
        if s not in classes and s == "test" and optional_test:
            continue
        if s not in classes:
            raise ArgumentError("data_splits", f"no class list for the {s} split of {name}")
        per_split[s] = (x, y, classes[s])
    return splits_from_arrays(per_split, name, argument)


def _disjoint(classes: Mapping, argument: str) -> None:
    seen = {}
    for split, names in classes.items():
        for c in names:
            if c in seen:
                raise ArgumentError(argument, f"class {c!r} is listed in both the {seen[c]} and the {split} split")
            seen[c] = split


# --------------------------------------------------------------------------- image folders

def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _decode(path: Path, argument: str) -> np.ndarray:
    """One picture as uint8 ``(C, H, W)``: one band → 1 channel, transparency → RGBA, else RGB."""
    try:
        data = _io.read_bytes(path, MAX_IMAGE_BYTES)
        with _io.bounded_image(io.BytesIO(data), MAX_IMAGE_PIXELS, str(path)) as image:
            image.load()
            bands = image.getbands()
            if len(bands) == 1 and image.mode != "P":
                mode = "L"
            elif "A" in bands or (image.mode == "P" and "transparency" in image.info):
                mode = "RGBA"
            else:
                mode = "RGB"
            pixels = np.asarray(image.convert(mode), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArgumentError(argument, f"{path}: not a readable image ({first})") from None
    return pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)


def _layout(root: Path, split_dir, splits, argument: str) -> dict[str, dict[str, Path]]:
    """``{split: {class name: class folder}}`` of a folder tree (module docstring)."""
    if split_dir is None and any((root / s).is_dir() for s in SPLITS) and not (root / "train.txt").exists():
        out = {}
        for s in splits:
            if not (root / s).is_dir():
                raise ArgumentError(argument, f"{root} has no {s}/ folder (expected {root}/<split>/<class>/<images>)")
            out[s] = _class_folders(root / s)
            if not out[s]:
                raise ArgumentError(argument, f"{root / s} holds no class folder")
        return out
    listed = read_split_files(root if split_dir is None else split_dir, splits)
    if not listed:
        raise ArgumentError("data_splits", f"{root} has neither train/ and val/ folders nor split files (train.txt, "
                                           f"val.txt listing class folders)")
    folders = _class_folders(root)
    out = {}
    for s in splits:
        if s not in listed:
            raise ArgumentError("data_splits", f"no {s}.txt for the {s} split of {root}")
        lacking = [c for c in listed[s] if c not in folders]
        if lacking:
            raise ArgumentError("data_splits", f"{s}.txt names {len(lacking)} classes without a folder in {root} "
                                               f"(e.g. {lacking[0]!r})")
        if not listed[s]:
            raise ArgumentError("data_splits", f"{s}.txt lists no class")
        out[s] = {c: folders[c] for c in listed[s]}
    return out


def folder_splits(root, *, name: str | None = None, split_dir=None, splits=None, cache: bool = True,
                  argument: str = "data") -> dict[str, FewShotSplit]:
    """Few-shot splits from an image folder tree (module docstring). ``name`` defaults to the root
    folder's name; ``split_dir`` holds split files (default: split sub-folders, else files in the
    root). Returns the ``splits`` asked for (each required) in order; by default (None) ``train``,
    ``val`` and ``test`` if the tree has it. ``cache``: keep the decoded pixels in the cache of
    preprocessed data (:mod:`.cache`)."""
    if splits is None:
        has_test = (Path(root) / "test").is_dir() or (Path(split_dir or root) / "test.txt").is_file()
        splits = SPLITS if has_test else ("train", "val")
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not isinstance(root, (str, os.PathLike)):
        raise ArgumentTypeError(argument, f"expected the path of an image folder, got {type(root).__name__}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ArgumentError(argument, f"{root} is not a folder (expected <root>/<split>/<class>/<images> or "
                                      f"<root>/<class>/<images> with split files)")
    name = check_name(default_name(root, "folder") if name is None else name)
    layout = _layout(root, split_dir, splits, argument)
    files = {s: {c: _image_files(folder) for c, folder in classes.items()} for s, classes in layout.items()}
    for s, classes in files.items():
        for c, found in classes.items():
            if not found:
                raise ArgumentError(argument, f"{layout[s][c]}: an empty class (no file ending in "
                                              f"{', '.join(IMAGE_SUFFIXES)})")
    require_extra("PIL.Image", "reading image folders")

    def build():
        arrays = {}
        shape, first = None, None
        for s, classes in files.items():
            examples, labels = [], []
            for c, paths in classes.items():
                for path in paths:
                    pixels = _decode(path, argument)
                    if shape is None:
                        shape, first = pixels.shape, path
                    elif pixels.shape != shape:
                        raise ArgumentError(argument, f"{path}: {_words(pixels.shape)}, but {first} has "
                                                      f"{_words(shape)}; every image must have one size and channels "
                                                      f"(resize them first)")
                    examples.append(pixels)
                    labels.append(c)
            arrays[f"{s}_x"] = np.stack(examples)
            arrays[f"{s}_y"] = np.array(labels, dtype=str)
        return arrays

    ordered = [(s, c, p) for s, classes in files.items() for c, paths in classes.items() for p in paths]
    # the key covers every file's bytes and its place (split, class); a changed layout is a new key
    sources = [p for _, _, p in ordered]
    settings = {"layout": [[s, c, p.name] for s, c, p in ordered]}
    arrays, _ = load_or_build("folder", sources, settings, build, [f"{s}_{k}" for s in files for k in "xy"],
                              cache=cache)
    per_split = {s: (arrays[f"{s}_x"], arrays[f"{s}_y"], list(files[s])) for s in files}
    return splits_from_arrays(per_split, name, argument)


def _words(shape) -> str:
    channels, height, width = shape
    return f"{width}x{height} pixels with {channels} channel{'s' if channels > 1 else ''}"
