"""The common form of every benchmark split: images grouped by class, ready for episode sampling.

A :class:`FewShotSplit` holds one split (``"train"``, ``"val"`` or ``"test"``) of one benchmark. It
owns only its own images: a split physically cannot hand out another split's pictures.

Layout conventions (shared by all benchmarks):

- ``pixels`` has shape ``(S, E, C, H, W)``: ``S`` *source* classes (Omniglot characters, CIFAR-100
  fine labels, ImageNet synsets) of ``E`` examples each, channels first. dtype float32 (values used
  as they are; Omniglot: ink = 1.0, background = 0.0) or uint8 (scaled by 1/255 on the way out).
  Your own data (:mod:`.own`) may have any example shape after ``(S, E)``: ``(C, H, W)`` images of
  any size and channels, or ``(D,)`` feature vectors.
- ``counts`` (optional, ``(S,)`` int64): the examples source class ``s`` really holds, in
  ``pixels[s, :counts[s]]`` (the rest is padding that is never sampled); None when every class holds
  all ``E`` (every built-in benchmark). ``examples_per_class`` is then the smallest count.
- A *class* of the split is a source class plus a rotation: ``sources[c]`` indexes axis 0 of
  ``pixels`` and ``quarter_turns[c]`` in {0, 1, 2, 3} rotates all its images by that many quarter
  turns counter-clockwise (``numpy.rot90`` over the last two axes). Without rotations, classes and
  sources coincide. The rotation is a fixed property of the class, stored per class, never drawn
  inside a sampler.
- ``source_ids[c]`` is the dataset-wide identity of the source (Omniglot ``char_id`` 1..1623, the
  CIFAR-100 fine-label index, the position of a synset in sorted order ...), so the class sets of
  different splits can be compared: they are disjoint.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from linmaml.errors import ArgumentError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class FewShotSplit:
    """One split of a few-shot benchmark (see the module docstring for the conventions).

    Attributes:
        benchmark: ``"omniglot"``, ``"cifar-fs"`` or ``"mini-imagenet"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        pixels: ``(S, E, C, H, W)`` float32 or uint8 images of the split's source classes (own data:
            ``(S, E, *example_shape)``).
        sources: ``(num_classes,)`` int64, index into ``pixels`` axis 0 for each class.
        quarter_turns: ``(num_classes,)`` int64 in 0..3, the fixed rotation of each class.
        source_ids: ``(num_classes,)`` int64, dataset-wide id of each class's source.
        class_names: ``num_classes`` readable names, e.g. ``"Greek/character03@rot90"``.
        counts: ``(S,)`` int64 examples held per source class, or None (all ``E``; module docstring).
    """

    benchmark: str
    split: str
    pixels: np.ndarray
    sources: np.ndarray
    quarter_turns: np.ndarray
    source_ids: np.ndarray
    class_names: tuple
    counts: np.ndarray | None = None

    def __post_init__(self):
        if self.pixels.ndim < 3:
            raise ArgumentError("pixels", f"expected shape (S, E, C, H, W) or (S, E, *example_shape), got {self.pixels.shape}")
        if self.pixels.dtype not in (np.float32, np.uint8):
            raise ArgumentError("pixels", f"expected float32 or uint8, got {self.pixels.dtype}")
        n = len(self.sources)
        for name in ("quarter_turns", "source_ids"):
            if len(getattr(self, name)) != n:
                raise ArgumentError(name, f"expected {n} entries (one per class), got {len(getattr(self, name))}")
        if len(self.class_names) != n:
            raise ArgumentError("class_names", f"expected {n} names, got {len(self.class_names)}")
        if n and (self.sources.min() < 0 or self.sources.max() >= self.pixels.shape[0]):
            raise ArgumentError("sources", "index out of range of pixels")
        if n and (self.quarter_turns.min() < 0 or self.quarter_turns.max() > 3):
            raise ArgumentError("quarter_turns", "expected values in 0..3")
        if self.quarter_turns.any() and (self.pixels.ndim < 4 or self.pixels.shape[-1] != self.pixels.shape[-2]):
            raise ArgumentError("quarter_turns", "rotations need square images")
        if self.counts is not None:
            counts = np.asarray(self.counts)
            if counts.shape != self.pixels.shape[:1] or counts.min(initial=1) < 1 \
                    or counts.max(initial=0) > self.pixels.shape[1]:
                raise ArgumentError("counts", f"expected {self.pixels.shape[0]} counts in 1..{self.pixels.shape[1]}")

    @property
    def name(self) -> str:
        """``"<benchmark>/<split>"``, used in messages."""
        return f"{self.benchmark}/{self.split}"

    @property
    def num_classes(self) -> int:
        """Number of classes (source classes × rotations)."""
        return len(self.sources)

    @property
    def examples_per_class(self) -> int:
        """Images per class: the same for every class of a built-in benchmark; with ``counts``, the
        fewest any class of the split holds (what every task can rely on)."""
        if self.counts is None:
            return self.pixels.shape[1]
        return int(np.asarray(self.counts)[self.sources].min()) if len(self.sources) else 0

    def class_counts(self, classes) -> np.ndarray:
        """``(n,)`` int64: the examples each of ``classes`` holds (all ``E`` without ``counts``)."""
        classes = np.asarray(classes, dtype=np.int64)
        if self.counts is None:
            return np.full(classes.shape, self.pixels.shape[1], np.int64)
        return np.asarray(self.counts, np.int64)[self.sources[classes]]

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)`` of one image (own data: the shape of one example, e.g. ``(D,)``)."""
        return tuple(self.pixels.shape[2:])

    def images(self, classes, examples) -> np.ndarray:
        """Images of the given classes as float32 ``(n, m, C, H, W)``.

        ``classes``: ``(n,)`` class indices in ``0..num_classes-1``; ``examples``: ``(n, m)`` example
        indices in ``0..examples_per_class-1`` (row ``i`` for class ``classes[i]``). Each class is
        rotated by its own ``quarter_turns``.
        """
        classes = np.asarray(classes, dtype=np.int64)
        examples = np.asarray(examples, dtype=np.int64)
        if classes.ndim != 1 or examples.ndim != 2 or len(examples) != len(classes):
            raise ArgumentError("examples", f"expected shape ({len(classes)}, m) for classes of shape "
                                            f"{classes.shape}, got {examples.shape}")
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ArgumentError("classes", f"expected indices in 0..{self.num_classes - 1} of {self.name}")
        if examples.size and (examples.min() < 0 or (examples >= self.class_counts(classes)[:, None]).any()):
            raise ArgumentError("examples", f"expected indices below each class's count of examples in {self.name}")
        out = self.pixels[self.sources[classes][:, None], examples]
        if out.dtype == np.uint8:
            out = out.astype(np.float32) * np.float32(1 / 255)
        else:
            out = out.astype(np.float32, copy=True)
        turns = self.quarter_turns[classes]
        for k in (1, 2, 3):
            rows = np.flatnonzero(turns == k)
            if rows.size:
                out[rows] = np.rot90(out[rows], k, axes=(-2, -1))
        return out

    def class_images(self, index: int) -> np.ndarray:
        """All ``E`` images of class ``index`` as float32 ``(E, C, H, W)`` (with ``counts``: its own count)."""
        examples = np.arange(int(self.class_counts([index])[0]))[None, :]
        return self.images([index], examples)[0]

    def describe(self) -> dict:
        """A small JSON-ready summary: counts, shapes, number of source classes."""
        return {"benchmark": self.benchmark, "split": self.split, "classes": self.num_classes,
                "source_classes": int(len(np.unique(self.source_ids))),
                "examples_per_class": self.examples_per_class, "image_shape": list(self.image_shape),
                **({} if self.counts is None else {"examples": int(self.class_counts(range(self.num_classes)).sum())}),
                "rotations": sorted({int(k) * 90 for k in np.unique(self.quarter_turns)})}


def synthetic_splits(size: int = 12, classes: tuple[int, int] = (12, 8), examples: int = 8,
                     seed: int = 0) -> dict[str, FewShotSplit]:
    """Tiny learnable ``{"train", "val"}`` splits for smoke runs and tests (``train(..., splits=...)``):
    each class a fixed random ``(1, size, size)`` pattern in [0, 1] plus per-example Gaussian noise of
    standard deviation 0.3 (clipped to [0, 1]), float32; ``classes`` per split, ``examples`` per class,
    seeded (three counts in ``classes`` add a ``"test"`` split). Posed as Omniglot classes (one
    channel, no rotation), with distinct source ids."""
    rng = np.random.default_rng(seed)
    out, offset = {}, 0
    for name, count in zip(("train", "val", "test"), classes):
        prototypes = rng.random((count, 1, 1, size, size)).astype(np.float32)
        pixels = np.clip(prototypes + 0.3 * rng.standard_normal((count, examples, 1, size, size)), 0, 1)
        out[name] = FewShotSplit("omniglot", name, pixels.astype(np.float32), np.arange(count),
                                 np.zeros(count, np.int64), offset + np.arange(count),
                                 tuple(f"c{offset + i}" for i in range(count)))
        offset += count
    return out


def noise_splits(names=("train", "val", "test"), classes: int = 6, examples: int = 20, size: int = 28,
                 seed: int = 0) -> dict[str, FewShotSplit]:
    """Pure-noise ``{name: FewShotSplit}`` posed as Omniglot (``(1, size, size)`` uniform pixels in
    [0, 1], float32; ``classes`` per split with ``examples`` each — 20 is Omniglot's own count — and
    distinct source ids per split): nothing to learn, for tests of what a command says and writes."""
    rng = np.random.default_rng(seed)
    return {name: FewShotSplit("omniglot", name, rng.random((classes, examples, 1, size, size)).astype(np.float32),
                               np.arange(classes), np.zeros(classes, np.int64), 10 * k + np.arange(classes),
                               tuple(map(str, range(classes))))
            for k, name in enumerate(names)}
