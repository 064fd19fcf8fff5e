"""Verification rows for low-rank task families (singular Ω, several outputs) and the ANIL closed forms.

The Gaussian expectations of :mod:`linmaml.closedform.gaussian`, :mod:`linmaml.closedform.gaussian_lr`
and :mod:`linmaml.closedform.gaussian_deep` were derived for any positive semi-definite Ω; these rows
check that claim where it matters, on :class:`linmaml.tasks.LowRankRegressionFamily` (Ω = (BΛBᵀ) ⊗ I of
rank k·d_out < d_in·d_out), and check the two-layer ANIL expectation of :mod:`linmaml.closedform.lowrank`.
The other side of each row is Monte Carlo over sampled tasks, support and query sets with the inner
step written out here (deviation in standard errors, tolerance 3), a scipy optimiser, or finite
differences. Rows start with "lowrank:".
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from linmaml.checks._common import central_difference, random_spd, refine_argmin, relative_error, worst_of, z_score
from linmaml.closedform import gaussian as g
from linmaml.closedform import gaussian_lr as glr
from linmaml.closedform import lowrank as lr_forms
from linmaml.tasks import LowRankRegressionFamily
from linmaml.verification import CheckResult, identity

_TASKS = 40_000


def _family(rng: np.random.Generator, **overrides) -> LowRankRegressionFamily:
    """A random low-rank family: d_in ∈ {3, 4, 5}, rank 1 or 2 (< d_in), d_out ∈ {1, 2, 3}, unequal
    head variances, a non-zero mean, anisotropic Σ, noise, few support points."""
    d_in = int(rng.integers(3, 6))
    rank, d_out = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    params = dict(d_in=d_in, d_out=d_out, rank=rank, head_cov=list(rng.uniform(0.2, 1.5, size=rank)),
                  task_mean=0.5 * rng.standard_normal((d_out, d_in)), x_cov=random_spd(rng, d_in, condition=10.0),
                  noise_std=float(rng.uniform(0.1, 0.5)), n_support=int(rng.integers(2, 7)),
                  n_query=int(rng.integers(2, 6)), basis_seed=int(rng.integers(0, 2**31)))
    params.update(overrides)
    return LowRankRegressionFamily(**params)


def _query_losses(batch, adapted: np.ndarray) -> np.ndarray:
    """Per task: ½·mean over the sampled query points of ‖y − W′x‖² (adapted (T, d_out, d_in))."""
    residual = np.einsum("tqi,toi->tqo", batch.Xq, adapted) - batch.Yq
    return 0.5 * np.mean(np.sum(residual**2, axis=2), axis=1)


def _support_residuals(batch, W: np.ndarray) -> np.ndarray:
    """(T, n, d_out) support residuals X Wᵀ − Y of one map W (d_out, d_in) on every task."""
    return batch.Xs @ W.T - batch.Ys


@identity("lowrank: one-step and k-step expected loss on rank-k families (singular Ω) vs Monte Carlo "
          "(standard errors)", 3.0)
def _shallow_monte_carlo(rng):
    """Checks linmaml.closedform.gaussian.expected_post_adaptation_loss on linmaml.tasks.LowRankRegressionFamily
    (rank k·d_out Ω, d_out up to 3): one real inner step on sampled noisy support sets (finite n, both signs of the
    rate), and k = 3 explicit population steps W ← W − α(W − W_τ)Σ; the sampled query loss."""
    worst = 0.0
    for lr, steps in ((float(rng.uniform(0.05, 0.4)), 1), (-float(rng.uniform(0.05, 0.3)), 1), (0.2, 3)):
        family = _family(rng)
        W = rng.standard_normal((family.d_out, family.d_in))
        batch = family.sample(_TASKS, rng)
        if steps == 1:
            n = batch.Xs.shape[1]
            grads = np.einsum("tno,tni->toi", _support_residuals(batch, W), batch.Xs) / n
            adapted = W[None] - lr * grads
            exact = g.expected_post_adaptation_loss(W, family, lr, 1)
        else:
            adapted = np.broadcast_to(W, batch.W.shape).copy()
            for _ in range(steps):
                adapted -= lr * (adapted - batch.W) @ family.x_cov
            exact = g.expected_post_adaptation_loss(W, family, lr, steps, population=True)
        worst = worst_of(worst, z_score(_query_losses(batch, adapted), exact))
    return CheckResult(3, worst, f"max |error| in Monte Carlo standard errors ({_TASKS} tasks each)")


@identity("lowrank: deep (L = 2, 3) one-step expectation on rank-k families vs Monte Carlo (standard errors)", 3.0)
def _deep_monte_carlo(rng):
    """Checks linmaml.closedform.gaussian.expected_post_adaptation_loss on layer lists [W1, …, WL] for
    linmaml.tasks.LowRankRegressionFamily (Isserlis with a singular Ω): sampled task maps, one population step on
    every layer by a direct loop (layer j moves by −α·(W_L⋯W_{j+1})ᵀ(W_e − W_τ)Σ(W_{j−1}⋯W_1)ᵀ), sampled query
    loss."""
    def product(mats, size):
        out = np.eye(size)
        for M in mats:
            out = M @ out
        return out

    worst = 0.0
    for depth in (2, 3, 2):
        family = _family(rng)
        d_in, d_out = family.d_in, family.d_out
        widths = [d_in] + [family.rank] * (depth - 1) + [d_out]
        layers = [rng.standard_normal((widths[j + 1], widths[j])) / np.sqrt(widths[j]) for j in range(depth)]
        lr = float(rng.uniform(0.05, 0.3))
        batch = family.sample(_TASKS, rng)
        G = (product(layers, d_in)[None] - batch.W) @ family.x_cov
        moved = [W[None] - lr * product(layers[j + 1:], W.shape[0]).T @ G @ product(layers[:j], d_in).T
                 for j, W in enumerate(layers)]
        adapted = moved[0]
        for W in moved[1:]:
            adapted = W @ adapted
        exact = g.expected_post_adaptation_loss(layers, family, lr, population=True)
        worst = worst_of(worst, z_score(_query_losses(batch, adapted), exact))
    return CheckResult(3, worst, f"max |error| in Monte Carlo standard errors ({_TASKS} tasks each)")


@identity("lowrank: optimal inner lr and optimal one-step matrix map with singular Ω vs scipy.optimize", 1e-5)
def _optimal_maps(rng):
    """Checks linmaml.closedform.gaussian.optimal_inner_lr (scalar, finite n) against scipy's bounded scalar
    minimiser of the exact loss, and linmaml.closedform.gaussian_lr.optimal_one_step_map (Q* = [(1 + 1/n)SΣ + cI]⁻¹S
    with S = Ω_in singular) against BFGS over (W0, Q) on expected_one_step_map_loss; the optimisers must not find a
    lower loss. Relative error of the minimisers."""
    worst = 0.0
    for _ in range(2):
        family = _family(rng)
        M = family.task_mean
        alpha = g.optimal_inner_lr(M, family, 1)
        found = minimize_scalar(lambda a: g.expected_post_adaptation_loss(M, family, a, 1), bounds=(0.0, 5.0),
                                method="bounded", options={"xatol": 1e-12})
        worst = worst_of(worst, abs(alpha - found.x) / abs(found.x))
        d_in, d_out = family.d_in, family.d_out
        W0, Q = glr.optimal_one_step_map(family)
        k = d_out * d_in

        def loss(x):
            return glr.expected_one_step_map_loss(family, x[k:].reshape(d_in, d_in), x[:k].reshape(d_out, d_in))

        result = minimize(loss, np.concatenate([np.zeros(k), 0.1 * np.eye(d_in).ravel()]), method="BFGS",
                          options={"gtol": 1e-11, "maxiter": 20_000})
        if loss(np.concatenate([W0.ravel(), Q.ravel()])) > result.fun * (1 + 1e-10):
            return CheckResult(4, float("inf"), "the optimiser found a lower loss than the closed form")
        worst = worst_of(worst, relative_error([W0, Q], [result.x[:k].reshape(d_out, d_in),
                                                         result.x[k:].reshape(d_in, d_in)]))
    return CheckResult(4, worst, "relative error of α* (2 families) and of (W0*, Q*) (2 families)")


@identity("lowrank: ANIL (head-only step) expected loss of a two-layer net vs Monte Carlo (standard errors)", 3.0)
def _anil_monte_carlo(rng):
    """Checks linmaml.closedform.lowrank.anil_expected_loss (finite n, and population): sampled tasks, the head's
    own support gradient (W2 W1 Xᵀ − Yᵀ) X W1ᵀ / n (or its population value (W2W1 − W_τ)ΣW1ᵀ) and one step on W2
    alone, then the sampled query loss of W2′W1. Shares nothing with the closed form's matrix-map algebra."""
    worst = 0.0
    for population in (False, False, True):
        family = _family(rng)
        hidden = int(rng.integers(1, family.d_in + 1))
        W1 = rng.standard_normal((hidden, family.d_in)) / np.sqrt(family.d_in)
        W2 = rng.standard_normal((family.d_out, hidden)) / np.sqrt(hidden)
        lr = float(rng.uniform(0.1, 0.8))
        batch = family.sample(_TASKS, rng)
        W0 = W2 @ W1
        if population:
            head_grad = (W0[None] - batch.W) @ family.x_cov @ W1.T
        else:
            n = batch.Xs.shape[1]
            head_grad = np.einsum("tno,tnh->toh", _support_residuals(batch, W0), batch.Xs @ W1.T) / n
        adapted = (W2[None] - lr * head_grad) @ W1
        exact = lr_forms.anil_expected_loss([W1, W2], family, lr, population)
        worst = worst_of(worst, z_score(_query_losses(batch, adapted), exact))
    return CheckResult(3, worst, f"max |error| in Monte Carlo standard errors ({_TASKS} tasks each)")


@identity("lowrank: ANIL expected loss's gradient and best head rate vs finite differences and a grid", 1e-6)
def _anil_gradient(rng):
    """Checks linmaml.closedform.lowrank.anil_expected_loss_and_grad (finite n and population) against the
    fourth-order central difference of anil_expected_loss over both layers, and
    linmaml.closedform.lowrank.best_head_lr against grid refinement of the same loss (relative errors)."""
    worst = 0.0
    for population in (False, True):
        family = _family(rng)
        hidden = int(rng.integers(1, family.d_in + 1))
        layers = [rng.standard_normal((hidden, family.d_in)) / np.sqrt(family.d_in),
                  rng.standard_normal((family.d_out, hidden)) / np.sqrt(hidden)]
        lr = float(rng.uniform(-0.3, 0.8))
        _, grads = lr_forms.anil_expected_loss_and_grad(layers, family, lr, population)
        numeric = central_difference(lambda ws: lr_forms.anil_expected_loss(ws, family, lr, population), layers,
                                     h=1e-3)
        worst = worst_of(worst, relative_error(grads, numeric))
        alpha, _ = lr_forms.best_head_lr(layers, family, population)
        grid = refine_argmin(lambda a: lr_forms.anil_expected_loss(layers, family, a, population), -5.0, 5.0,
                             points=41, levels=14)
        worst = worst_of(worst, abs(alpha - grid) / max(abs(grid), 1e-3))
    return CheckResult(4, worst, "relative error of the gradient (2 instances) and of α* (2 instances)")
