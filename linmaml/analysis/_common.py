"""What several figure modules share: task families from their settings, and meta-training of
:mod:`linmaml.meta` learners on them.

Meta-training and evaluation of a ``linmaml.meta`` learner go through the one engine,
:func:`linmaml.meta.batched.task_losses` (adapt on the support set, score the query set, vmapped
over the tasks of a meta-batch); nothing here re-implements the inner loop. The deep linear chains
of :mod:`linmaml.simulator` train through ``simulator.meta_train``.

Losses follow DESIGN.md: squared ``1/(2n)·‖output − target‖²_F`` per task, logistic the mean binary
cross-entropy on the logits.
"""
from __future__ import annotations

import numpy as np


def regression_family(f: dict):
    """A :class:`linmaml.tasks.RegressionFamily` from a settings dict (d_in, d_out, task_mean,
    task_var, x_var, noise_std, n_support, n_query; ``x_cov``/``task_cov`` override the scalars)."""
    from linmaml.tasks import RegressionFamily

    return RegressionFamily(f["d_in"], f["d_out"], task_mean=f["task_mean"], task_cov=f.get("task_cov", f["task_var"]),
                            x_cov=f.get("x_cov", f["x_var"]), noise_std=f["noise_std"], n_support=f["n_support"],
                            n_query=f["n_query"])


def classification_family(c: dict):
    """A :class:`linmaml.tasks.ClassificationFamily` from a settings dict."""
    from linmaml.tasks import ClassificationFamily

    return ClassificationFamily(c["d_in"], task_mean=c["task_mean"], task_cov=c["task_var"], x_cov=c["x_var"],
                                flip=c["flip"], n_support=c["n_support"], n_query=c["n_query"])


def squared_loss(output, target):
    """1/(2n)·‖output − target‖²_F for one task (output, target of shape (n, d_out))."""
    return 0.5 * ((output - target) ** 2).sum() / target.shape[-2]


def logistic_loss(output, target):
    """Mean binary cross-entropy on the logits (output, target of shape (n, 1), target in {0, 1})."""
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(output, target)


def train_meta_learner(learner, family, loss_fn, *, meta_iterations: int, meta_batch: int, meta_lr: float,
                       seed: int) -> np.ndarray:
    """MAML meta-training of a ``linmaml.meta`` learner with Adam; returns the meta-loss per iteration.

    Each iteration draws ``meta_batch`` fresh tasks from ``family`` (seeded by the second child of
    ``SeedSequence(seed)``, as ``simulator.meta_train`` draws its tasks, so both see the same tasks)
    and takes the exact meta-gradient of the mean query loss through
    :func:`linmaml.meta.batched.task_losses`.
    """
    import torch

    from linmaml.meta.batched import task_losses

    opt = torch.optim.Adam(learner.parameters(), lr=meta_lr)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    losses = np.empty(meta_iterations)
    for it in range(meta_iterations):
        b = family.sample(meta_batch, rng).torch()
        value = task_losses(learner, b.Xs, b.Ys, b.Xq, b.Yq, loss_fn)[0].mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        losses[it] = float(value.detach())
    return losses


def meta_learner_curves(learner, tasks, loss_fn, max_steps: int, *, accuracy: bool = False) -> dict:
    """Per-task query loss after 0…``max_steps`` inner steps (the learner's own steps), shape (K+1, T);
    with ``accuracy`` (one logit, labels in {0, 1}) also the per-task query accuracy, by scoring the
    sign of the logit as a loss function through the same engine."""
    import torch

    from linmaml.meta.batched import task_losses

    T = tasks.torch()

    def zero_one(output, target):  # fraction of query points whose logit sign matches the label
        return ((output > 0).to(target.dtype) == target).to(target.dtype).mean()

    out = {"loss": [], "accuracy": []}
    with torch.no_grad():
        out["loss"].append(torch.func.vmap(lambda x, y: loss_fn(learner(x), y))(T.Xq, T.Yq))
        if accuracy:
            out["accuracy"].append(torch.func.vmap(lambda x, y: zero_one(learner(x), y))(T.Xq, T.Yq))
    for k in range(1, max_steps + 1):
        out["loss"].append(task_losses(learner, T.Xs, T.Ys, T.Xq, T.Yq, loss_fn, steps=k)[0].detach())
        if accuracy:
            out["accuracy"].append(_scored(learner, T, loss_fn, zero_one, k))
    return {key: torch.stack(rows).numpy() for key, rows in out.items() if rows}


def _scored(learner, T, loss_fn, score, steps):
    """Per-task ``score(query output, query target)`` after ``steps`` inner steps on ``loss_fn``."""
    import torch

    def one(xs, ys, xq, yq):
        return score(learner(xq, params=learner.adapt(xs, ys, loss_fn, steps=steps)), yq)

    return torch.func.vmap(one)(T.Xs, T.Ys, T.Xq, T.Yq).detach()
