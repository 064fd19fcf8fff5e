"""CIFAR-FS (Bertinetto et al., ICLR 2019) from CIFAR-100's own ``cifar-100-python`` pickles.

CIFAR-FS uses all 600 images (500 from ``train`` + 100 from ``test``) of each of CIFAR-100's 100
fine classes, 32×32 RGB, split by class 64 / 16 / 20 (meta-train / -val / -test). The class lists
ship in ``linmaml/benchmarks/splits/cifar_fs_{train,val,test}.txt`` (one CIFAR-100 fine-label name a
line, copied from the benchmark's published split).

Where the data is read from, the first that exists of:

1. ``<data root>/cifar-fs/cifar-100-python/{train,test,meta}`` (the unpacked archive),
2. ``<data root>/cifar-fs/cifar-100-python.tar.gz`` (read in place),
3. ``<data root>/cifar-100-python/`` and ``<data root>/cifar-100-python.tar.gz``.

Format of the pickles (Python 2 dicts): ``train`` / ``test`` hold ``data`` (uint8, one row of 3,072
values per image: the 1,024 red, then green, then blue values, each row-major 32×32 — i.e. CHW),
``fine_labels`` (list of 0..99); ``meta`` holds ``fine_label_names`` (100 names, index = label).

Integrity: the md5 of the archive (or of the three pickles) published with torchvision's loader,
and the counts (100 classes, 600 images each).
"""
from __future__ import annotations

import dataclasses
import os
import tarfile
import time
from pathlib import Path

import numpy as np

from linmaml.benchmarks.data._pickles import load_pickle, require, str_keys
from linmaml.benchmarks.data.fewshot import SPLITS, FewShotSplit
from linmaml import _io
from linmaml.benchmarks.data.integrity import MAX_DATA_BYTES, DatasetError, verify_file
from linmaml.benchmarks.data.paths import resolve_data_root
from linmaml.errors import ArgumentError

FOLDER = "cifar-fs"
ARCHIVE_DIR = "cifar-100-python"
TARBALL = "cifar-100-python.tar.gz"
SPLIT_DIR = Path(__file__).resolve().parent.parent / "splits"
#: A member of the tarball may unpack to at most this many times the tarball's size (CIFAR-100's
#: pickles barely compress: about 1.1x), so a small crafted archive cannot cost gigabytes.
MAX_UNPACK_RATIO = 8
HOW_TO_GET = ("download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into "
              "<data root>/cifar-fs/ (it is read in place) and point --data-root or LINMAML_DATA at the data root")


@dataclasses.dataclass(frozen=True)
class Cifar100Spec:
    """What CIFAR-100 must contain; md5 values as published with torchvision's CIFAR100 loader."""

    classes: int = 100
    train_per_class: int = 500
    test_per_class: int = 100
    tarball_md5: str = "eb9058c3a382ffc7106e4002c42a8d85"
    file_md5: tuple = (("train", "16019d7e3df5f24257cddd939b257f8d"),
                       ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
                       ("meta", "7973b15100ade9c7d40fb424638fde48"))
    split_classes: tuple = (("train", 64), ("val", 16), ("test", 20))

    @property
    def images_per_class(self) -> int:
        """CIFAR-FS uses train + test images of every class."""
        return self.train_per_class + self.test_per_class


SPEC = Cifar100Spec()


def split_classes(split: str) -> list[str]:
    """The CIFAR-100 fine-label names of a CIFAR-FS split, in the shipped file's order."""
    if split not in SPLITS:
        raise ArgumentError("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    text = (SPLIT_DIR / f"cifar_fs_{split}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def locate(data_root=None) -> tuple[str, Path]:
    """``("folder", <.../cifar-100-python>)`` or ``("tarball", <...tar.gz>)``; DatasetError if absent."""
    root = resolve_data_root(data_root)
    for base in (root / FOLDER, root):
        if (base / ARCHIVE_DIR).is_dir():
            return "folder", base / ARCHIVE_DIR
        if (base / TARBALL).is_file():
            return "tarball", base / TARBALL
    raise DatasetError(f"cifar-fs: no CIFAR-100 data in {root / FOLDER} (expected {ARCHIVE_DIR}/ with "
                       f"train, test, meta, or {TARBALL}); {HOW_TO_GET}")


def _read_members(fmt: str, path: Path, verify: bool) -> tuple[dict, dict]:
    """The three unpickled dicts keyed by file name, and the verified checksums."""
    checksums, out = {}, {}
    if fmt == "tarball":
        if verify:
            checksums[path.name] = verify_file(path, SPEC.tarball_md5, "md5", hint=HOW_TO_GET)
        try:
            with _io.open_regular(path, MAX_DATA_BYTES) as raw, tarfile.open(fileobj=raw, mode="r:gz") as archive:
                budget = MAX_UNPACK_RATIO * max(os.fstat(raw.fileno()).st_size, 1 << 20)
                for name, _ in SPEC.file_md5:
                    member = f"{ARCHIVE_DIR}/{name}"
                    try:
                        info = archive.getmember(member)
                        handle = archive.extractfile(info)
                    except KeyError:
                        handle = None
                    if handle is None:
                        raise DatasetError(f"{path}: lacks the member {member}; {HOW_TO_GET}")
                    if info.size > budget:
                        raise DatasetError(f"{path}: the member {member} declares {info.size:,} bytes, more than "
                                           f"{MAX_UNPACK_RATIO}x the archive; refusing to unpack it; {HOW_TO_GET}")
                    out[name] = str_keys(load_pickle(handle, f"{path}:{member}", info.size), f"{path}:{member}")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DatasetError(f"{path}: not a readable tar.gz archive ({error}); the file is truncated "
                               f"or altered, {HOW_TO_GET}") from None
        return out, checksums
    for name, md5 in SPEC.file_md5:
        file = path / name
        if not file.is_file():
            raise DatasetError(f"cifar-fs: {file} is missing; {HOW_TO_GET}")
        if verify:
            checksums[name] = verify_file(file, md5, "md5", hint=HOW_TO_GET)
        try:
            with _io.open_regular(file, MAX_DATA_BYTES) as handle:
                out[name] = str_keys(load_pickle(handle, str(file)), str(file))
        except OSError as error:
            raise DatasetError(f"{file}: cannot be read ({error.strerror or error}); {HOW_TO_GET}") from None
    return out, checksums


class CifarFS:
    """CIFAR-100 read once, grouped by fine class; :meth:`split` hands out the CIFAR-FS splits.

    Attributes:
        pixels: ``(100, 600, 3, 32, 32)`` uint8, axis 0 = fine label, per class the ``train`` images
            first, then the ``test`` images, each in file order.
        label_names: the 100 fine-label names (index = label).
        source: ``(format, path)``; checksums: verified md5 by file; seconds: read time.
    """

    def __init__(self, pixels: np.ndarray, label_names: list[str], source: tuple, checksums: dict):
        self.pixels, self.label_names, self.source, self.checksums = pixels, label_names, source, checksums
        self.seconds = {}

    @classmethod
    def load(cls, data_root=None, *, verify: bool = True) -> "CifarFS":
        """Read and check CIFAR-100 (see the module docstring for where it is looked for)."""
        start = time.perf_counter()
        fmt, path = locate(data_root)
        members, checksums = _read_members(fmt, path, verify)
        meta = members["meta"]
        require(meta, ["fine_label_names"], f"{path}/meta")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]
        if len(names) != SPEC.classes or len(set(names)) != len(names):
            raise DatasetError(f"{path}/meta: expected {SPEC.classes} distinct fine_label_names, found {len(set(names))}")
        parts = []
        for name, per_class in (("train", SPEC.train_per_class), ("test", SPEC.test_per_class)):
            batch, where = members[name], f"{path}/{name}"
            require(batch, ["data", "fine_labels"], where)
            data = np.asarray(batch["data"])
            labels = np.asarray(batch["fine_labels"], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DatasetError(f"{where}: data must be uint8 rows of 3072 values, found {data.dtype} {data.shape}")
            if labels.shape != (data.shape[0],):
                raise DatasetError(f"{where}: {labels.shape[0]} fine_labels for {data.shape[0]} images")
            if labels.size and (labels.min() < 0 or labels.max() >= SPEC.classes):
                raise DatasetError(f"{where}: fine_labels outside 0..{SPEC.classes - 1}")
            counts = np.bincount(labels, minlength=SPEC.classes)
            if not (counts == per_class).all():
                worst = int(np.argmin(counts)) if counts.min() < per_class else int(np.argmax(counts))
                raise DatasetError(f"{where}: expected {per_class} images of every class "
                                   f"({per_class * SPEC.classes:,} in all), found {counts[worst]} of "
                                   f"{names[worst]!r} ({data.shape[0]:,} in all); the file is incomplete")
            # stable sort keeps file order within a class
            order = np.argsort(labels, kind="stable")
            parts.append(data[order].reshape(SPEC.classes, per_class, 3, 32, 32))
        data = cls(np.concatenate(parts, axis=1), names, (fmt, path), checksums)
        data.seconds["read"] = time.perf_counter() - start
        return data

    def split(self, split: str) -> FewShotSplit:
        """The :class:`FewShotSplit` of a CIFAR-FS split (classes in the shipped list's order)."""
        wanted = split_classes(split)
        unknown = [n for n in wanted if n not in self.label_names]
        if unknown:
            raise DatasetError(f"cifar-fs: split {split!r} names classes absent from CIFAR-100: {', '.join(unknown[:3])}")
        labels = np.array([self.label_names.index(n) for n in wanted], np.int64)
        count = len(labels)
        return FewShotSplit("cifar-fs", split, self.pixels[labels], np.arange(count, dtype=np.int64),
                            np.zeros(count, np.int64), labels, tuple(wanted))


def load_cifar_fs(split: str, data_root=None, *, verify: bool = True) -> FewShotSplit:
    """One CIFAR-FS split (reads CIFAR-100 once; use :class:`CifarFS` for several splits)."""
    if split not in SPLITS:
        raise ArgumentError("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    return CifarFS.load(data_root, verify=verify).split(split)


def check_cifar_fs(data_root=None) -> dict:
    """Verify CIFAR-100 and the CIFAR-FS split; report counts and checksums (JSON-ready)."""
    data = CifarFS.load(data_root, verify=True)
    report = {"benchmark": "cifar-fs", "format": data.source[0], "path": str(data.source[1]),
              "checksums": {name: {"algorithm": "md5", "digest": d, "verified": True} for name, d in data.checksums.items()},
              "classes": len(data.label_names), "images": int(data.pixels.shape[0] * data.pixels.shape[1]),
              "splits": {}}
    seen = set()
    for split, expected in SPEC.split_classes:
        s = data.split(split)
        if s.num_classes != expected:
            raise DatasetError(f"cifar-fs: split {split!r} should have {expected} classes, has {s.num_classes}")
        if seen & set(s.class_names):
            raise DatasetError(f"cifar-fs: split {split!r} shares classes with another split")
        seen |= set(s.class_names)
        report["splits"][split] = {"classes": s.num_classes, "examples_per_class": s.examples_per_class}
    report["seconds"] = round(data.seconds["read"], 3)
    return report
