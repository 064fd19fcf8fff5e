"""Verification rows: the torch simulator (autograd) against the numpy closed forms (hand-derived).

The two sides share no code: :mod:`linmaml.simulator` differentiates through the inner loop with
torch autograd and builds the implicit preconditioner as J Jᵀ from an autograd Jacobian, while
:mod:`linmaml.closedform` uses hand-written backward and adjoint recursions and the Kronecker
formula. Random instances: depths 1–4, widths 1–4, inner steps 1–5, both losses, random sets of
adapted layers, several tasks per instance. Errors are normwise relative,
``max|a − b| / max|b|`` over each returned array. All rows start with "simulator:".
"""
from __future__ import annotations

import numpy as np
import torch

from linmaml.closedform import deep_linear as cf
from linmaml.closedform.preconditioner import preconditioner as cf_preconditioner
from linmaml.simulator import models, train
from linmaml.verification import CheckResult, identity

LOSSES = ("squared", "logistic")
INSTANCES_PER_LOSS = 12
TOLERANCE = 1e-10


def _relative_error(ours, reference) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    scale = max(float(np.abs(reference).max()), np.finfo(float).tiny)
    return float(np.abs(ours - reference).max()) / scale


def _instance(rng: np.random.Generator, loss: str):
    """Random weights, a stacked task batch, inner lr/steps and adapted layers for one comparison."""
    depth = int(rng.integers(1, 5))
    sizes = [int(s) for s in rng.integers(1, 5, size=depth + 1)]
    if loss == "logistic":
        sizes[-1] = 1
    weights = [rng.standard_normal((sizes[j + 1], sizes[j])) / np.sqrt(sizes[j]) for j in range(depth)]
    n_s, n_q = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    n_tasks = int(rng.integers(1, 4))
    Xs = rng.standard_normal((n_tasks, n_s, sizes[0]))
    Xq = rng.standard_normal((n_tasks, n_q, sizes[0]))
    if loss == "squared":
        Ys = rng.standard_normal((n_tasks, n_s, sizes[-1]))
        Yq = rng.standard_normal((n_tasks, n_q, sizes[-1]))
    else:
        Ys = (rng.random((n_tasks, n_s, 1)) < 0.5).astype(np.float64)
        Yq = (rng.random((n_tasks, n_q, 1)) < 0.5).astype(np.float64)
    steps = int(rng.integers(1, 6))
    lr = [float(r) for r in rng.uniform(0.05, 0.3, size=steps)]
    if rng.random() < 0.5:
        layers = None
    else:
        count = int(rng.integers(1, depth + 1))
        layers = tuple(int(j) for j in rng.choice(depth, size=count, replace=False))
    return weights, (Xs, Ys, Xq, Yq), lr, steps, layers


def _instances(rng: np.random.Generator):
    for loss in LOSSES:
        for _ in range(INSTANCES_PER_LOSS):
            yield (loss, *_instance(rng, loss))


def _torch(weights):
    return [torch.as_tensor(W, dtype=torch.float64) for W in weights]


@identity("simulator: adapted weights = closed-form adapt", TOLERANCE)
def check_adapt(rng: np.random.Generator) -> CheckResult:
    """Inner-loop weights after 1–5 steps: torch autograd vs the closed form, per task."""
    worst, count = 0.0, 0
    for loss, weights, (Xs, Ys, _, _), lr, steps, layers in _instances(rng):
        ours = train.adapt(_torch(weights), Xs, Ys, lr, steps, loss, layers, create_graph=False)
        for t in range(Xs.shape[0]):
            theirs = cf.adapt(weights, Xs[t], Ys[t], lr, steps, loss, layers)
            for W_ours, W_theirs in zip(ours, theirs):
                W_ours = W_ours[t] if W_ours.ndim == 3 else W_ours
                worst = max(worst, _relative_error(W_ours.numpy(), W_theirs))
        count += 1
    return CheckResult(count, worst, "depths 1-4, steps 1-5, both losses; normwise relative error")


@identity("simulator: MAML loss = closed-form maml_loss", TOLERANCE)
def check_maml_loss(rng: np.random.Generator) -> CheckResult:
    """The MAML objective (mean query loss after adaptation): torch vs the closed form."""
    worst, count = 0.0, 0
    for loss, weights, tasks, lr, steps, layers in _instances(rng):
        ours = float(train.maml_objective(_torch(weights), tasks, lr, steps, loss, layers).detach())
        theirs = cf.maml_loss(weights, list(zip(*tasks)), lr, steps, loss, layers)
        worst = max(worst, _relative_error(ours, theirs))
        count += 1
    return CheckResult(count, worst, "depths 1-4, steps 1-5, both losses")


@identity("simulator: meta-gradient = closed-form maml_grad", TOLERANCE)
def check_maml_grad(rng: np.random.Generator) -> CheckResult:
    """Second-order meta-gradient by autograd through the inner loop vs the hand-derived adjoint;
    every fourth instance also compares first-order MAML."""
    worst, count = 0.0, 0
    for i, (loss, weights, tasks, lr, steps, layers) in enumerate(_instances(rng)):
        orders = (False, True) if i % 4 == 0 else (False,)
        for first_order in orders:
            _, ours = train.maml_gradient(_torch(weights), tasks, lr, steps, loss, layers, first_order=first_order)
            theirs = cf.maml_grad(weights, list(zip(*tasks)), lr, steps, loss, layers, first_order=first_order)
            for g_ours, g_theirs in zip(ours, theirs):
                worst = max(worst, _relative_error(g_ours.numpy(), g_theirs))
        count += 1
    return CheckResult(count, worst, "all layers' gradients; second order (and first order on every 4th)")


@identity("simulator: implicit preconditioner J Jᵀ = closed-form Kronecker sum", TOLERANCE)
def check_preconditioner(rng: np.random.Generator) -> CheckResult:
    """P from the autograd Jacobian of vec W_e (P = J Jᵀ) vs Σ_j (B_jᵀB_j) ⊗ (A_jA_jᵀ)."""
    worst, count = 0.0, 0
    for loss, weights, _, _, _, layers in _instances(rng):
        ours = models.implicit_preconditioner(_torch(weights), layers).numpy()
        theirs = cf_preconditioner(weights, adapt_layers=layers)
        worst = max(worst, _relative_error(ours, theirs))
        count += 1
    return CheckResult(count, worst, "random depths, widths and adapted layers")
