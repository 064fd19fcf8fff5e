"""N-way K-shot episodes drawn from one split's own classes, seeded and reproducible.

A task (episode) takes ``ways`` distinct classes of a :class:`~linmaml.benchmarks.data.FewShotSplit`
at random, relabels them ``0..ways-1`` in the order drawn, and draws for each class ``shots +
query`` distinct examples: the first ``shots`` form the support set, the other ``query`` the query
set (``query`` is its own parameter, 15 by default, the usual protocol). Classes come only from the
split the sampler was given, so meta-training never sees a test class.

Reproducibility: task ``i`` of a sampler is a pure function of ``(seed, stream, i)`` (its generator is
``numpy.random.default_rng([seed, stream, i])``), so training iteration ``t`` with meta-batch ``M``
uses tasks ``t·M .. t·M+M-1`` whatever ran before — resuming, or splitting a meta-batch across
processes, gives the same tasks. Training samplers use stream 0 and the fixed evaluation tasks
(:func:`evaluation_tasks`, 600 by default) stream 1, so the two never coincide for the same seed.

Output layout (numpy; :meth:`Episode.to_torch` converts):

- ``x_support`` ``(N·K, C, H, W)`` float32, ``y_support`` ``(N·K,)`` int64 in ``0..N-1``,
- ``x_query`` ``(N·Q, C, H, W)`` float32, ``y_query`` ``(N·Q,)`` int64,

grouped by class (rows ``i·K .. i·K+K-1`` have label ``i``). :class:`EpisodeBatch` stacks ``M``
tasks along a new leading axis: ``(M, N·K, C, H, W)`` and so on.

``shuffle_support=True`` (a sampler's option; training with inner minibatches, ``linmaml train
--inner-batch``): the support rows are then put in a random order, ``x_support[j]`` being row
``support_order[j]`` of the class-grouped layout, drawn by the task's own generator after the
examples (so the task's examples, its query set and every other task are those of the unshuffled
sampler). Inner step k then takes the next consecutive rows of it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from linmaml._validate import integer
from linmaml.benchmarks.data.fewshot import FewShotSplit
from linmaml.errors import ArgumentError, ArgumentTypeError

#: Generator streams: training tasks and the fixed evaluation tasks never share a generator.
TRAIN_STREAM = 0
EVAL_STREAM = 1
#: The usual protocol: 15 query examples per class, 600 evaluation tasks.
DEFAULT_QUERY = 15
DEFAULT_EVAL_TASKS = 600


@dataclasses.dataclass(frozen=True, eq=False)
class Episode:
    """One N-way K-shot task with Q queries per class (shapes in the module docstring).

    ``classes`` ``(N,)``: the split's class index behind each label; ``support_examples`` ``(N, K)``
    and ``query_examples`` ``(N, Q)``: the example indices within each class (for audits and tests);
    ``support_order`` ``(N·K,)``: the permutation of the class-grouped support rows when the sampler
    shuffles them (module docstring), else None.
    """

    x_support: np.ndarray
    y_support: np.ndarray
    x_query: np.ndarray
    y_query: np.ndarray
    classes: np.ndarray
    support_examples: np.ndarray
    query_examples: np.ndarray
    support_order: np.ndarray | None = None

    def to_torch(self, device=None, dtype=None):
        """``(x_support, y_support, x_query, y_query)`` as torch tensors (the task convention)."""
        return _to_torch((self.x_support, self.y_support, self.x_query, self.y_query), device, dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodeBatch:
    """``M`` tasks stacked: ``x_support (M, N·K, C, H, W)``, ``y_support (M, N·K)``, ``x_query
    (M, N·Q, C, H, W)``, ``y_query (M, N·Q)``; ``classes (M, N)``; ``indices (M,)`` the task numbers."""

    x_support: np.ndarray
    y_support: np.ndarray
    x_query: np.ndarray
    y_query: np.ndarray
    classes: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def to_torch(self, device=None, dtype=None):
        """``(x_support, y_support, x_query, y_query)`` as torch tensors with the leading task axis."""
        return _to_torch((self.x_support, self.y_support, self.x_query, self.y_query), device, dtype)


def _to_torch(arrays, device, dtype):
    xs, ys, xq, yq = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    if dtype is not None:
        xs, xq = xs.to(dtype), xq.to(dtype)
    if device is not None:
        xs, ys, xq, yq = (t.to(device, non_blocking=True) for t in (xs, ys, xq, yq))
    return xs, ys, xq, yq


def check_task_shape(split: FewShotSplit, ways, shots, query) -> tuple[int, int, int]:
    """Validate ``ways``, ``shots``, ``query`` against ``split``; return them as ints.

    ``ValueError`` naming the argument when there are more ways than the split has classes, or when
    ``shots + query`` exceeds the examples a class holds.
    """
    if not isinstance(split, FewShotSplit):
        raise ArgumentTypeError("split", f"expected a FewShotSplit, got {type(split).__name__}")
    ways = integer(ways, "ways", minimum=2)
    shots = integer(shots, "shots", minimum=1)
    query = integer(query, "query", minimum=1)
    if ways > split.num_classes:
        raise ArgumentError("ways", f"expected at most {split.num_classes} (the classes of {split.name}), got {ways}")
    if shots + query > split.examples_per_class:
        raise ArgumentError("shots", f"shots + query = {shots} + {query} exceeds the {split.examples_per_class} "
                         f"examples each class of {split.name} holds")
    return ways, shots, query


def draw_task(split: FewShotSplit, ways: int, shots: int, query: int, rng: np.random.Generator,
              shuffle_support: bool = False) -> Episode:
    """Draw one task from ``split`` with generator ``rng`` (arguments already validated);
    ``shuffle_support``: the support rows in an order drawn last (module docstring)."""
    classes = rng.choice(split.num_classes, size=ways, replace=False)
    # a random ordering of each class's examples; its first shots + query are the task's
    if split.counts is None:
        picks = np.argsort(rng.random((ways, split.examples_per_class)), axis=1)[:, :shots + query]
    else:  # classes of own data hold different counts: the padding sorts last and is never picked
        keys = rng.random((ways, split.pixels.shape[1]))
        keys[np.arange(keys.shape[1])[None, :] >= split.class_counts(classes)[:, None]] = np.inf
        picks = np.argsort(keys, axis=1, kind="stable")[:, :shots + query]
    images = split.images(classes, picks)
    rest = images.shape[2:]
    labels = np.arange(ways, dtype=np.int64)
    x_support, y_support, order = images[:, :shots].reshape((ways * shots,) + rest), np.repeat(labels, shots), None
    if shuffle_support:  # drawn after everything else, so the task's examples are the unshuffled ones
        order = rng.permutation(ways * shots)
        x_support, y_support = x_support[order], y_support[order]
    return Episode(x_support, y_support,
                   images[:, shots:].reshape((ways * query,) + rest), np.repeat(labels, query),
                   classes.astype(np.int64), picks[:, :shots].copy(), picks[:, shots:].copy(), order)


def stack(episodes, indices) -> EpisodeBatch:
    """Stack tasks of equal shape into an :class:`EpisodeBatch`."""
    episodes = list(episodes)
    if not episodes:
        raise ArgumentError("episodes", "expected at least one task")
    return EpisodeBatch(np.stack([e.x_support for e in episodes]), np.stack([e.y_support for e in episodes]),
                        np.stack([e.x_query for e in episodes]), np.stack([e.y_query for e in episodes]),
                        np.stack([e.classes for e in episodes]), np.asarray(indices, dtype=np.int64))


class EpisodeSampler:
    """Tasks of one shape from one split; task ``i`` depends only on ``(seed, stream, i)``.

    ``EpisodeSampler(split, ways, shots, query=15, seed=0)``; :meth:`task` gives one task,
    :meth:`tasks` any list of them stacked, :meth:`meta_batch` the ``M`` tasks of a training
    iteration. ``shuffle_support``: each task's support rows in a random order (module docstring).
    Raises ``ValueError`` (naming the argument) for impossible shapes.
    """

    def __init__(self, split: FewShotSplit, ways: int, shots: int, query: int = DEFAULT_QUERY, *,
                 seed: int = 0, stream: int = TRAIN_STREAM, shuffle_support: bool = False):
        self.ways, self.shots, self.query = check_task_shape(split, ways, shots, query)
        if not isinstance(shuffle_support, bool):
            raise ArgumentTypeError("shuffle_support", f"expected True or False, got {shuffle_support!r}")
        self.shuffle_support = shuffle_support
        self.split = split
        self.seed = integer(seed, "seed", minimum=0)
        self.stream = integer(stream, "stream", minimum=0)

    def task(self, index: int) -> Episode:
        """Task number ``index`` (>= 0)."""
        index = integer(index, "index", minimum=0)
        rng = np.random.default_rng([self.seed, self.stream, index])
        return draw_task(self.split, self.ways, self.shots, self.query, rng, self.shuffle_support)

    def tasks(self, indices) -> EpisodeBatch:
        """The tasks with the given numbers, stacked."""
        indices = [integer(i, "indices", minimum=0) for i in np.asarray(indices).ravel().tolist()]
        return stack((self.task(i) for i in indices), indices)

    def meta_batch(self, iteration: int, size: int, *, rank: int = 0, world_size: int = 1) -> EpisodeBatch:
        """The tasks of training iteration ``iteration`` with meta-batch ``size``: numbers
        ``iteration·size .. iteration·size+size-1``. With ``world_size`` processes, process ``rank``
        gets its contiguous share of them (``size`` must divide evenly)."""
        iteration = integer(iteration, "iteration", minimum=0)
        size = integer(size, "size", minimum=1)
        world_size = integer(world_size, "world_size", minimum=1)
        rank = integer(rank, "rank", minimum=0, maximum=world_size - 1)
        if size % world_size:
            raise ArgumentError("size", f"the meta-batch {size} does not split evenly over {world_size} processes")
        share = size // world_size
        start = iteration * size + rank * share
        return self.tasks(range(start, start + share))


class EvaluationTasks:
    """A fixed, numbered set of tasks (default 600) so that accuracies compare across runs.

    A sequence: ``len(tasks)``, ``tasks[i]`` (an :class:`Episode`), iteration, and
    :meth:`batches` for stacked groups. Tasks are made on demand (cheap) and always identical for
    the same split, shape, count and seed.
    """

    def __init__(self, split: FewShotSplit, ways: int, shots: int, query: int = DEFAULT_QUERY, *,
                 count: int = DEFAULT_EVAL_TASKS, seed: int = 0):
        self.count = integer(count, "count", minimum=1)
        self.sampler = EpisodeSampler(split, ways, shots, query, seed=seed, stream=EVAL_STREAM)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Episode:
        index = integer(index, "index")
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(f"index: expected 0..{self.count - 1}, got {index}")
        return self.sampler.task(index)

    def __iter__(self):
        return (self.sampler.task(i) for i in range(self.count))

    def batches(self, size: int):
        """Iterate over :class:`EpisodeBatch` groups of ``size`` tasks (the last may be smaller)."""
        size = integer(size, "size", minimum=1)
        for start in range(0, self.count, size):
            yield self.sampler.tasks(range(start, min(start + size, self.count)))


def evaluation_tasks(split: FewShotSplit, ways: int, shots: int, query: int = DEFAULT_QUERY, *,
                     count: int = DEFAULT_EVAL_TASKS, seed: int = 0) -> EvaluationTasks:
    """The fixed evaluation tasks of ``split`` (see :class:`EvaluationTasks`)."""
    return EvaluationTasks(split, ways, shots, query, count=count, seed=seed)
