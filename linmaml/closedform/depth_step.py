"""Depth's step ceiling: why a deep linear net meta-trained at a large inner rate takes too large a step.

One inner step of size α on every layer of W_e = W_L ⋯ W_1 moves the end-to-end map by
vec ΔW_e = −α P vec G + O(α²) (:func:`linmaml.closedform.preconditioner.preconditioner`). For one
output (d_out = 1) write u = W_eᵀ/‖W_e‖ (the map's own direction), x_0 = u, x_j = W_j x_{j−1}, and
y_j = W_L ⋯ W_{j+1} (a row; y_L = 1). The Rayleigh quotient of P along u is

    uᵀPu = Σ_{j=1..L} ‖y_j‖² ‖x_{j−1}‖²,

and since ‖W_e‖ = y_j x_j ≤ ‖y_j‖ ‖x_j‖ for every j, the product of the L terms is at least
‖W_e‖^{2(L−1)} (pair ‖y_j‖ with ‖x_j‖ for j < L; y_L = 1 and x_0 = u are unit). By the AM–GM inequality

    α·uᵀPu ≥ α·L·‖W_e‖^{2(L−1)/L}          (L = 2: α·uᵀPu ≥ 2α‖W_e‖),

with equality for a balanced scalar chain. So at a map W_e ≈ M the step along M's own direction
cannot be smaller than α·L·‖M‖^{2(L−1)/L}, whatever the (balanced or not) weights: once that exceeds
the best step along M (e.g. the scalar optimum c* on an isotropic family), the linear part of the
deep step overshoots, and only shrinking W_e away from M (which costs at the initialisation) or the
α² terms can compensate. :func:`overshoot_loss_floor` turns this into a loss for the isotropic family.
"""
from __future__ import annotations

import numpy as np

from linmaml import _validate
from linmaml.closedform.preconditioner import check_weights, preconditioner, vec
from linmaml.errors import ArgumentError
from linmaml.closedform import gaussian_lr as glr


def step_floor(end_to_end_norm, lr, depth: int) -> float:
    """α·L·‖W_e‖^{2(L−1)/L}: the least step α·uᵀPu along W_e's own direction that any depth-L chain
    (d_out = 1) with end-to-end norm ``end_to_end_norm`` takes (module docstring)."""
    norm = _validate.finite_number(end_to_end_norm, "end_to_end_norm", nonnegative=True)
    lr = _validate.finite_number(lr, "lr", nonnegative=True)
    depth = _validate.integer(depth, "depth", minimum=1)
    return float(lr * depth * norm ** (2 * (depth - 1) / depth))


def step_along_map(weights, lr) -> float:
    """α·uᵀPu with u = vec W_e/‖W_e‖, P the implicit preconditioner of all layers of ``weights``
    ([W1, …, WL], d_out = 1). The quantity :func:`step_floor` bounds from below."""
    weights = check_weights(weights)
    lr = _validate.finite_number(lr, "lr", nonnegative=True)
    if weights[-1].shape[0] != 1:
        raise ArgumentError("weights", f"expected one output (d_out = 1), got {weights[-1].shape[0]}")
    W_e = weights[-1]
    for W in reversed(weights[:-1]):
        W_e = W_e @ W
    u = vec(W_e)
    norm = np.linalg.norm(u)
    if not norm > 0:
        raise ArgumentError("weights", "the end-to-end map is zero: it has no direction")
    u = u / norm
    return float(lr * u @ preconditioner(weights) @ u)


def overshoot_loss_floor(family, lr, depth: int) -> float:
    """The least exact one-step loss of a LINEAR map step whose Rayleigh quotient along the task mean
    M is at least :func:`step_floor` (‖M‖, lr, depth), from the initialisation M, on an isotropic
    family (Σ = vI, Ω = ωI, d_out = 1): Q = c*·I + max(0, floor − c*)·uuᵀ, u = M/‖M‖, scored by
    :func:`linmaml.closedform.gaussian_lr.expected_one_step_map_loss`. For an isotropic family the
    loss is −2a·tr Q + b·‖Q‖²_F + const, so raising uᵀQu to the floor and keeping the rest at c* is
    optimal. This is what a deep chain sitting at W_e = M pays with its α² terms ignored; it need
    not bound a trained net, which may move W_e or use the α² terms (the figure says so)."""
    family = glr._single_family(family)
    d = family.d_in
    if family.d_out != 1:
        raise ArgumentError("family", f"expected one output (d_out = 1), got {family.d_out}")
    for name, A in (("x_cov", family.x_cov), ("task_cov", family.task_cov)):
        if not np.allclose(A, A[0, 0] * np.eye(d)):
            raise ArgumentError("family", f"expected an isotropic family ({name} a multiple of the identity)")
    M = family.task_mean[0]
    norm = float(np.linalg.norm(M))
    if not norm > 0:
        raise ArgumentError("family", "the task mean is zero: the bound has no direction")
    c_star, _ = glr.best_scalar_lr(family)
    floor = step_floor(norm, lr, depth)
    u = M / norm
    Q = c_star * np.eye(d) + max(0.0, floor - c_star) * np.outer(u, u)
    return glr.expected_one_step_map_loss(family, Q)
