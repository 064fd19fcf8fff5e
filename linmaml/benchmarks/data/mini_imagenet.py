"""mini-ImageNet (Vinyals et al., 2016; split of Ravi & Larochelle, 2017): 100 ImageNet classes of 600
images, 84×84 RGB, split by class 64 / 16 / 20.

Where the data is read from (the split is defined by the files themselves), the first that exists:

1. The pickle cache: ``<data root>/mini-imagenet/mini-imagenet-cache-<split>.pkl``, one pickled
   dict per split with ``image_data`` (uint8 ``(N, 84, 84, 3)``, HWC) and ``class_dict``
   (class name → list of row indices into ``image_data``).
2. The Ravi & Larochelle layout: ``<data root>/mini-imagenet/images/`` plus ``train.csv``,
   ``val.csv``, ``test.csv`` with the header ``filename,label`` (a file name inside ``images/`` and
   its class, e.g. a WordNet id ``n01532829``). Images are read with Pillow, converted to RGB and, when
   not already 84×84, resized with Pillow's LANCZOS filter.

Integrity: the counts (64 / 16 / 20 classes of 600 images, 84×84×3), every index used once, and for
the CSV layout that no class appears in two splits. No checksum of these community-made files is
published, so none is checked; instead the pickle is read without running code from it
(:class:`linmaml.benchmarks.data._pickles.DataUnpickler`): only numpy arrays, dicts, lists, strings
and numbers are accepted, and a file naming anything else is refused by that name.

``source_ids``: the numeric part of a WordNet id (``n01532829`` → 1532829); other class names get a
stable 60-bit number from their sha1, so that the class sets of different splits stay comparable.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
import time
from pathlib import Path

import numpy as np

from linmaml._extras import require as require_extra
from linmaml.benchmarks.data._pickles import load_pickle, require, str_keys
from linmaml.benchmarks.data.fewshot import SPLITS, FewShotSplit
from linmaml import _io
from linmaml.benchmarks.data.integrity import MAX_DATA_BYTES, DatasetError
from linmaml.benchmarks.data.paths import benchmark_dir
from linmaml.errors import ArgumentError

FOLDER = "mini-imagenet"
SIZE = 84
#: The largest image file and picture read from images/ (ImageNet's largest photos are a few
#: megapixels); larger ones are refused before they are decoded.
MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 64_000_000
HOW_TO_GET = ("put the pickle cache (mini-imagenet-cache-{train,val,test}.pkl) or the Ravi & Larochelle "
              "images/ folder with train.csv, val.csv, test.csv into <data root>/mini-imagenet/ and point "
              "--data-root or LINMAML_DATA at the data root")


@dataclasses.dataclass(frozen=True)
class MiniImageNetSpec:
    """What the standard split holds: classes per split, images per class."""

    classes: tuple = (("train", 64), ("val", 16), ("test", 20))
    images_per_class: int = 600


SPEC = MiniImageNetSpec()


def pickle_name(split: str) -> str:
    """File name of a split's pickle in the cache format."""
    return f"mini-imagenet-cache-{split}.pkl"


def source_id(name: str) -> int:
    """Dataset-wide integer id of a class name (see the module docstring)."""
    match = re.fullmatch(r"n(\d{8})", name)
    if match:
        return int(match.group(1))
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:15], 16)


def locate(split: str, data_root=None) -> tuple[str, Path]:
    """``("pickle", <file>)`` or ``("csv", <folder>)`` for ``split``; DatasetError if neither is there."""
    folder = benchmark_dir(FOLDER, data_root)
    cache = folder / pickle_name(split)
    if cache.is_file():
        return "pickle", cache
    if (folder / f"{split}.csv").is_file() and (folder / "images").is_dir():
        return "csv", folder
    raise DatasetError(f"mini-imagenet: no {split} split in {folder} (expected {cache.name}, or images/ "
                       f"with {split}.csv); {HOW_TO_GET}")


def _expected_classes(split: str) -> int:
    return dict(SPEC.classes)[split]


def _check_counts(split: str, names: list, per_class: list, where: str) -> None:
    expected = _expected_classes(split)
    if len(names) != expected:
        raise DatasetError(f"{where}: expected {expected} classes in the {split} split, found {len(names)}; "
                           f"the data is incomplete or not the standard split")
    for name, count in zip(names, per_class):
        if count != SPEC.images_per_class:
            raise DatasetError(f"{where}: expected {SPEC.images_per_class} images of every class, found "
                               f"{count} of {name!r}; the data is incomplete")


def _read_pickle(path: Path, split: str, verify: bool) -> tuple[np.ndarray, list]:
    try:
        with _io.open_regular(path, MAX_DATA_BYTES) as handle:
            cache = str_keys(load_pickle(handle, str(path)), str(path))
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror or error})") from None
    require(cache, ["image_data", "class_dict"], str(path))
    images = np.asarray(cache["image_data"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):
        raise DatasetError(f"{path}: image_data must be uint8 (N, {SIZE}, {SIZE}, 3), found {images.dtype} {images.shape}")
    class_dict = {(k.decode() if isinstance(k, bytes) else str(k)): np.asarray(v, dtype=np.int64).ravel()
                  for k, v in dict(cache["class_dict"]).items()}
    names = sorted(class_dict)
    used = np.concatenate([class_dict[n] for n in names]) if names else np.zeros(0, np.int64)
    if used.size and (used.min() < 0 or used.max() >= len(images)):
        raise DatasetError(f"{path}: class_dict indexes past the {len(images)} rows of image_data")
    if len(np.unique(used)) != len(used):
        raise DatasetError(f"{path}: class_dict uses an image in two places")
    if verify:
        _check_counts(split, names, [len(class_dict[n]) for n in names], str(path))
        if len(used) != len(images):
            raise DatasetError(f"{path}: {len(images) - len(used)} rows of image_data belong to no class")
    counts = {len(class_dict[n]) for n in names}
    if len(counts) > 1:
        raise DatasetError(f"{path}: classes hold different numbers of images ({sorted(counts)})")
    index = np.stack([class_dict[n] for n in names])
    return images[index], names


def _read_csv_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise DatasetError(f"{path}: expected the header 'filename,label', found {header}")
        rows = [(r[0].strip(), r[1].strip()) for r in reader if r]
    return rows


def _read_csv(folder: Path, split: str, verify: bool) -> tuple[np.ndarray, list]:
    rows = _read_csv_rows(folder / f"{split}.csv")
    if verify:
        # the split is defined by the files: a class in two CSVs would leak across splits
        mine = {label for _, label in rows}
        for other in SPLITS:
            path = folder / f"{other}.csv"
            if other != split and path.is_file():
                shared = mine & {label for _, label in _read_csv_rows(path)}
                if shared:
                    raise DatasetError(f"{folder}: class {sorted(shared)[0]} is in both {split}.csv and {other}.csv")
    by_class: dict[str, list[str]] = {}
    for filename, label in rows:
        by_class.setdefault(label, []).append(filename)
    names = sorted(by_class)
    if verify:
        _check_counts(split, names, [len(by_class[n]) for n in names], str(folder / f"{split}.csv"))
    counts = {len(by_class[n]) for n in names}
    if len(counts) > 1:
        raise DatasetError(f"{folder / f'{split}.csv'}: classes hold different numbers of images ({sorted(counts)})")
    per_class = counts.pop() if counts else 0
    images = np.empty((len(names), per_class, SIZE, SIZE, 3), np.uint8)
    for c, name in enumerate(names):
        for e, filename in enumerate(by_class[name]):
            images[c, e] = _read_image(folder / "images" / filename)
    return images, names


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: listed in the CSV but missing; the data is incomplete")
    Image = require_extra("PIL.Image", "reading image files")  # Pillow is an extra; the .npz format needs none
    try:
        with _io.open_regular(path, MAX_IMAGE_BYTES) as handle, _io.bounded_image(handle, MAX_IMAGE_PIXELS, str(path)) as image:
            image = image.convert("RGB")
            if image.size != (SIZE, SIZE):
                image = image.resize((SIZE, SIZE), Image.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"{path}: not a readable image ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None


def load_mini_imagenet(split: str, data_root=None, *, verify: bool = True) -> FewShotSplit:
    """One mini-ImageNet split as a :class:`FewShotSplit` (uint8 pixels ``(64|16|20, 600, 3, 84, 84)``;
    classes in sorted name order, examples in the file's order)."""
    if split not in SPLITS:
        raise ArgumentError("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    fmt, path = locate(split, data_root)
    reader = _read_pickle if fmt == "pickle" else _read_csv
    images, names = reader(path, split, verify)
    pixels = np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3))  # HWC -> CHW
    count = len(names)
    return FewShotSplit("mini-imagenet", split, pixels, np.arange(count, dtype=np.int64), np.zeros(count, np.int64),
                        np.array([source_id(n) for n in names], np.int64), tuple(names))


def check_mini_imagenet(data_root=None) -> dict:
    """Verify all three splits; report format, counts and class disjointness (JSON-ready)."""
    start = time.perf_counter()
    report = {"benchmark": "mini-imagenet", "folder": str(benchmark_dir(FOLDER, data_root)), "splits": {}}
    seen: dict[int, str] = {}
    for split in SPLITS:
        fmt, path = locate(split, data_root)
        s = load_mini_imagenet(split, data_root, verify=True)
        for sid, name in zip(s.source_ids, s.class_names):
            if int(sid) in seen:
                raise DatasetError(f"mini-imagenet: class {name} is in both the {seen[int(sid)]} and {split} splits")
            seen[int(sid)] = split
        report["splits"][split] = {"format": fmt, "path": str(path), "classes": s.num_classes,
                                   "examples_per_class": s.examples_per_class}
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report
