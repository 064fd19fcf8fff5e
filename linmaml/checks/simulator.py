"""Verification rows: the torch simulator (autograd through :mod:`linmaml.meta`) against the numpy
closed forms (hand-derived).

The two sides share no code: :mod:`linmaml.simulator` adapts a deep linear chain as a torch module
through the one :mod:`linmaml.meta` engine, differentiates through the inner loop with torch
autograd and builds the implicit preconditioner as J Jᵀ from an autograd Jacobian, while
:mod:`linmaml.closedform` uses hand-written backward and adjoint recursions and the Kronecker
formula. Both take the same arguments under the same names (``adapt``, ``maml_loss``, ``maml_grad``).
Random instances come from :mod:`linmaml.checks._common` (depths 1–4, widths 1–4, inner steps 1–5,
both losses, random sets of adapted layers, 1–3 tasks per instance); errors are
``_common.relative_error`` (‖a − b‖_F / ‖b‖_F over all arrays of an instance, b the closed form).
All rows start with "simulator:" (``linmaml verify --only simulator``).
"""
from __future__ import annotations

import numpy as np

from linmaml import simulator
from linmaml.checks._common import (
    LOSSES,
    random_layers,
    random_rates,
    random_spd,
    random_tasks,
    random_weights,
    random_widths,
    relative_error,
    worst_of,
)
from linmaml.closedform import deep_linear as cf
from linmaml.closedform.preconditioner import preconditioner as cf_preconditioner
from linmaml.verification import CheckResult, identity
from linmaml.simulator.held_out import exact_query_loss
from linmaml.tasks import RegressionFamily

INSTANCES_PER_LOSS = 12
TOLERANCE = 1e-10


def _instances(rng: np.random.Generator):
    """(loss, weights, tasks (list of (Xs, Ys, Xq, Yq), one size for all), lr, steps, adapt_layers)."""
    for loss in LOSSES:
        for _ in range(INSTANCES_PER_LOSS):
            depth = int(rng.integers(1, 5))
            widths = random_widths(rng, depth, loss)
            weights = random_weights(rng, widths)
            count = int(rng.integers(1, 4))
            first = random_tasks(rng, 1, widths[0], widths[-1], loss)[0]
            # The simulator stacks tasks: every task of an instance has the first one's set sizes.
            tasks = [first] + [tuple(_resample(rng, a, loss, k) for k, a in enumerate(first)) for _ in range(count - 1)]
            steps = int(rng.integers(1, 6))
            yield loss, weights, tasks, random_rates(rng, steps), steps, random_layers(rng, depth)


def _resample(rng: np.random.Generator, like: np.ndarray, loss: str, k: int) -> np.ndarray:
    """A fresh array shaped like the k-th part of a task (inputs normal; targets by the loss)."""
    if k % 2 == 0 or loss == "squared":
        return rng.standard_normal(like.shape)
    return (rng.random(like.shape) < 0.5).astype(np.float64)


def _stacked(tasks):
    return tuple(np.stack(part) for part in zip(*tasks))


@identity("simulator: adapted weights = closed-form adapt", TOLERANCE)
def check_adapt(rng: np.random.Generator) -> CheckResult:
    """Inner-loop weights after 1–5 steps, per task (checks linmaml.simulator.adapt: the engine's
    inner loop, torch autograd) vs linmaml.closedform.deep_linear.adapt."""
    worst, count = 0.0, 0
    for loss, weights, tasks, lr, steps, layers in _instances(rng):
        Xs, Ys, _, _ = _stacked(tasks)
        ours = simulator.adapt(weights, Xs, Ys, lr, steps, loss, layers)
        for t, (Xs_t, Ys_t, _, _) in enumerate(tasks):
            theirs = cf.adapt(weights, Xs_t, Ys_t, lr, steps, loss, layers)
            worst = worst_of(worst, relative_error([W[t] if W.ndim == 3 else W for W in ours], theirs))
        count += 1
    return CheckResult(count, worst, "depths 1-4, steps 1-5, both losses, 1-3 tasks")


@identity("simulator: MAML loss = closed-form maml_loss", TOLERANCE)
def check_maml_loss(rng: np.random.Generator) -> CheckResult:
    """The MAML objective, mean query loss after adaptation (checks linmaml.simulator.maml_loss) vs
    linmaml.closedform.deep_linear.maml_loss."""
    worst, count = 0.0, 0
    for loss, weights, tasks, lr, steps, layers in _instances(rng):
        ours = simulator.maml_loss(weights, _stacked(tasks), lr, steps, loss, layers)
        worst = worst_of(worst, relative_error(ours, cf.maml_loss(weights, tasks, lr, steps, loss, layers)))
        count += 1
    return CheckResult(count, worst, "depths 1-4, steps 1-5, both losses")


@identity("simulator: meta-gradient = closed-form maml_grad", TOLERANCE)
def check_maml_grad(rng: np.random.Generator) -> CheckResult:
    """Second-order meta-gradient by autograd through the engine's inner loop (checks
    linmaml.simulator.maml_grad) vs the hand-derived adjoint of linmaml.closedform.deep_linear.maml_grad;
    every fourth instance also compares first-order MAML."""
    worst, count = 0.0, 0
    for i, (loss, weights, tasks, lr, steps, layers) in enumerate(_instances(rng)):
        for first_order in (False, True) if i % 4 == 0 else (False,):
            ours = simulator.maml_grad(weights, _stacked(tasks), lr, steps, loss, layers, first_order=first_order)
            theirs = cf.maml_grad(weights, tasks, lr, steps, loss, layers, first_order=first_order)
            worst = worst_of(worst, relative_error(ours, theirs))
        count += 1
    return CheckResult(count, worst, "all layers' gradients; second order (and first order on every 4th)")


@identity("simulator: implicit preconditioner J Jᵀ = closed-form Kronecker sum", TOLERANCE)
def check_preconditioner(rng: np.random.Generator) -> CheckResult:
    """P from the autograd Jacobian of vec W_e, P = J Jᵀ (checks linmaml.simulator.implicit_preconditioner)
    vs Σ_j (B_jᵀB_j) ⊗ (A_jA_jᵀ) of linmaml.closedform.preconditioner.preconditioner."""
    worst, count = 0.0, 0
    for _, weights, _, _, _, layers in _instances(rng):
        ours = simulator.implicit_preconditioner(weights, layers)
        worst = worst_of(worst, relative_error(ours, cf_preconditioner(weights, adapt_layers=layers)))
        count += 1
    return CheckResult(count, worst, "random depths, widths and adapted layers")


@identity("simulator: exact conditional query loss vs Monte Carlo over query points (standard errors)", 3.0)
def check_exact_query_loss(rng: np.random.Generator) -> CheckResult:
    """Checks linmaml.simulator.held_out.exact_query_loss, ½tr((W′ − W_τ)Σ(W′ − W_τ)ᵀ) + ½d_out σ², vs the
    squared loss 1/(2n)‖X W′ᵀ − Y‖² on sampled query sets (the family's sampler: x ~ N(0, Σ), y = W_τ x + ε),
    averaged over tasks; the deviation of the paired difference's mean in its standard errors."""
    worst, tasks = 0.0, 20_000
    for d_out in (1, 2, 1):
        d_in = int(rng.integers(2, 5))
        family = RegressionFamily(d_in, d_out, task_mean=rng.standard_normal((d_out, d_in)), task_cov=0.5,
                                  x_cov=random_spd(rng, d_in, condition=30.0), noise_std=float(rng.uniform(0.1, 0.6)),
                                  n_support=1, n_query=int(rng.integers(2, 30)))
        batch = family.sample(tasks, rng)
        adapted = batch.W + 0.7 * rng.standard_normal(batch.W.shape)
        residual = np.einsum("tqi,toi->tqo", batch.Xq, adapted) - batch.Yq
        sampled = 0.5 * np.sum(residual ** 2, axis=2).mean(axis=1)
        diff = sampled - exact_query_loss(adapted, batch.W, family.x_cov, family.noise_std)
        worst = worst_of(worst, abs(diff.mean()) / (diff.std(ddof=1) / np.sqrt(tasks)))
    return CheckResult(3, worst, f"max |mean difference| in standard errors ({tasks} tasks each)")
