"""Few-shot evaluation of a training checkpoint: adapt on each task's support set, score its query
set, report mean ± 95% CI (:mod:`linmaml.benchmarks.scoring` holds the protocol).

The tasks are a fixed, numbered set (:func:`linmaml.benchmarks.episodes.evaluation_tasks`, 600 by
default, task seed 0), so every run and every checkpoint is scored on the same tasks, with 15
query examples per class unless told otherwise. The scoring runs through the run's own engine
strategy (``batching``/``tasks_per_chunk`` of its config), which changes nothing beyond rounding.
"""
from __future__ import annotations

import time
from pathlib import Path

from linmaml import _validate
from linmaml.benchmarks import checkpoint, distributed, episodes
from linmaml.benchmarks.config import TrainConfig, build_from_config, make_engine
from linmaml.benchmarks.scoring import mean_ci95, score_tasks, summarize

__all__ = ["evaluate_checkpoint", "checkpoint_file", "mean_ci95", "score_tasks", "summarize"]


def checkpoint_file(path) -> Path:
    """The checkpoint a path names: a file as is; a training folder's ``best.pt`` (else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in (checkpoint.BEST, checkpoint.LAST, checkpoint.LAST_PREV):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"checkpoint: {path} holds no {checkpoint.BEST} or {checkpoint.LAST}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    return path


def evaluate_checkpoint(path, *, tasks: int = 600, steps: int | None = None, query: int = 15, split: str = "test",
                        task_seed: int = 0, data_root=None, device: str = "auto", splits=None) -> dict:
    """Score a training checkpoint on the fixed evaluation tasks of ``split``.

    ``path``: a ``.pt`` written by ``linmaml train`` or a training folder (its ``best.pt``).
    ``steps``: inner steps at test time (default: the run's ``test_steps``). ``splits`` may supply
    ``{split: FewShotSplit}`` directly instead of reading the benchmark from ``data_root``.
    Returns ``{"accuracy", "ci95", "loss", "loss_ci95", "tasks", "nonfinite_tasks", "checkpoint",
    "iteration", "settings", "seconds"}``.
    """
    tasks = _validate.integer(tasks, "tasks", minimum=2)
    query = _validate.integer(query, "query", minimum=1)
    task_seed = _validate.integer(task_seed, "task_seed", minimum=0)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split: expected train, val or test, got {split!r}")
    file = checkpoint_file(path)
    payload = checkpoint.load(file)
    if not isinstance(payload, dict) or "config" not in payload or "learner" not in payload:
        raise ValueError(f"checkpoint: {file} was not written by linmaml train")
    config = TrainConfig.from_dict(payload["config"])
    steps = config.test_steps if steps is None else _validate.integer(steps, "steps", minimum=1)
    dev = distributed.resolve_device(device)
    if splits is None:
        from linmaml.benchmarks.data import load_splits  # the data package is loaded only when needed

        splits = load_splits(config.benchmark, (split,), data_root)
    if split not in splits:
        raise ValueError(f"splits: no {split!r} split given")
    task_set = episodes.evaluation_tasks(splits[split], config.ways, config.shots, query, count=tasks, seed=task_seed)
    learner = build_from_config(config, tuple(payload["image_shape"]))
    learner.load_state_dict(payload["learner"])
    learner.to(device=dev, dtype=config.torch_dtype)
    start = time.perf_counter()
    accuracies, losses = score_tasks(make_engine(learner, config), task_set, steps=steps, device=dev,
                                     dtype=config.torch_dtype)
    result = summarize(accuracies, losses)
    result.update({
        "checkpoint": str(file), "iteration": int(payload.get("iteration", -1)),
        "settings": {"benchmark": config.benchmark, "split": split, "ways": config.ways, "shots": config.shots,
                     "query": query, "steps": steps, "task_seed": task_seed, "algo": config.algo,
                     "transform": config.transform, "linnet": config.linnet, "layers": config.layers,
                     "hidden": config.hidden, "device": str(dev)},
        "seconds": time.perf_counter() - start})
    return result
