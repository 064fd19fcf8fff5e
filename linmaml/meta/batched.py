"""Deprecated names kept for code that has not moved to :mod:`linmaml.meta.engine` yet.

Everything here is a thin alias onto :class:`linmaml.meta.engine.Engine` (the one implementation of
"adapt, score the query set, meta-gradient"); new code should use the engine directly:

================================================  ==================================================
old                                               engine
================================================  ==================================================
``task_losses(learner, xs, ys, xq, yq, loss_fn)``  ``Engine(learner, loss_fn, strategy="vmap",
                                                  tasks_per_chunk=None).task_losses(xs, ys, xq, yq)``
``meta_batch_loss(...)``                          the mean of the above
``MetaGradient(learner, loss_fn, tasks_per_chunk,  ``Engine(learner, loss_fn, strategy=…,
query_per_task, compile)(xs, ys, xq, yq, scale)``  tasks_per_chunk=…).meta_gradient(…)``
``explicit_normalization``                        ``engine.explicit_normalization``
================================================  ==================================================
"""
from __future__ import annotations

import torch.nn.functional as F

from linmaml.errors import ArgumentTypeError
from linmaml.meta.engine import Engine, explicit_normalization

__all__ = ["task_losses", "meta_batch_loss", "MetaGradient", "explicit_normalization"]


def task_losses(learner, x_support, y_support, x_query, y_query, loss_fn, *, steps=None):
    """``(losses (M,), accuracies (M,) or None)`` of the whole meta-batch in one vmapped computation
    (:meth:`Engine.task_losses` with ``strategy="vmap"``, one chunk)."""
    return Engine(learner, loss_fn, strategy="vmap", tasks_per_chunk=None).task_losses(
        x_support, y_support, x_query, y_query, steps=steps)


def meta_batch_loss(learner, x_support, y_support, x_query, y_query, loss_fn, *, steps=None):
    """The mean query loss (differentiable) and mean accuracy (or None) of :func:`task_losses`."""
    losses, accuracies = task_losses(learner, x_support, y_support, x_query, y_query, loss_fn, steps=steps)
    return losses.mean(), (accuracies.mean() if accuracies is not None else None)


class MetaGradient:
    """The old four-knob training step, mapped onto one engine strategy: ``tasks_per_chunk=1`` is
    "loop", ``query_per_task=True`` is "split", otherwise "vmap"."""

    def __init__(self, learner, loss_fn=F.cross_entropy, *, tasks_per_chunk=1, query_per_task=False,
                 compile=False, steps=None):  # noqa: A002
        if not isinstance(query_per_task, bool):
            raise ArgumentTypeError("query_per_task", f"expected True or False, got {query_per_task!r}")
        strategy = "loop" if tasks_per_chunk == 1 else ("split" if query_per_task else "vmap")
        self.engine = Engine(learner, loss_fn, strategy=strategy, tasks_per_chunk=tasks_per_chunk, compile=compile)
        self.steps = steps

    def __call__(self, x_support, y_support, x_query, y_query, scale: float = 1.0) -> tuple[float, float]:
        return self.engine.meta_gradient(x_support, y_support, x_query, y_query, scale, steps=self.steps)
