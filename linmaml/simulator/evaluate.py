"""Held-out evaluation: adaptation curves (query loss and accuracy against inner steps) with
mean and 95% confidence intervals over many test tasks.

The confidence interval of a mean over n independent tasks is the Student-t interval
``mean ± t_{(1+level)/2, n−1} · s / √n`` with s the sample standard deviation (ddof = 1).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from scipy.special import stdtrit

from linmaml import _validate
from linmaml.simulator.models import LinearChain, accuracy, task_loss
from linmaml.simulator.maml import adapt


def mean_ci(values, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the two-sided Student-t confidence interval along ``axis``.

    ``values`` holds one number per independent sample along ``axis`` (at least two). Returns
    ``(mean, half_width)`` with the other axes kept.
    """
    values = np.asarray(values, dtype=np.float64)
    level = _validate.finite_number(level, "level", positive=True)
    if level >= 1:
        raise ValueError(f"level: expected a probability in (0, 1), got {level}")
    n = values.shape[axis]
    if n < 2:
        raise ValueError(f"values: expected at least 2 samples along axis {axis}, got {n}")
    quantile = stdtrit(n - 1, 0.5 + level / 2)
    return values.mean(axis=axis), quantile * values.std(axis=axis, ddof=1) / np.sqrt(n)


@dataclasses.dataclass(frozen=True)
class AdaptationCurve:
    """Query loss (and accuracy, for classifiers) after 0, 1, …, K inner steps on held-out tasks.

    Arrays have shape (K+1,); ``*_ci`` are the half-widths of the ``level`` confidence intervals;
    accuracy fields are None for the squared loss.
    """

    name: str
    steps: np.ndarray
    loss_mean: np.ndarray
    loss_ci: np.ndarray
    accuracy_mean: np.ndarray | None
    accuracy_ci: np.ndarray | None
    n_tasks: int
    level: float

    def to_dict(self) -> dict:
        out = {"name": self.name, "n_tasks": self.n_tasks, "level": self.level,
               "steps": self.steps.tolist(), "loss_mean": self.loss_mean.tolist(), "loss_ci": self.loss_ci.tolist()}
        if self.accuracy_mean is not None:
            out["accuracy_mean"] = self.accuracy_mean.tolist()
            out["accuracy_ci"] = self.accuracy_ci.tolist()
        return out


def per_task_curves(chain: LinearChain, weights: Sequence[torch.Tensor], tasks, lr, max_steps: int = 10) -> dict:
    """Per-task query loss (and accuracy) after 0…``max_steps`` inner steps of size ``lr``.

    ``tasks`` is a stacked :class:`linmaml.tasks.TaskBatch` (numpy or torch). Returns
    ``{"loss": (K+1, T)}`` plus ``"accuracy": (K+1, T)`` for the logistic loss.
    """
    max_steps = _validate.integer(max_steps, "max_steps", minimum=0)
    weights = chain.check_weights(weights)
    Xs, Ys, Xq, Yq = (torch.as_tensor(a, dtype=torch.float64) for a in (tasks.Xs, tasks.Ys, tasks.Xq, tasks.Yq))
    path = adapt(weights, Xs, Ys, lr, max_steps, chain.loss, chain.adapt_layers, create_graph=False, return_path=True)
    T = Xq.shape[0]
    out = {"loss": np.stack([task_loss(w, Xq, Yq, chain.loss).expand(T).numpy() for w in path])}
    if chain.loss == "logistic":
        out["accuracy"] = np.stack([accuracy(w, Xq, Yq).expand(T).numpy() for w in path])
    return out


def adaptation_curve(chain: LinearChain, weights: Sequence[torch.Tensor], family, *, lr, max_steps: int = 10,
                     n_tasks: int = 1000, seed: int = 0, level: float = 0.95) -> AdaptationCurve:
    """Mean and confidence band of the held-out adaptation curve over ``n_tasks`` fresh tasks.

    The inner loop takes the same plain gradient steps of size ``lr`` as in meta-training, on the
    layers ``chain.adapt_layers``; tasks come from ``family.sample(n_tasks, seed)``.
    """
    n_tasks = _validate.integer(n_tasks, "n_tasks", minimum=2)
    per_task = per_task_curves(chain, weights, family.sample(n_tasks, seed), lr, max_steps)
    loss_mean, loss_ci = mean_ci(per_task["loss"], level, axis=1)
    acc_mean = acc_ci = None
    if "accuracy" in per_task:
        acc_mean, acc_ci = mean_ci(per_task["accuracy"], level, axis=1)
    return AdaptationCurve(chain.name, np.arange(max_steps + 1), loss_mean, loss_ci, acc_mean, acc_ci, n_tasks, level)


def ratio_of_means_ci(numerator, denominator, level: float = 0.95) -> tuple[float, float]:
    """``mean(a) / mean(b)`` and its delta-method confidence half-width, for paired samples.

    a and b are per-task values on the same tasks (shape (n,)); the half-width is
    ``t · sqrt(var(a) − 2r·cov(a, b) + r²·var(b)) / (|mean b|·√n)`` with r the ratio.
    """
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"numerator, denominator: expected two 1-d arrays of one length, got {a.shape} and {b.shape}")
    n = a.size
    if n < 2:
        raise ValueError(f"numerator: expected at least 2 samples, got {n}")
    ratio = a.mean() / b.mean()
    cov = np.cov(a, b, ddof=1)
    variance = cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]
    quantile = stdtrit(n - 1, 0.5 + level / 2)
    return float(ratio), float(quantile * np.sqrt(max(variance, 0.0)) / (abs(b.mean()) * np.sqrt(n)))
