"""Few-shot benchmark data: Omniglot, CIFAR-FS and mini-ImageNet, read with Pillow and numpy.

Every benchmark is read from ``<data root>/<benchmark folder>/`` (:mod:`.paths`: the ``data_root``
argument, else ``$LINMAML_DATA``, else ``~/.cache/linmaml``), verified (:mod:`.integrity`: checksums
where known, always counts and shapes; problems raise :class:`DatasetError`, a ``ValueError`` with a
one-line message naming the file), and handed out as :class:`FewShotSplit` objects — images grouped
by class, the form :mod:`linmaml.benchmarks.episodes` samples tasks from.

Your own data (:mod:`.own`): :func:`array_splits` (an .npz or numpy arrays, examples of any shape) and
:func:`folder_splits` (an image folder tree), or ``load_splits("arrays" | "folder", data=PATH)``. The
preprocessed Omniglot and decoded folders are kept in a cache keyed by the sources' bytes (:mod:`.cache`).

Typical use::

    from linmaml.benchmarks.data import load_splits
    splits = load_splits("omniglot", ("train", "val"))          # dict of FewShotSplit
    splits["train"].num_classes, splits["train"].image_shape     # 4400, (1, 28, 28)

Per benchmark (all in float32 [0, 1] once sampled, channels first):

=============  =========================  ==================  ==========================
benchmark      folder under the root      image shape         classes train/val/test
=============  =========================  ==================  ==========================
omniglot       ``omniglot/``              (1, 28, 28), ink=1  (1100/100/423 chars) × 4 rotations
cifar-fs       ``cifar-fs/``              (3, 32, 32)         64 / 16 / 20
mini-imagenet  ``mini-imagenet/``         (3, 84, 84)         64 / 16 / 20
=============  =========================  ==================  ==========================
"""
from __future__ import annotations

import dataclasses

from linmaml.benchmarks.data.cifar_fs import CifarFS, check_cifar_fs, load_cifar_fs
from linmaml.benchmarks.data.fewshot import SPLITS, FewShotSplit, synthetic_splits
from linmaml.benchmarks.data.integrity import DatasetError, file_digest, verify_file
from linmaml.benchmarks.data.mini_imagenet import check_mini_imagenet, load_mini_imagenet
from linmaml.benchmarks.data import omniglot, own
from linmaml.benchmarks.data.omniglot import Omniglot, check_omniglot, load_omniglot
from linmaml.benchmarks.data.own import array_splits, folder_splits
from linmaml.benchmarks.data.paths import default_data_root, resolve_data_root, user_cache_dir
from linmaml.errors import ArgumentError, ArgumentTypeError

#: Benchmark names accepted by :func:`load_splits` and the CLI: the built-in benchmarks, then your own
#: data (:mod:`.own`): ``"arrays"`` (an .npz of arrays) and ``"folder"`` (an image folder tree), then
#: ``"synthetic"``: a tiny set made in memory (:data:`SYNTHETIC`), no files, for trying the commands.
BUILT_IN = ("omniglot", "cifar-fs", "mini-imagenet")
OWN_DATA = ("arrays", "folder")
GENERATED = ("synthetic",)
BENCHMARKS = BUILT_IN + OWN_DATA + GENERATED

#: The ``"synthetic"`` benchmark: :func:`.fewshot.synthetic_splits` with these arguments, i.e. 20 / 10
#: / 10 train / val / test classes of 20 noisy (1, 12, 12) images each (a fixed pattern per class), so
#: that tasks of the usual 5-way 1- or 5-shot size with 15 query examples per class fit, as on Omniglot
#: (20 images per class). Easy (a 5-way 1-shot run validates above 90 % after 3 iterations): a smoke test
#: of the commands, whose accuracies say nothing about a method.
SYNTHETIC = {"size": 12, "classes": (20, 10, 10), "examples": 20, "seed": 0}

__all__ = ["BENCHMARKS", "BUILT_IN", "GENERATED", "OWN_DATA", "SYNTHETIC", "array_splits", "folder_splits", "SPLITS", "CifarFS", "DatasetError", "FewShotSplit", "Omniglot", "check_dataset",
           "check_cifar_fs", "check_mini_imagenet", "check_omniglot", "default_data_root", "file_digest",
           "load_cifar_fs", "load_mini_imagenet", "load_omniglot", "load_splits", "resolve_data_root",
           "user_cache_dir", "verify_file"]


def load_splits(benchmark: str, splits=SPLITS, data_root=None, *, verify: bool = True,
                **options) -> dict[str, FewShotSplit]:
    """Load several splits of one benchmark, reading the underlying files once.

    ``splits``: names among ``"train"``, ``"val"``, ``"test"`` (a single name is accepted too).
    ``options`` go to the benchmark's preprocessing — Omniglot: ``size=28``, ``resize="box"``
    (or ``"area"``), ``rotations=(0, 90, 180, 270)`` (degrees; ``(0,)`` for none), ``class_split="standard"``
    (or ``"alphabets"``: :func:`.omniglot.alphabet_split_table`). Returns
    ``{split: FewShotSplit}`` in the order asked.

    ``benchmark="synthetic"`` (no options; ``data_root`` unused) makes :data:`SYNTHETIC`'s splits in memory.

    Your own data (``benchmark="arrays"`` or ``"folder"``, :mod:`.own`; ``data_root`` unused): options
    ``data`` (the .npz file or the image folder, required), ``name`` (default: the file's stem or the
    folder's name), ``split_dir`` (a folder of split files ``train.txt``, ``val.txt``, ``test.txt``)
    and, for a folder, ``cache`` (default True).
    """
    if benchmark not in BENCHMARKS:
        raise ArgumentError("benchmark", f"expected one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    for split in splits:
        if split not in SPLITS:
            raise ArgumentError("splits", f"expected names among {', '.join(SPLITS)}, got {split!r}")
    allowed = {"omniglot": {"size", "resize", "rotations", "class_split", "cache"},
               "arrays": {"data", "name", "split_dir"}, "folder": {"data", "name", "split_dir", "cache"}
               }.get(benchmark, set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ArgumentTypeError(unknown[0], f"not an option of {benchmark} (options: {', '.join(sorted(allowed)) or 'none'})")
    if benchmark in GENERATED:
        made = synthetic_splits(**SYNTHETIC)  # posed as Omniglot classes; named for what they are
        return {split: dataclasses.replace(made[split], benchmark=benchmark) for split in splits}
    if benchmark in OWN_DATA:
        if options.get("data") is None:
            raise ArgumentError("data", f"benchmark {benchmark!r} reads your own data: pass the "
                                        f"{'.npz file' if benchmark == 'arrays' else 'image folder'} (data=...)")
        data = options.pop("data")
        if benchmark == "arrays":
            return own.array_splits(data, splits=splits, **options)
        return own.folder_splits(data, splits=splits, **options)
    if benchmark == "omniglot":
        rotations = options.pop("rotations", None)
        class_split = options.pop("class_split", "standard")
        table = omniglot.split_tables(class_split)  # a bad name is refused before the data is read
        data = Omniglot.load(data_root, verify=verify, **options)  # cache=True: the preprocessed-data cache
        kwargs = {"table": table} if rotations is None else {"rotations": rotations, "table": table}
        return {split: data.split(split, **kwargs) for split in splits}
    if benchmark == "cifar-fs":
        data = CifarFS.load(data_root, verify=verify)
        return {split: data.split(split) for split in splits}
    return {split: load_mini_imagenet(split, data_root, verify=verify) for split in splits}


def check_dataset(benchmark: str, data_root=None) -> dict:
    """Verify one benchmark's files and return what was found (counts, checksums); DatasetError if not."""
    if benchmark not in BUILT_IN:
        raise ArgumentError("benchmark", f"expected one of {', '.join(BUILT_IN)}, got {benchmark!r}")
    return {"omniglot": check_omniglot, "cifar-fs": check_cifar_fs,
            "mini-imagenet": check_mini_imagenet}[benchmark](data_root)
