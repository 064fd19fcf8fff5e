"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015): readers, integrity checks, preprocessing, split.

Where the data is read from: ``<data root>/omniglot/`` (see :mod:`.paths`), holding for each of the
two official sets (``background``: 30 alphabets, 964 characters; ``evaluation``: 20 alphabets, 659
characters; 20 drawings of 105×105 pixels per character, 32,460 images in all) the first of

1. ``omniglot_<set>.npz`` — the compact NumPy copy (bool ``images (C, 20, 105, 105)``, True =
   white background; plus ``char_id``, ``alphabet_names``, ``char_alphabet``, ``char_folder``,
   ``drawer``), verified by sha256;
2. ``images_<set>/<Alphabet>/characterNN/XXXX_YY.png`` — the official folder tree (``XXXX`` = the
   global character id ``char_id`` 1..1623, ``YY`` = drawer 01..20), verified by counts;
3. ``images_<set>.zip`` — the official zip (read in place, never extracted), verified by md5 and
   counts.

Characters are identified everywhere by their global ``char_id`` (1..964 background, 965..1623
evaluation), so the split does not depend on the storage format. Within a set, characters are
ordered by (alphabet folder name, character folder name), Python's string sort.

Preprocessing (:class:`Omniglot`): ink = 1.0, background = 0.0, float32, resized 105 → ``size``
(default 28) by box averaging (:mod:`.resize`; equal to Pillow's ``Image.BOX``). Rotations by
multiples of 90° make new classes: each (character, rotation) pair is its own class, with its
rotation fixed per class (:class:`.fewshot.FewShotSplit`).

The class split is shipped in ``linmaml/benchmarks/splits/omniglot.csv`` (see the README there):
1,100 characters for meta-training, 100 for meta-validation (together the usual 1,200) and 423 for
meta-testing, from a seeded permutation of the 1,623 char ids (:func:`split_recipe`). Lake et al.'s
alphabet split is the other choice (:func:`alphabet_split_table`, ``class_split="alphabets"``):
meta-training on 25 of the 30 background alphabets, validation on the other 5, meta-testing on the 20
evaluation alphabets, so no test alphabet is ever seen in training.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import re
import time
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from linmaml import _io
from linmaml._extras import require as require_extra
from linmaml._validate import integer
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.benchmarks.data.cache import load_or_build
from linmaml.benchmarks.data.fewshot import SPLITS, FewShotSplit
from linmaml.benchmarks.data.integrity import MAX_DATA_BYTES, DatasetError, verify_file
from linmaml.benchmarks.data.paths import benchmark_dir
from linmaml.benchmarks.data.resize import METHODS, resize_stack

FOLDER = "omniglot"
DRAWERS = 20
IMAGE_SIZE = 105
SPLIT_FILE = Path(__file__).resolve().parent.parent / "splits" / "omniglot.csv"
#: Seed and sizes of the shipped split (see :func:`split_recipe`).
SPLIT_SEED = 0
SPLIT_SIZES = {"train": 1100, "val": 100, "test": 423}
#: The alphabet split: the background alphabets held out of training for validation (5 of the 30:
#: :func:`alphabet_split_recipe`, seed 0; 149 characters), written out so the split never depends on
#: numpy's generator. The other 25 background alphabets (815 characters) train; the 20 evaluation
#: alphabets (659 characters) test.
ALPHABET_VAL = ("Arcadian", "Cyrillic", "Early_Aramaic", "Latin", "Sanskrit")
ALPHABET_VAL_SEED = 0
#: The class splits :func:`split_tables` knows.
CLASS_SPLITS = ("standard", "alphabets")
#: Rotations (degrees, counter-clockwise) that make new classes unless told otherwise.
DEFAULT_ROTATIONS = (0, 90, 180, 270)

FRESH_COPY = "replace it with a fresh copy (`linmaml data download omniglot` fetches the official zips)"
HOW_TO_GET = ("get it with `linmaml data download omniglot --root DIR` (official zips) or copy the two "
              "omniglot_*.npz files there, and point --data-root or LINMAML_DATA at DIR")


@dataclasses.dataclass(frozen=True)
class SetSpec:
    """What one official Omniglot set must contain, and the checksums of its known files."""

    name: str
    alphabets: int
    characters: int
    first_char_id: int
    npz_sha256: str
    npz_size: int | None
    zip_md5: str

    @property
    def images(self) -> int:
        """Total drawings of the set."""
        return self.characters * DRAWERS

    @property
    def npz_name(self) -> str:
        """File name of the compact npz copy."""
        return f"omniglot_{self.name}.npz"

    @property
    def folder_name(self) -> str:
        """Name of the official folder."""
        return f"images_{self.name}"

    @property
    def zip_name(self) -> str:
        """File name of the official zip."""
        return f"images_{self.name}.zip"


SETS = {
    "background": SetSpec("background", 30, 964, 1,
                          "251acf82f14614e799c0ee9c2893478d2692ce58bd4ba8e5f4b8416f4ea6ee7b", 3_002_657,
                          "68d2efa1b9178cc56df9314c21c6e718"),
    "evaluation": SetSpec("evaluation", 20, 659, 965,
                          "3d1dd2b330ca6b0615077fc5af16b858413cebb15f9891a105f8bfe75a3cd4ec", 2_193_091,
                          "6b91aef0f799c5bb55b94e3f2daec811"),
}
FORMATS = ("npz", "folder", "zip")


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotSet:
    """One official set as stored, before preprocessing.

    Attributes:
        name: ``"background"`` or ``"evaluation"``.
        images: ``(C, 20, 105, 105)`` bool, **True = white background**, False = ink;
            ``images[c, d]`` is drawing ``d + 1`` of character ``c``.
        char_id: ``(C,)`` int64 global character ids (the ``XXXX`` of ``XXXX_YY.png``).
        alphabet_names: sorted alphabet folder names.
        char_alphabet: ``(C,)`` int64 index into ``alphabet_names``.
        char_folder: ``(C,)`` int64, the ``NN`` of ``characterNN``.
        format: ``"npz"``, ``"folder"`` or ``"zip"``; path: where it was read from.
        checksum: ``(algorithm, hex digest)`` of the file when one was verified, else None.
    """

    name: str
    images: np.ndarray
    char_id: np.ndarray
    alphabet_names: tuple
    char_alphabet: np.ndarray
    char_folder: np.ndarray
    format: str
    path: Path
    checksum: tuple | None = None

    @property
    def ink_fraction(self) -> float:
        """Share of ink (False) pixels over all images."""
        return 1.0 - float(np.count_nonzero(self.images)) / self.images.size

    def character_names(self) -> list[str]:
        """``"<Alphabet>/characterNN"`` for each character, in storage order."""
        return [f"{self.alphabet_names[a]}/character{f:02d}" for a, f in zip(self.char_alphabet, self.char_folder)]


# --------------------------------------------------------------------------- locating and reading

def locate(data_root=None) -> dict[str, tuple[str, Path]]:
    """For each set, the ``(format, path)`` it will be read from (npz, then folder, then zip).

    Raises :class:`DatasetError` saying what is missing and how to get it.
    """
    folder = benchmark_dir(FOLDER, data_root)
    found, missing = {}, []
    for spec in SETS.values():
        candidates = (("npz", folder / spec.npz_name), ("folder", folder / spec.folder_name),
                      ("zip", folder / spec.zip_name))
        for fmt, path in candidates:
            if (path.is_dir() if fmt == "folder" else path.is_file()):
                found[spec.name] = (fmt, path)
                break
        else:
            missing.append(spec.name)
    if missing:
        what = " and ".join(f"the {name} set ({SETS[name].npz_name}, {SETS[name].folder_name}/ or "
                            f"{SETS[name].zip_name})" for name in missing)
        raise DatasetError(f"omniglot: {folder} lacks {what}; {HOW_TO_GET}")
    return found


def read_set(fmt: str, path, name: str, *, verify: bool = True) -> OmniglotSet:
    """Read one set (``name`` = ``"background"`` or ``"evaluation"``) stored in format ``fmt``.

    With ``verify`` (the default) the file checksum (npz: sha256, zip: md5) and the counts of
    :data:`SETS` are checked; without it only the structure is (shapes, drawer numbering).
    """
    if name not in SETS:
        raise ArgumentError("name", f"expected one of {', '.join(SETS)}, got {name!r}")
    if fmt not in FORMATS:
        raise ArgumentError("fmt", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
    spec, path = SETS[name], Path(path)
    checksum = None
    if fmt == "npz":
        if verify:
            checksum = ("sha256", verify_file(path, spec.npz_sha256, "sha256", size=spec.npz_size, hint=FRESH_COPY))
        omniset = _read_npz(path, name)
    elif fmt == "zip":
        if verify:
            checksum = ("md5", verify_file(path, spec.zip_md5, "md5", hint=FRESH_COPY))
        omniset = _read_zip(path, name)
    else:
        omniset = _read_folder(path, name)
    omniset = dataclasses.replace(omniset, checksum=checksum)
    if verify:
        verify_counts(omniset)
    return omniset


def read_omniglot(data_root=None, *, verify: bool = True) -> dict[str, OmniglotSet]:
    """Both official sets, as stored (bool 105×105, True = background), keyed by set name."""
    return {name: read_set(fmt, path, name, verify=verify) for name, (fmt, path) in locate(data_root).items()}


def verify_counts(omniset: OmniglotSet) -> None:
    """Check alphabets, characters, drawings and char ids against :data:`SETS`; raise DatasetError."""
    spec = SETS[omniset.name]
    where = f"omniglot {omniset.name} set ({omniset.path})"
    shape = (spec.characters, DRAWERS, IMAGE_SIZE, IMAGE_SIZE)
    if omniset.images.shape != shape:
        raise DatasetError(f"{where}: expected {spec.characters} characters x {DRAWERS} drawings of "
                           f"{IMAGE_SIZE}x{IMAGE_SIZE} ({spec.images:,} images), found images of shape "
                           f"{omniset.images.shape}; the data is incomplete, {HOW_TO_GET}")
    if len(omniset.alphabet_names) != spec.alphabets:
        raise DatasetError(f"{where}: expected {spec.alphabets} alphabets, found {len(omniset.alphabet_names)}")
    ids = np.sort(omniset.char_id)
    expected = np.arange(spec.first_char_id, spec.first_char_id + spec.characters)
    if not np.array_equal(ids, expected):
        raise DatasetError(f"{where}: expected character ids {expected[0]}..{expected[-1]} once each, "
                           f"found {len(np.unique(ids))} distinct ids in {ids.min()}..{ids.max()}")


#: The largest array an omniglot npz may declare (the images of the background set are 964 x 20 x
#: 105 x 105 booleans, 213 MB), and the largest PNG (a 105x105 drawing is about 300 bytes).
MAX_NPZ_ARRAY_BYTES = 1 << 30
MAX_PNG_BYTES = 1 << 20


def _check_npz(handle, path: Path, limit: int = MAX_NPZ_ARRAY_BYTES, hint: str = FRESH_COPY) -> None:
    """Refuse an npz whose arrays declare (in their .npy headers) more bytes than ``limit`` (default
    :data:`MAX_NPZ_ARRAY_BYTES`) or than their stored member holds: numpy allocates what the header
    says before it reads a byte, so a tiny deflated file could otherwise cost any amount of memory.
    ``hint`` ends the message (what to do about it)."""
    try:
        with zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = npy.read_magic(member)
                    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _, dtype = read_header(member, max_header_size=10_000)
                    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if declared > limit or declared > info.file_size:
                        raise DatasetError(f"{path}: {info.filename} declares {declared:,} bytes of {dtype} "
                                           f"{tuple(shape)} in a member of {info.file_size:,}; the file is "
                                           f"altered, {hint}")
    finally:
        handle.seek(0)


def _read_npz(path: Path, name: str) -> OmniglotSet:
    keys = ("images", "char_id", "alphabet_names", "char_alphabet", "char_folder", "drawer")
    try:
        with _io.open_regular(path, MAX_DATA_BYTES) as handle:
            _check_npz(handle, path)
            archive = np.load(handle, allow_pickle=False)
            if not hasattr(archive, "files"):
                raise DatasetError(f"{path}: a single array, not an omniglot npz archive")
            with archive:
                missing = [k for k in keys if k not in archive.files]
                if missing:
                    raise DatasetError(f"{path}: lacks the arrays {', '.join(missing)} of the omniglot npz format")
                arrays = {k: archive[k] for k in keys}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as error:
        raise DatasetError(f"{path}: not a readable omniglot npz file ({error})") from None
    images = arrays["images"]
    if images.dtype != np.bool_ or images.ndim != 4 or images.shape[1:] != (DRAWERS, IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(f"{path}: images must be bool (C, {DRAWERS}, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                           f"found {images.dtype} {images.shape}")
    if not np.array_equal(arrays["drawer"], np.arange(1, DRAWERS + 1)):
        raise DatasetError(f"{path}: drawer must be 1..{DRAWERS} in order")
    count = images.shape[0]
    for key in ("char_id", "char_alphabet", "char_folder"):
        if arrays[key].shape != (count,):
            raise DatasetError(f"{path}: {key} must have shape ({count},), found {arrays[key].shape}")
    alphabets = tuple(str(a) for a in arrays["alphabet_names"])
    if count and (arrays["char_alphabet"].min() < 0 or arrays["char_alphabet"].max() >= len(alphabets)):
        raise DatasetError(f"{path}: char_alphabet indexes past alphabet_names")
    return OmniglotSet(name, images, arrays["char_id"].astype(np.int64), alphabets,
                       arrays["char_alphabet"].astype(np.int64), arrays["char_folder"].astype(np.int64),
                       "npz", path)


_CHAR_DIR = re.compile(r"character(\d+)$")
_IMAGE_FILE = re.compile(r"(\d{4})_(\d{2})\.png$")


def _read_folder(path: Path, name: str) -> OmniglotSet:
    entries = {}
    for alphabet_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for char_dir in sorted(p for p in alphabet_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = {f.name: f for f in char_dir.iterdir() if _IMAGE_FILE.match(f.name)}
            entries[(alphabet_dir.name, char_dir.name)] = (char_dir, files, lambda f: f)
    return _assemble(entries, name, path, "folder")


def _read_zip(path: Path, name: str) -> OmniglotSet:
    try:
        archive = zipfile.ZipFile(_io.open_regular(path, MAX_DATA_BYTES))
    except (OSError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{path}: not a readable zip file ({error})") from None
    with archive:
        entries = {}
        for member in archive.namelist():
            parts = member.split("/")
            # official layout: images_<set>/<Alphabet>/characterNN/XXXX_YY.png (any leading folders)
            if len(parts) < 3 or not _IMAGE_FILE.match(parts[-1]) or parts[-1].startswith("."):
                continue
            if "__MACOSX" in parts:
                continue
            key = (parts[-3], parts[-2])
            entry = entries.setdefault(key, (f"{path}:{'/'.join(parts[:-1])}", {}, None))
            entry[1][parts[-1]] = member
        def read(member: str) -> bytes:
            # a member declaring more than a drawing can hold is refused before it is inflated
            info = archive.getinfo(member)
            if info.file_size > MAX_PNG_BYTES:
                raise DatasetError(f"{path}:{member}: declares {info.file_size:,} bytes, more than the "
                                   f"{MAX_PNG_BYTES:,} a drawing may have; the file is altered, {FRESH_COPY}")
            return archive.read(info)

        entries = {k: (where, files, read) for k, (where, files, _) in entries.items()}
        return _assemble(entries, name, path, "zip")


def _assemble(entries: dict, name: str, path: Path, fmt: str) -> OmniglotSet:
    """Build an :class:`OmniglotSet` from ``{(alphabet, character folder): (where, files, read)}``."""
    keys = sorted(entries)
    if not keys:
        raise DatasetError(f"{path}: no images_{name}/<Alphabet>/characterNN/XXXX_YY.png files found; {HOW_TO_GET}")
    images = np.empty((len(keys), DRAWERS, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    char_id = np.empty(len(keys), np.int64)
    char_folder = np.empty(len(keys), np.int64)
    alphabets = sorted({alphabet for alphabet, _ in keys})
    char_alphabet = np.array([alphabets.index(alphabet) for alphabet, _ in keys], np.int64)
    for c, key in enumerate(keys):
        where, files, read = entries[key]
        folder_match = _CHAR_DIR.match(key[1])
        if folder_match is None:
            raise DatasetError(f"{where}: expected a folder named characterNN")
        char_folder[c] = int(folder_match.group(1))
        parsed = {(int(m.group(1)), int(m.group(2))): f for f, m in ((f, _IMAGE_FILE.match(f)) for f in files)}
        ids = {i for i, _ in parsed}
        if len(ids) != 1:
            raise DatasetError(f"{where}: expected the images of one character, found ids {sorted(ids)}")
        char_id[c] = ids.pop()
        drawers = sorted(d for _, d in parsed)
        if drawers != list(range(1, DRAWERS + 1)):
            lacking = sorted(set(range(1, DRAWERS + 1)) - set(drawers))
            raise DatasetError(f"{where}: expected drawings {char_id[c]:04d}_01..{DRAWERS:02d}.png, found "
                               f"{len(drawers)}" + (f" (missing {', '.join(f'{d:02d}' for d in lacking)})" if lacking else "")
                               + f"; the data is incomplete, {HOW_TO_GET}")
        for d in range(DRAWERS):
            source = files[f"{char_id[c]:04d}_{d + 1:02d}.png"]
            images[c, d] = _decode_png(read(source), f"{where}/{char_id[c]:04d}_{d + 1:02d}.png")
    return OmniglotSet(name, images, char_id, tuple(alphabets), char_alphabet, char_folder, fmt, path)


def _decode_png(source, where: str) -> np.ndarray:
    """A 105×105 bool image, True = white background (what the official 1-bit PNGs hold)."""
    require_extra("PIL.Image", "reading image files")  # Pillow is an extra; the .npz format needs none
    try:
        if not isinstance(source, bytes):
            source = _io.read_bytes(source, MAX_PNG_BYTES)
        with _io.bounded_image(io.BytesIO(source), IMAGE_SIZE * IMAGE_SIZE, where) as image:
            image.load()
            pixels = np.asarray(image) if image.mode == "1" else np.asarray(image.convert("L")) >= 128
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"{where}: not a readable PNG image ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(f"{where}: expected {IMAGE_SIZE}x{IMAGE_SIZE} pixels, found {pixels.shape[::-1]}")
    return pixels


# --------------------------------------------------------------------------- split

def split_recipe(seed: int = SPLIT_SEED, sizes: dict | None = None) -> dict[str, np.ndarray]:
    """The recipe that made the shipped split: char ids by split, each sorted ascending.

    ``numpy.random.default_rng(seed).permutation(1623) + 1`` lists the 1,623 char ids in a random
    order; the first 1,100 are meta-training, the next 100 meta-validation, the last 423
    meta-testing. The shipped file is the reference (it does not depend on numpy's generator); a test
    checks that it matches this recipe.
    """
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    total = sum(s.characters for s in SETS.values())
    order = np.random.default_rng(seed).permutation(total) + 1
    out, start = {}, 0
    for split in SPLITS:
        out[split] = np.sort(order[start:start + sizes[split]])
        start += sizes[split]
    return out


def split_table(path=None) -> dict[str, np.ndarray]:
    """The shipped class split: ``{"train": char ids, "val": ..., "test": ...}`` (sorted int64)."""
    path = SPLIT_FILE if path is None else Path(path)
    table = {split: [] for split in SPLITS}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["split"] not in table:
                raise DatasetError(f"{path}: unknown split {row['split']!r} for char_id {row['char_id']}")
            table[row["split"]].append(int(row["char_id"]))
    return {split: np.array(sorted(ids), np.int64) for split, ids in table.items()}


def _split_rows(path=None) -> list[dict]:
    path = SPLIT_FILE if path is None else Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def alphabet_split_recipe(seed: int = ALPHABET_VAL_SEED, count: int = len(ALPHABET_VAL), path=None) -> tuple[str, ...]:
    """The recipe of :data:`ALPHABET_VAL`: the 30 background alphabets in Python's string order, a
    ``numpy.random.default_rng(seed)`` permutation of them, its first ``count`` (sorted by name). A test
    checks the constant against it; the constant is the reference."""
    background = sorted({row["alphabet"] for row in _split_rows(path) if row["set"] == "background"})
    chosen = np.random.default_rng(seed).permutation(len(background))[:count]
    return tuple(sorted(background[i] for i in chosen))


def alphabet_split_table(path=None) -> dict[str, np.ndarray]:
    """Lake et al.'s alphabet split (Lake, Salakhutdinov & Tenenbaum 2015: background alphabets to
    learn from, evaluation alphabets to test on): ``{"train": char ids, "val": ..., "test": ...}``
    (sorted int64), from the ``set`` and ``alphabet`` columns of the shipped ``omniglot.csv``.

    train: the 25 background alphabets not in :data:`ALPHABET_VAL` (815 characters); val: the 5 in it
    (149 characters, held out of training for model selection); test: the 20 evaluation alphabets (659
    characters). No alphabet is in two splits.
    """
    table = {split: [] for split in SPLITS}
    for row in _split_rows(path):
        if row["set"] == "evaluation":
            split = "test"
        elif row["set"] == "background":
            split = "val" if row["alphabet"] in ALPHABET_VAL else "train"
        else:
            raise DatasetError(f"{path or SPLIT_FILE}: unknown set {row['set']!r} for char_id {row['char_id']}")
        table[split].append(int(row["char_id"]))
    return {split: np.array(sorted(ids), np.int64) for split, ids in table.items()}


def split_tables(class_split: str = "standard") -> dict[str, np.ndarray]:
    """The class split called ``class_split``: ``"standard"`` (:func:`split_table`, the shipped random
    character split) or ``"alphabets"`` (:func:`alphabet_split_table`)."""
    if class_split not in CLASS_SPLITS:
        raise ArgumentError("class_split", f"expected one of {', '.join(CLASS_SPLITS)}, got {class_split!r}")
    return split_table() if class_split == "standard" else alphabet_split_table()


# --------------------------------------------------------------------------- preprocessing

def rotation_turns(rotations) -> tuple[int, ...]:
    """Validate rotations in degrees (multiples of 90, distinct) and return quarter turns."""
    if isinstance(rotations, (int, np.integer)):
        rotations = (rotations,)
    try:
        rotations = tuple(rotations)
    except TypeError:
        raise ArgumentTypeError("rotations", f"expected a sequence of angles in degrees, got {rotations!r}") from None
    if not rotations:
        raise ArgumentError("rotations", "expected at least one angle (use (0,) for no rotation)")
    turns = []
    for angle in rotations:
        angle = integer(angle, "rotations")
        if angle % 90 != 0 or not 0 <= angle < 360:
            raise ArgumentError("rotations", f"expected angles among 0, 90, 180, 270, got {angle}")
        turns.append(angle // 90)
    if len(set(turns)) != len(turns):
        raise ArgumentError("rotations", f"expected distinct angles, got {rotations}")
    return tuple(turns)


class Omniglot:
    """All characters of both sets, preprocessed once; :meth:`split` hands out the three splits.

    Attributes:
        pixels: ``(num_chars, 20, 1, size, size)`` float32, ink = 1.0, in ascending ``char_id`` order.
        char_id: ``(num_chars,)`` int64, ascending (1..1623 for the full data).
        character_names: ``"<Alphabet>/characterNN"`` per character.
        sets: the :class:`OmniglotSet` each set was read from (format, path, checksum); empty when the
            arrays came from the cache of preprocessed data (:meth:`load`).
        cached: whether they did.
        seconds: wall time of reading and of resizing.
    """

    def __init__(self, sets: dict[str, OmniglotSet], *, size: int = 28, resize: str = "box"):
        size = integer(size, "size", minimum=1, maximum=IMAGE_SIZE)
        if resize not in METHODS:
            raise ArgumentError("resize", f"expected one of {', '.join(METHODS)}, got {resize!r}")
        start = time.perf_counter()
        ordered = sorted(sets.values(), key=lambda s: s.name)
        char_id = np.concatenate([s.char_id for s in ordered])
        order = np.argsort(char_id, kind="stable")
        if len(np.unique(char_id)) != len(char_id):
            raise DatasetError("omniglot: a char_id occurs in both sets")
        names = sum((s.character_names() for s in ordered), [])
        pixels = np.empty((len(char_id), DRAWERS, 1, size, size), np.float32)
        offset = 0
        for s in ordered:
            # ink = 1: the stored bool is True on the white background
            resized = resize_stack(s.images, size, resize, convert=np.logical_not)
            pixels[offset:offset + len(s.char_id), :, 0] = resized
            offset += len(s.char_id)
        self.pixels = pixels[order]
        self.char_id = char_id[order]
        self.character_names = [names[i] for i in order]
        self.sets = dict(sets)
        self.size, self.resize = size, resize
        self.seconds = {"resize": time.perf_counter() - start}
        self.cached = False

    @classmethod
    def load(cls, data_root=None, *, size: int = 28, resize: str = "box", verify: bool = True,
             cache: bool = True) -> "Omniglot":
        """Read (and with ``verify``, check) both sets under ``<data root>/omniglot/`` and preprocess.

        ``cache`` (default True): keep the preprocessed arrays in the cache of preprocessed data and read
        them back on the next call with the same source bytes and settings
        (:mod:`linmaml.benchmarks.data.cache`; ``$LINMAML_CACHE=off`` turns it off). A hit skips the
        decoding and resizing; the sets' raw images are then not kept (``sets`` is empty) and
        ``cached`` is True.
        """
        size = integer(size, "size", minimum=1, maximum=IMAGE_SIZE)
        if resize not in METHODS:
            raise ArgumentError("resize", f"expected one of {', '.join(METHODS)}, got {resize!r}")
        start = time.perf_counter()
        located = locate(data_root)
        built = {}

        def build():
            read_start = time.perf_counter()
            sets = read_omniglot(data_root, verify=verify)
            read_seconds = time.perf_counter() - read_start
            built["data"] = data = cls(sets, size=size, resize=resize)
            data.seconds["read"] = read_seconds
            return {"pixels": data.pixels, "char_id": data.char_id,
                    "character_names": np.array(data.character_names, dtype=str)}

        sources = [located[name][1] for name in sorted(located)]
        settings = {"size": size, "resize": resize, "verify": bool(verify),
                    "formats": [located[name][0] for name in sorted(located)]}
        arrays, hit = load_or_build("omniglot", sources, settings, build, ("pixels", "char_id", "character_names"),
                                    cache=cache)
        if hit:
            data = cls.__new__(cls)
            data.pixels = arrays["pixels"]
            data.char_id = arrays["char_id"].astype(np.int64)
            data.character_names = [str(n) for n in arrays["character_names"]]
            data.sets, data.size, data.resize, data.seconds = {}, size, resize, {}
            if data.pixels.dtype != np.float32 or data.pixels.shape != (len(data.char_id), DRAWERS, 1, size, size) \
                    or len(data.character_names) != len(data.char_id):
                # an intact entry of another layout (a bug, never a user's doing): rebuild without the cache
                return cls.load(data_root, size=size, resize=resize, verify=verify, cache=False)
        else:
            data = built["data"]
        data.cached = hit
        data.seconds["total"] = time.perf_counter() - start
        return data

    def split(self, split: str, rotations=DEFAULT_ROTATIONS, *, table: dict | None = None) -> FewShotSplit:
        """The :class:`FewShotSplit` of ``split`` (``"train"``, ``"val"`` or ``"test"``).

        Classes are (character, rotation) pairs, characters in ascending char_id, rotations in the
        given order (degrees, counter-clockwise): class ``i·R + r`` is character ``i`` turned by
        ``rotations[r]``. ``table`` overrides the shipped :func:`split_table`.
        """
        if split not in SPLITS:
            raise ArgumentError("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
        turns = rotation_turns(rotations)
        ids = (split_table() if table is None else table)[split]
        position = np.searchsorted(self.char_id, ids)
        position = np.minimum(position, len(self.char_id) - 1)
        absent = ids[self.char_id[position] != ids]
        if absent.size:
            raise DatasetError(f"omniglot: split {split!r} names {absent.size} characters absent from the "
                               f"data (e.g. char_id {absent[0]})")
        count = len(ids)
        sources = np.repeat(np.arange(count), len(turns))
        quarter_turns = np.tile(np.array(turns, np.int64), count)
        names = tuple(f"{ids[s]:04d} {self.character_names[position[s]]}@rot{90 * k}"
                      for s, k in zip(sources, quarter_turns))
        return FewShotSplit("omniglot", split, self.pixels[position], sources, quarter_turns,
                            ids[sources].astype(np.int64), names)


def load_omniglot(split: str, data_root=None, *, size: int = 28, resize: str = "box",
                  rotations=DEFAULT_ROTATIONS, verify: bool = True) -> FewShotSplit:
    """One split of Omniglot (reads and preprocesses both sets; use :class:`Omniglot` for several)."""
    if split not in SPLITS:
        raise ArgumentError("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    return Omniglot.load(data_root, size=size, resize=resize, verify=verify).split(split, rotations)


def check_omniglot(data_root=None) -> dict:
    """Verify everything under ``<data root>/omniglot/`` and report what was found (JSON-ready).

    Raises :class:`DatasetError` on the first problem.
    """
    start = time.perf_counter()
    sets = read_omniglot(data_root, verify=True)
    table = split_table()
    report = {"benchmark": "omniglot", "folder": str(benchmark_dir(FOLDER, data_root)), "sets": {}}
    for name, s in sets.items():
        report["sets"][name] = {
            "format": s.format, "path": str(s.path),
            "checksum": {"algorithm": s.checksum[0], "digest": s.checksum[1], "verified": True} if s.checksum else None,
            "alphabets": len(s.alphabet_names), "characters": int(len(s.char_id)),
            "images": int(s.images.shape[0] * s.images.shape[1]), "ink_fraction": round(s.ink_fraction, 4)}
    all_ids = np.concatenate([s.char_id for s in sets.values()])
    for split, ids in table.items():
        if not np.isin(ids, all_ids).all():
            raise DatasetError(f"omniglot: split {split!r} names characters absent from the data")
    report["images"] = sum(v["images"] for v in report["sets"].values())
    report["splits"] = {split: {"characters": int(len(ids))} for split, ids in table.items()}
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report
