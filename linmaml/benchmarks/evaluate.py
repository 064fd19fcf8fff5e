"""Few-shot evaluation: adapt on each task's support set, score its query set, report mean ± 95% CI.

The protocol: a fixed, numbered set of tasks (:func:`linmaml.benchmarks.episodes.evaluation_tasks`,
600 by default, task seed 0, so every run and every checkpoint is scored on the same tasks); for each
task the learner takes ``steps`` inner steps on the support set and is scored on the query set
(15 examples per class unless told otherwise). The reported accuracy is the mean of the per-task
query accuracies, and ``ci95 = 1.96 · s / √n`` with ``s`` the sample standard deviation (ddof 1)
of the ``n`` per-task accuracies — the normal-approximation interval used throughout the few-shot
literature. BatchNorm normalises with the statistics of the batch it sees (support set while
adapting, query set when scoring), exactly as in training.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from linmaml import _validate
from linmaml.benchmarks.models import to_channels_last

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def mean_ci95(values) -> tuple[float, float]:
    """``(mean, 1.96 · std(ddof=1) / √n)`` of a 1-d sequence of at least two finite numbers."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size < 2:
        raise ValueError(f"values: a confidence interval needs at least 2 tasks, got {values.size}")
    return float(values.mean()), float(Z95 * values.std(ddof=1) / math.sqrt(values.size))


@contextlib.contextmanager
def _no_second_order(learner):
    """Adaptation at test time needs inner-loop values only, not a graph to differentiate through
    them: treating inner gradients as constants (first order) gives identical adapted weights at a
    fraction of the memory."""
    previous = getattr(learner, "first_order", None)
    if previous is not None:
        learner.first_order = True
    try:
        yield
    finally:
        if previous is not None:
            learner.first_order = previous


def score_task(learner, x_support, y_support, x_query, y_query, steps: int | None = None) -> tuple[float, float]:
    """Adapt ``learner`` on one task's support set with ``steps`` inner steps (None: the learner's
    own) and return ``(query accuracy, query cross-entropy)``. Tensors as in the task convention:
    ``x (n, C, H, W)``, ``y (n,)`` int64 labels."""
    with _no_second_order(learner), torch.enable_grad():
        fast = learner.adapt(x_support, y_support, F.cross_entropy, steps=steps)
    with torch.no_grad():
        fast = {name: value.detach() for name, value in fast.items()}
        logits = learner(x_query, params=fast)
        loss = F.cross_entropy(logits, y_query)
        accuracy = (logits.argmax(dim=1) == y_query).double().mean()
    return float(accuracy), float(loss)


def score_tasks(learner, tasks, indices=None, *, steps: int | None = None, device=None, dtype=None,
                should_stop=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-task ``(accuracies, losses)`` (float64 arrays) over ``tasks[i]`` for ``i`` in ``indices``
    (default: all). ``tasks`` is a sequence of episodes with ``to_torch(device, dtype)``.
    ``should_stop()``, polled between tasks, may end the loop early (shorter arrays)."""
    indices = range(len(tasks)) if indices is None else indices
    accuracies, losses = [], []
    for i in indices:
        if should_stop is not None and should_stop():
            break
        xs, ys, xq, yq = tasks[i].to_torch(device, dtype)
        if xs.ndim == 4:  # images: the CNN runs faster channels-last (models.to_channels_last)
            xs, xq = to_channels_last(xs), to_channels_last(xq)
        accuracy, loss = score_task(learner, xs, ys, xq, yq, steps)
        accuracies.append(accuracy)
        losses.append(loss)
    return np.asarray(accuracies, dtype=np.float64), np.asarray(losses, dtype=np.float64)


def summarize(accuracies, losses) -> dict:
    """The JSON-ready summary of per-task scores: accuracy, ci95, loss, loss_ci95, tasks, nonfinite_tasks.

    A task whose adapted query loss is not finite (the inner loop diverged) is counted in
    ``nonfinite_tasks``; the mean loss and its interval are then ``None`` rather than a NaN that
    would make the JSON invalid and the number meaningless. Its accuracy still counts as scored.
    """
    accuracy, ci95 = mean_ci95(accuracies)
    nonfinite = int(np.count_nonzero(~np.isfinite(np.asarray(losses, dtype=np.float64))))
    loss, loss_ci95 = mean_ci95(losses) if nonfinite == 0 else (None, None)
    return {"accuracy": accuracy, "ci95": ci95, "loss": loss, "loss_ci95": loss_ci95, "tasks": int(len(accuracies)),
            "nonfinite_tasks": nonfinite}


def checkpoint_file(path) -> Path:
    """The checkpoint a path names: a file as is; a training folder's ``best.pt`` (else ``last.pt``)."""
    from linmaml.benchmarks import checkpoint

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
    Returns ``{"accuracy", "ci95", "loss", "loss_ci95", "tasks", "checkpoint", "iteration",
    "settings", "seconds"}``.
    """
    from linmaml.benchmarks import checkpoint, distributed, episodes
    from linmaml.benchmarks.train import TrainConfig, build_from_config

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
        from linmaml.benchmarks.data import load_splits

        splits = load_splits(config.benchmark, (split,), data_root)
    if split not in splits:
        raise ValueError(f"splits: no {split!r} split given")
    task_set = episodes.evaluation_tasks(splits[split], config.ways, config.shots, query, count=tasks, seed=task_seed)
    learner = build_from_config(config, tuple(payload["image_shape"]))
    learner.load_state_dict(payload["learner"])
    learner.to(device=dev, dtype=config.torch_dtype)
    start = time.perf_counter()
    accuracies, losses = score_tasks(learner, task_set, steps=steps, device=dev, dtype=config.torch_dtype)
    result = summarize(accuracies, losses)
    result.update({
        "checkpoint": str(file), "iteration": int(payload.get("iteration", -1)),
        "settings": {"benchmark": config.benchmark, "split": split, "ways": config.ways, "shots": config.shots,
                     "query": query, "steps": steps, "task_seed": task_seed, "algo": config.algo,
                     "transform": config.transform, "linnet": config.linnet, "layers": config.layers,
                     "hidden": config.hidden, "device": str(dev)},
        "seconds": time.perf_counter() - start})
    return result
