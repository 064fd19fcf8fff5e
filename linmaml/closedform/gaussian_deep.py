"""Exact Gaussian expectations for DEEP linear models after one population inner step (numpy only).

Setting (:mod:`linmaml.closedform.gaussian`): x ~ N(0, Σ), vec W_τ ~ N(vec M, Ω) (column-major vec),
y = W_τ x + ε, ε ~ N(0, σ² I). The model is [W1, …, WL] (W1 applied first, Wj of shape
(d_j, d_{j−1}), d_0 = d_in, d_L = d_out) with end-to-end map W_e = W_L⋯W_1.

One inner step with the population gradient
-------------------------------------------
With D = W_e − W_τ the population gradient of the task loss with respect to W_e is G = DΣ, and layer
j moves by −α·G_j, G_j = A_jᵀ G B_jᵀ, A_j = W_L⋯W_{j+1}, B_j = W_{j−1}⋯W_1. The adapted map is the
product of L factors W_j − α A_jᵀ D Σ B_jᵀ, each affine in D, so the query residual

    R(D) = W_e′ − W_τ = W_e′ − W_e + D

is a polynomial of degree ≤ L in D without constant term. Expanding the product over the subsets S of
layers that take their gradient term gives R = Σ_k R_k[D, …, D] with R_k k-linear (coefficient
(−α)^|S|, words C_0 D C_1 D ⋯ D C_k of constant matrices). The expected query loss is
½·E tr(R Σ Rᵀ) + ½·d_out σ², and D = μ + Z with μ = W_e − M and Z ~ N(0, Ω). Writing the R_k as
symmetric tensors and re-expanding around μ gives R = Σ_j R̃_j[Z^j]; Isserlis' theorem then gives

    E tr(R̃_j[Z^j] Σ R̃_l[Z^l]ᵀ) = Σ_p N(j, l, p)·⟨Ω-traced R̃_j, Ω^{⊗p} · Ω-traced R̃_l⟩_Σ,
    N(j, l, p) = C(j, p) C(l, p) p! (j − p − 1)!! (l − p − 1)!!,

where p slots of each side pair across and the remaining (j − p)/2 and (l − p)/2 pairs are traced
with Ω inside each side. Everything is exact in float64 (sums of products; no sampling, no
quadrature). The cost is O(2^L) words and tensors of d_out·d_in·(d_out·d_in)^L entries: fine for
the small families of the figures (d_out·d_in ≲ 20, L ≤ 4), exponential beyond.

The gradient with respect to every layer is the complex-step derivative of that exact polynomial,
Im f(W + ih·E)/h, evaluated for all coordinates at once (a leading batch axis): no subtraction, so its
error is O(h²) relative with h = 1e-20, i.e. exact to rounding.

Finite n support points: the adapted map then contains Σ̂ up to degree L and the query loss Σ̂ up to
degree 2L jointly with D. Depth 2 (fourth-order Wishart moments jointly with the support noise) is
:mod:`linmaml.closedform.gaussian_deep_finite`; depth ≥ 3 at finite n raises ``ValueError``. More
than one step (degree L^k in D) is not covered either.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError

#: Complex-step size relative to the scale of the weights (error O(h²): far below rounding).
_COMPLEX_STEP = 1e-20


def is_layer_list(weights) -> bool:
    """True when ``weights`` is a list/tuple of 2-d arrays (layers), False for one matrix."""
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        return False
    return all(np.ndim(W) == 2 for W in weights)


def check_layers(weights, d_in: int, d_out: int) -> list[np.ndarray]:
    """Validate [W1, …, WL]: finite real 2-d arrays chaining from d_in to d_out."""
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise ArgumentTypeError("weights", "expected a matrix or a non-empty list of layer matrices")
    layers = [_validate.real_matrix(W, f"weights[{j}]") for j, W in enumerate(weights)]
    previous = d_in
    for j, W in enumerate(layers):
        if W.shape[1] != previous:
            raise ArgumentError(f"weights[{j}]", f"expected {previous} columns (the width of the layer below), "
                                                 f"got shape {W.shape}")
        previous = W.shape[0]
    if previous != d_out:
        raise ArgumentError(f"weights[{len(layers) - 1}]", f"expected {d_out} rows (d_out of the family), "
                                                           f"got shape {layers[-1].shape}")
    return layers


# --------------------------------------------------------------------------------------------------
# The polynomial R(D) as symmetric tensors (batched over a leading axis P, complex-safe)


def _chain(mats: list[np.ndarray], size: int, dtype) -> np.ndarray:
    """The product mats[0] @ mats[1] @ … (batched), the (P, size, size) identity when empty."""
    out = None
    for A in mats:
        out = A if out is None else out @ A
    if out is None:
        out = np.broadcast_to(np.eye(size, dtype=dtype), (1, size, size))
    return out


def _words(layers: list[np.ndarray], Sigma: np.ndarray, lr: float):
    """Yield (coefficient, [C_0, …, C_k]) for every nonempty subset S of layers taking its gradient
    term: the word C_0 D C_1 ⋯ D C_k of the adapted map W_e′. Matrices are batched (P, ·, ·)."""
    L = len(layers)
    dtype = layers[0].dtype
    widths = [layers[0].shape[2]] + [W.shape[1] for W in layers]
    # A_j = W_L⋯W_{j+1} (d_L, d_j) and Σ B_jᵀ = Σ (W_{j−1}⋯W_1)ᵀ (d_0, d_{j−1}), 0-based j.
    A = [_chain(layers[j + 1:][::-1], widths[j + 1], dtype) for j in range(L)]
    SB = [Sigma @ np.swapaxes(_chain(layers[:j][::-1], widths[0], dtype), -1, -2) for j in range(L)]
    for mask in range(1, 2 ** L):
        chunks = [np.broadcast_to(np.eye(widths[L], dtype=dtype), (1, widths[L], widths[L]))]
        for j in range(L - 1, -1, -1):  # the product W_L′ ⋯ W_1′, left to right
            if mask >> j & 1:
                chunks[-1] = chunks[-1] @ np.swapaxes(A[j], -1, -2)
                chunks.append(SB[j])
            else:
                chunks[-1] = chunks[-1] @ layers[j]
        yield np.float64(-lr) ** bin(mask).count("1"), chunks  # numpy: overflow gives inf, checked later


def _word_tensor(chunks: list[np.ndarray]) -> np.ndarray:
    """T[P, p, q, a_1, …, a_k] with T·(D, …, D) = C_0 D C_1 ⋯ D C_k, slot a = (i, j) ↦ i·d_in + j."""
    X = chunks[0]  # (P, p, i_1)
    for C in chunks[1:]:
        # append (j_s, next) after the open index i_s: an outer product
        X = X[..., None, None] * C.reshape((C.shape[0],) + (1,) * (X.ndim - 1) + C.shape[1:])
    X = np.moveaxis(X, -1, 2)  # (P, p, q, i_1, j_1, …, i_k, j_k)
    k = len(chunks) - 1
    d_out, d_in = chunks[0].shape[2], chunks[1].shape[1]
    return X.reshape(X.shape[:3] + (d_out * d_in,) * k)


def _symmetrise(T: np.ndarray) -> np.ndarray:
    k = T.ndim - 3
    if k < 2:
        return T
    perms = list(itertools.permutations(range(3, 3 + k)))
    return sum(np.transpose(T, (0, 1, 2) + p) for p in perms) / len(perms)


def _double_factorial(n: int) -> int:
    return 1 if n <= 0 else n * _double_factorial(n - 2)


def _component_value(layers, M, Omega_slots, Sigma, noise_var, lr) -> np.ndarray:
    """E[query loss] for one family, batched over the leading axis of the layers (shape (P,))."""
    L = len(layers)
    P = max(W.shape[0] for W in layers)
    d_out, d_in = M.shape
    m = d_out * d_in
    dtype = np.result_type(*layers)
    # R_k tensors, k = 1..L (R_0 = 0: the S = ∅ word is W_e, cancelled by −W_e).
    R = [None] + [np.zeros((P, d_out, d_in) + (m,) * k, dtype=dtype) for k in range(1, L + 1)]
    R[1] = R[1] + np.eye(m).reshape(1, d_out, d_in, m)  # the + D term: slot (i, j) ↦ output (i, j)
    for coefficient, chunks in _words(layers, Sigma, lr):
        k = len(chunks) - 1
        R[k] = R[k] + coefficient * _word_tensor(chunks)
    R = [None] + [_symmetrise(T) for T in R[1:]]
    W_e = _chain(layers[::-1], d_in, dtype)
    mu = (W_e - M).reshape(P, m)  # slot order i·d_in + j
    # Re-expand around μ: R̃_j = Σ_{k ≥ j} C(k, j)·R_k[μ^{k−j}, ·].
    shifted = []
    for j in range(L + 1):
        total = np.zeros((P, d_out, d_in) + (m,) * j, dtype=dtype)
        for k in range(max(j, 1), L + 1):
            T = R[k]
            for _ in range(k - j):
                T = np.einsum("P...a,Pa->P...", T, mu)
            total = total + math.comb(k, j) * T
        shifted.append(total)

    def traced(T, pairs):
        for _ in range(pairs):
            T = np.tensordot(T, Omega_slots, axes=([-2, -1], [0, 1]))
        return T

    value = np.zeros(P, dtype=dtype)
    for j in range(L + 1):
        for l in range(L + 1):
            if (j + l) % 2:
                continue
            for p in range(j % 2, min(j, l) + 1, 2):
                count = (math.comb(j, p) * math.comb(l, p) * math.factorial(p)
                         * _double_factorial(j - p - 1) * _double_factorial(l - p - 1))
                left = traced(shifted[j], (j - p) // 2)
                right = traced(shifted[l], (l - p) // 2)
                for _ in range(p):  # Ω on every remaining slot (the cross pairs); cyclic order returns
                    right = np.tensordot(right, Omega_slots, axes=([3], [0]))
                value = value + count * np.einsum("Pxya,yz,Pxza->P", left.reshape(P, d_out, d_in, -1), Sigma,
                                                  right.reshape(P, d_out, d_in, -1))
    return 0.5 * value + 0.5 * noise_var


def _omega_slots(family) -> np.ndarray:
    """Ω re-indexed from column-major vec (i + d_out·j) to the slot order i·d_in + j."""
    d_in, d_out = family.d_in, family.d_out
    m = d_in * d_out
    return family.task_cov.reshape(d_in, d_out, d_in, d_out).transpose(1, 0, 3, 2).reshape(m, m)


def _value_batched(layers, mixture, lr) -> np.ndarray:
    total = 0.0
    with np.errstate(all="ignore"):
        for weight, comp in zip(mixture.weights, mixture.components):
            total = total + weight * _component_value(layers, comp.task_mean, _omega_slots(comp), comp.x_cov,
                                                      comp.d_out * comp.noise_std ** 2, lr)
    return total


def _finite_or_raise(values, layers, mixture, lr):
    if np.all(np.isfinite(values)):
        return
    if lr != 0 and np.all(np.isfinite(_value_batched([W[:1].real for W in layers], mixture, 0.0))):
        raise ArgumentError("lr", "the expected loss after the inner step overflows float64; expected a smaller "
                                  "learning rate")
    raise ArgumentError("weights", "the expected loss overflows float64 for these weights and family; expected "
                                   "smaller weights (or smaller family scales)")


def deep_expected_loss(layers: list[np.ndarray], mixture, lr: float) -> float:
    """E[query loss] after one population step on every layer (validated layers, a TaskMixture)."""
    batched = [W[None] for W in layers]
    value = _value_batched(batched, mixture, lr)
    _finite_or_raise(value, batched, mixture, lr)
    return float(value[0])


def deep_expected_loss_and_grad(layers: list[np.ndarray], mixture, lr: float):
    """(value, [∂/∂W1, …, ∂/∂WL]) by the complex step on the exact polynomial, all coordinates in one batch."""
    sizes = [W.size for W in layers]
    P = 1 + sum(sizes)
    scale = max(1.0, max(float(np.abs(W).max(initial=0.0)) for W in layers))
    h = _COMPLEX_STEP * scale
    batched, offset = [], 1
    for W, size in zip(layers, sizes):
        B = np.repeat(W[None].astype(np.complex128), P, axis=0)
        flat = B.reshape(P, -1)  # a view: perturb coordinate c of this layer in batch row offset + c
        flat[offset + np.arange(size), np.arange(size)] += 1j * h
        batched.append(B)
        offset += size
    values = _value_batched(batched, mixture, lr)
    _finite_or_raise(values, batched, mixture, lr)
    grads, offset = [], 1
    for W, size in zip(layers, sizes):
        grads.append((values[offset:offset + size].imag / h).reshape(W.shape))
        offset += size
    return float(values[0].real), grads
