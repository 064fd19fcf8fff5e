"""Episodes: shapes, labels, seeding, fixed evaluation tasks, bad input, and no leakage across splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.episodes import EpisodeSampler, evaluation_tasks

CLASSES, EXAMPLES = 12, 30


def coded_split(split="train", offset=0, turns=None) -> FewShotSplit:
    """Each image is constant = 1000·(source + offset) + example, so every pixel says where it came from."""
    codes = (1000 * (np.arange(CLASSES)[:, None] + offset) + np.arange(EXAMPLES)[None, :]).astype(np.float32)
    pixels = np.broadcast_to(codes[:, :, None, None, None], (CLASSES, EXAMPLES, 2, 3, 3)).copy()
    turns = np.zeros(CLASSES, np.int64) if turns is None else turns
    return FewShotSplit("synthetic", split, pixels, np.arange(CLASSES), turns,
                        np.arange(CLASSES) + offset, tuple(f"c{i + offset}" for i in range(CLASSES)))


def decode(x):
    code = x.reshape(len(x), -1)
    assert (code == code[:, :1]).all()
    return (code[:, 0] // 1000).astype(int), (code[:, 0] % 1000).astype(int)


def test_shapes_labels_and_contents():
    split = coded_split()
    task = EpisodeSampler(split, ways=5, shots=3, query=7, seed=1).task(0)
    assert task.x_support.shape == (15, 2, 3, 3) and task.x_query.shape == (35, 2, 3, 3)
    assert task.x_support.dtype == np.float32 and task.y_support.dtype == np.int64
    assert task.y_support.tolist() == np.repeat(np.arange(5), 3).tolist()
    assert task.y_query.tolist() == np.repeat(np.arange(5), 7).tolist()
    assert len(set(task.classes.tolist())) == 5
    for x, y, examples in ((task.x_support, task.y_support, task.support_examples),
                           (task.x_query, task.y_query, task.query_examples)):
        source, example = decode(x)
        assert (source == task.classes[y]).all()              # every image of label i is class i's
        assert (example == examples.ravel()).all()
    for i in range(5):                                         # support and query never share an image
        assert not set(task.support_examples[i]) & set(task.query_examples[i])
        assert len(set(task.support_examples[i]) | set(task.query_examples[i])) == 10


def test_sampling_is_uniform_enough():
    # each class is drawn with probability ways/CLASSES per task: check counts within 5 standard errors
    sampler = EpisodeSampler(coded_split(), ways=3, shots=1, query=1, seed=0)
    counts = np.bincount(np.concatenate([sampler.task(i).classes for i in range(400)]), minlength=CLASSES)
    p = 3 / CLASSES
    assert np.abs(counts - 400 * p).max() <= 5 * np.sqrt(400 * p * (1 - p))


def test_seeded_and_order_free():
    split = coded_split()
    a = EpisodeSampler(split, 4, 2, 3, seed=5)
    b = EpisodeSampler(split, 4, 2, 3, seed=5)
    c = EpisodeSampler(split, 4, 2, 3, seed=6)
    assert np.array_equal(a.task(9).x_query, b.task(9).x_query)
    assert not all(np.array_equal(a.task(i).classes, c.task(i).classes) for i in range(5))
    batch = a.tasks([3, 9])
    assert np.array_equal(batch.x_support[1], b.task(9).x_support)    # task 9 does not depend on task 3
    meta = a.meta_batch(2, 4)
    assert meta.x_support.shape == (4, 8, 2, 3, 3) and meta.indices.tolist() == [8, 9, 10, 11]
    halves = [a.meta_batch(2, 4, rank=r, world_size=2) for r in (0, 1)]
    assert np.array_equal(np.concatenate([h.x_query for h in halves]), meta.x_query)
    xs, ys, xq, yq = meta.to_torch()
    assert xs.shape == (4, 8, 2, 3, 3) and ys.dtype == torch.int64 and xq.dtype == torch.float32
    with pytest.raises(ValueError, match="^size"):
        a.meta_batch(0, 3, rank=0, world_size=2)


def test_evaluation_tasks_are_fixed():
    split = coded_split("test")
    tasks = evaluation_tasks(split, 5, 1, 2)
    assert len(tasks) == 600
    again = evaluation_tasks(split, 5, 1, 2)
    assert all(np.array_equal(tasks[i].x_query, again[i].x_query) for i in (0, 17, 599))
    assert np.array_equal(tasks[-1].classes, tasks[599].classes)
    training = EpisodeSampler(split, 5, 1, 2, seed=0)                  # same seed, other stream
    assert not all(np.array_equal(tasks[i].classes, training.task(i).classes) for i in range(5))
    groups = list(evaluation_tasks(split, 5, 1, 2, count=7).batches(3))
    assert [len(g) for g in groups] == [3, 3, 1]
    assert np.array_equal(groups[2].x_support[0], tasks[6].x_support)
    with pytest.raises(IndexError):
        tasks[600]


def test_rotations_follow_the_class():
    turns = np.arange(CLASSES) % 4
    pixels = np.random.default_rng(0).random((CLASSES, EXAMPLES, 1, 4, 4)).astype(np.float32)
    split = FewShotSplit("synthetic", "train", pixels, np.arange(CLASSES), turns, np.arange(CLASSES),
                         tuple(map(str, range(CLASSES))))
    task = EpisodeSampler(split, 6, 2, 1, seed=2).task(0)
    for label, cls in enumerate(task.classes):
        for row, e in zip(np.flatnonzero(task.y_support == label), task.support_examples[label]):
            assert np.array_equal(task.x_support[row], np.rot90(pixels[cls, e], cls % 4, axes=(1, 2)))


@pytest.mark.parametrize("kwargs,error,start", [
    ({"ways": 13, "shots": 1}, ValueError, "ways"),
    ({"ways": 1, "shots": 1}, ValueError, "ways"),
    ({"ways": 5, "shots": 16, "query": 15}, ValueError, "shots"),
    ({"ways": 5, "shots": 0}, ValueError, "shots"),
    ({"ways": 5, "shots": 1, "query": 0}, ValueError, "query"),
    ({"ways": 5.0, "shots": 1}, TypeError, "ways"),
    ({"ways": 5, "shots": 1, "seed": -1}, ValueError, "seed"),
])
def test_bad_task_shapes(kwargs, error, start):
    with pytest.raises(error, match=f"^{start}"):
        EpisodeSampler(coded_split(), **kwargs)


def test_no_leakage_across_real_omniglot_splits(omniglot_data):
    splits = {name: omniglot_data.split(name) for name in ("train", "val", "test")}
    ids = {name: set(s.source_ids.tolist()) for name, s in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    # every image a split can show, as bytes, straight from the preprocessed characters (all rotations)
    position = {cid: i for i, cid in enumerate(omniglot_data.char_id.tolist())}
    library = {}
    for name, chars in ids.items():
        base = omniglot_data.pixels[[position[c] for c in sorted(chars)]]
        library[name] = set()
        for k in range(4):
            turned = np.ascontiguousarray(np.rot90(base, k, axes=(-2, -1))).reshape(-1, 1, 28, 28)
            library[name].update(image.tobytes() for image in turned)
    for name, split in splits.items():
        sampler = EpisodeSampler(split, ways=20, shots=5, query=15, seed=11)
        for index in range(10):
            task = sampler.task(index)
            assert set(split.source_ids[task.classes].tolist()) <= ids[name]
            for image in np.concatenate([task.x_support, task.x_query]):
                key = image.tobytes()
                assert key in library[name]
                assert all(key not in library[other] for other in library if other != name)
