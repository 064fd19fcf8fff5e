"""Scoring a learner on a fixed set of tasks, shared by validation (training) and ``linmaml evaluate``.

For each task the learner takes ``steps`` inner steps on the support set and is scored on the query
set, through :meth:`linmaml.meta.engine.Engine.score` (no outer graph; the learner is not
modified). The reported accuracy is the mean of the per-task query accuracies, and ``ci95 = 1.96 ·
s / √n`` with ``s`` the sample standard deviation (ddof 1) of the ``n`` per-task accuracies — the
normal-approximation interval used throughout the few-shot literature. BatchNorm normalises with
the statistics of the batch it sees (support set while adapting, query set when scoring), exactly as
in training.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from linmaml.benchmarks import episodes
from linmaml.benchmarks.models import to_channels_last
from linmaml.errors import ArgumentError
from linmaml.intervals import mean_ci
from linmaml.meta.engine import Engine
from linmaml.meta.maml_learners import StepsBeyondTrainingWarning

def mean_ci95(values) -> tuple[float, float]:
    """``(mean, 1.96 · std(ddof=1) / √n)`` of a 1-d sequence of at least two finite numbers."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size < 2:
        raise ArgumentError("values", f"a confidence interval needs at least 2 tasks, got {values.size}")
    mean, half = mean_ci(values, 0.95, normal=True)
    return float(mean), float(half)


def model_layout(batch):
    """Stacked image episodes ``(M, n, C, H, W)`` laid out channels-last, which the CNN runs faster
    (:func:`linmaml.benchmarks.models.to_channels_last`, same values); other tensors as they are."""
    xs, ys, xq, yq = batch
    if xs.ndim == 5:
        xs, xq = to_channels_last(xs), to_channels_last(xq)
    return xs, ys, xq, yq


def steps_note(learner, steps: int | None, trained: int) -> str | None:
    """The one-line note that scoring adapts ``learner``'s learned transform for ``steps`` inner steps,
    more than the ``trained`` it was meta-trained with (None when it does not). Validation and
    ``linmaml evaluate`` print it once instead of the library's :class:`StepsBeyondTrainingWarning`,
    which :func:`score_tasks` silences (a user calling ``adapt`` directly still gets the warning)."""
    transform = getattr(learner, "transform", None)
    if steps is None or steps <= trained or transform is None or not any(True for _ in transform.parameters()):
        return None
    return (f"adapts for {steps} steps, the transform ({type(transform).__name__}) was trained for {trained}: "
            f"see README")


def score_tasks(learner, tasks, indices=None, *, steps: int | None = None, device=None, dtype=None,
                should_stop=None, on_progress=None, channels_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-task ``(accuracies, losses)`` (float64 arrays) over ``tasks[i]`` for ``i`` in ``indices``
    (default: all), cross-entropy on integer labels.

    ``learner``: an :class:`~linmaml.meta.engine.Engine` (its strategy and chunk size are used) or a
    learner (scored one task at a time). ``tasks``: a sequence of episodes. ``should_stop()``, polled
    before each chunk, may end the loop early (shorter arrays); ``on_progress(done, total, seconds)``
    is called after each chunk. ``channels_last``: lay images out channels-last (:func:`model_layout`,
    faster for the built-in ConvNet); False passes them as stacked (for a user's model).
    """
    engine = learner if isinstance(learner, Engine) else Engine(learner, F.cross_entropy, strategy="loop")
    indices = list(range(len(tasks)) if indices is None else indices)
    if engine.strategy == "loop":
        size = 1
    else:
        size = engine.tasks_per_chunk or max(len(indices), 1)  # None: all tasks in one chunk
    accuracies, losses = [], []
    started = time.perf_counter()
    for start in range(0, len(indices), size):
        if should_stop is not None and should_stop():
            break
        chunk = indices[start:start + size]
        batch = episodes.stack([tasks[i] for i in chunk], chunk).to_torch(device, dtype)
        batch = model_layout(batch) if channels_last else tuple(batch)
        with warnings.catch_warnings():  # the caller says it once (steps_note)
            warnings.simplefilter("ignore", StepsBeyondTrainingWarning)
            loss, accuracy = engine.score(*batch, steps=steps)
        losses.append(loss.to(torch.float64).cpu())
        accuracies.append(accuracy.cpu())
        if on_progress is not None:
            on_progress(start + len(chunk), len(indices), time.perf_counter() - started)
    if not losses:
        return np.zeros(0), np.zeros(0)
    return torch.cat(accuracies).numpy(), torch.cat(losses).numpy()


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
