"""Two-layer linear networks whose head adapts (ANIL), on Gaussian task families (numpy only).

Setting (:mod:`linmaml.closedform.gaussian`, typically a :class:`linmaml.tasks.LowRankRegressionFamily`
with a singular task covariance Ω): x ~ N(0, Σ), vec W_τ ~ N(vec M, Ω), y = W_τ x + ε, n support
points, squared loss 1/(2n)·‖X W_eᵀ − Y‖². The model is [W1, W2] (W1 (h, d_in) the representation,
applied first; W2 (d_out, h) the head), end-to-end W0 = W2 W1.

The head's inner step is a matrix step on the end-to-end map
--------------------------------------------------------------
With Ĝ = (W0 − W_τ)Σ̂ − EᵀX/n the support gradient with respect to the end-to-end map, the head's
gradient is Ĝ W1ᵀ, so one inner step of size α on the head alone gives

    W2′ W1 = W0 − α Ĝ W1ᵀ W1 = W0 − Ĝ Q,      Q = α W1ᵀ W1      (exact, any n),

the one-step matrix map of :mod:`linmaml.closedform.gaussian_lr`. Its exact expected query loss
(:func:`linmaml.closedform.gaussian_lr.expected_one_step_map_loss`, finite n or population) is
therefore the exact expected ANIL loss of the network, and :func:`anil_expected_loss_and_grad` adds
its gradient with respect to both layers (by the chain rule through S = (W0 − M)ᵀ(W0 − M) + Ω_in
and Q; derivation in the function's docstring). Nothing here needs Ω to be invertible: Ω enters only
through its partial trace Ω_in ⪰ 0, which for a rank-k family is B Λ Bᵀ·d_out.

The loss is a quadratic polynomial in α for fixed layers, so the best test-time head rate is exact
(:func:`best_head_lr`), and the best loss after n support points is non-increasing in n (the only
n-dependence is a non-negative 1/n term that the best rate can always cancel by shrinking), so
"the fewest support points that reach a loss ε" is found by bisection (:func:`samples_to_reach`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from linmaml import _validate
from linmaml.closedform import gaussian as _g
from linmaml.closedform import gaussian_lr as _glr
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.tasks import RegressionFamily


def _two_layers(layers, family) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(layers, (list, tuple)) or len(layers) != 2:
        raise ArgumentTypeError("layers", "expected [W1, W2]: a representation (h, d_in) and a head (d_out, h)")
    W1 = _validate.real_matrix(layers[0], "layers[0]")
    W2 = _validate.real_matrix(layers[1], "layers[1]")
    if W1.shape[1] != family.d_in:
        raise ArgumentError("layers[0]", f"expected {family.d_in} columns (d_in), got shape {W1.shape}")
    if W2.shape != (family.d_out, W1.shape[0]):
        raise ArgumentError("layers[1]", f"expected shape {(family.d_out, W1.shape[0])} (d_out, h), got {W2.shape}")
    return W1, W2


def head_step_map(layers, lr) -> np.ndarray:
    """Q = lr·W1ᵀW1 (d_in, d_in): one head step of size ``lr`` moves the end-to-end map by −Ĝ Q."""
    W1 = _validate.real_matrix(layers[0], "layers[0]")
    return _validate.finite_number(lr, "lr") * (W1.T @ W1)


def anil_expected_loss(layers, family, lr, population: bool = False) -> float:
    """Exact E[query loss] of [W1, W2] after one inner step of size ``lr`` on the head W2 alone
    (ANIL), over tasks, support sets (n = ``family.n_support``, with noise) and query points;
    ``population=True``: the support gradient is its expectation (module docstring)."""
    return anil_expected_loss_and_grad(layers, family, lr, population, _grad=False)[0]


def anil_expected_loss_and_grad(layers, family, lr, population: bool = False, *, _grad: bool = True):
    """(value, [∂/∂W1, ∂/∂W2]) of :func:`anil_expected_loss`.

    With W0 = W2 W1, Q = αW1ᵀW1, D = W0 − M, S = DᵀD + Ω_in, K = I − ΣQ, A = QΣQᵀ, noise ν = d_out σ²:

        2·loss = tr(S K Σ Kᵀ) + [tr(ΣSΣ A) + (tr(SΣ) + ν)·tr(AΣ)]/n + ν
                 (finite n; at the population level without the […]/n term)

    so 2·∂loss/∂S = KΣKᵀ + [ΣAΣ + tr(AΣ)Σ]/n and
    2·∂loss/∂Q = −2ΣSKΣ + 2[ΣSΣQΣ + (tr(SΣ) + ν)ΣQΣ]/n, then ∂/∂W0 = 2D·∂/∂S,
    ∂/∂W1 = W2ᵀ∂/∂W0 + α W1 (∂/∂Q + ∂/∂Qᵀ), ∂/∂W2 = ∂/∂W0 W1ᵀ.
    """
    if not isinstance(family, RegressionFamily):
        raise ArgumentTypeError("family", f"expected a RegressionFamily, got {type(family).__name__}")
    if not isinstance(population, (bool, np.bool_)):
        raise ArgumentTypeError("population", f"expected True or False, got {population!r}")
    W1, W2 = _two_layers(layers, family)
    lr = _validate.finite_number(lr, "lr")
    W0 = W2 @ W1
    Q = lr * (W1.T @ W1)
    value = _glr.expected_one_step_map_loss(family, Q, W0, bool(population))
    if not _grad:
        return value, None
    Sigma = family.x_cov
    d = family.d_in
    D = W0 - family.task_mean
    S = D.T @ D + _g._partial_trace_omega(family)
    K = np.eye(d) - Sigma @ Q
    dS = 0.5 * (K @ Sigma @ K.T)
    dQ = -(Sigma @ S @ K @ Sigma)
    if not population:
        n = family.n_support
        A = Q @ Sigma @ Q.T
        nu = family.d_out * family.noise_std ** 2
        dS = dS + 0.5 * (Sigma @ A @ Sigma + np.trace(A @ Sigma) * Sigma) / n
        dQ = dQ + (Sigma @ S @ Sigma @ Q @ Sigma + (np.trace(S @ Sigma) + nu) * Sigma @ Q @ Sigma) / n
    dS = 0.5 * (dS + dS.T)
    dW0 = 2 * D @ dS
    gW1 = W2.T @ dW0 + lr * W1 @ (dQ + dQ.T)
    gW2 = dW0 @ W1.T
    if not (np.all(np.isfinite(gW1)) and np.all(np.isfinite(gW2))):
        raise ArgumentError("layers", "the gradient overflows float64; expected smaller weights")
    return value, [gW1, gW2]


def best_head_lr(layers, family, population: bool = False) -> tuple[float, float]:
    """(α*, loss): the head rate minimising :func:`anil_expected_loss` and that loss.

    The loss is a quadratic polynomial a − 2bα + cα² in α (Q = αW1ᵀW1 enters at most twice), so three
    exact evaluations give it: c = [L(1) + L(−1)]/2 − L(0), b = [L(−1) − L(1)]/4, α* = b/c (0 when c = 0)."""
    L0, Lp, Lm = (anil_expected_loss(layers, family, a, population) for a in (0.0, 1.0, -1.0))
    c = 0.5 * (Lp + Lm) - L0
    b = 0.25 * (Lm - Lp)
    alpha = b / c if c > 0 else 0.0
    return float(alpha), anil_expected_loss(layers, family, alpha, population)


def samples_to_reach(loss_of_n: Callable[[int], float], epsilon: float, n_max: int = 1_000_000) -> int | None:
    """The fewest support points n ≥ 1 with ``loss_of_n(n) <= epsilon``, for a loss non-increasing in n
    (bisection on integers); None when even ``n_max`` does not reach it."""
    epsilon = _validate.finite_number(epsilon, "epsilon")
    n_max = _validate.integer(n_max, "n_max", minimum=1)
    if loss_of_n(n_max) > epsilon:
        return None
    lo, hi = 0, n_max  # loss(lo) > ε (lo = 0: no points), loss(hi) <= ε
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss_of_n(mid) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def convex_best_loss(family, n: int) -> float:
    """The best initialisation-based one-step loss of the linear model with n support points: the
    initialisation M (the task mean, optimal for every step) and the best scalar rate
    (:func:`linmaml.closedform.gaussian_lr.best_scalar_lr`), exact."""
    n = _validate.integer(n, "n", minimum=1)
    return _glr.best_scalar_lr(dataclasses.replace(family, n_support=n))[1]


def anil_best_loss(layers, family, n: int) -> float:
    """The loss of [W1, W2] after one head step at its best rate with n support points, exact."""
    n = _validate.integer(n, "n", minimum=1)
    return best_head_lr(layers, dataclasses.replace(family, n_support=n))[1]
