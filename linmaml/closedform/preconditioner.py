"""The implicit preconditioner of a deep linear network, and its balanced closed form.

One inner gradient step on the layers of W_e = W_L ⋯ W_1 moves the end-to-end map by

    vec ΔW_e = −α P vec G + O(α²),   P = Σ_{j adapted} (B_jᵀ B_j) ⊗ (A_j A_jᵀ),

where G = ∂L/∂W_e (shape (d_L, d_0)), A_j = W_{L:j+1}, B_j = W_{j−1:1} (empty products are
identities) and vec is column-major, so vec(A G B) = (Bᵀ ⊗ A) vec G. In matrix form
P vec G = vec Σ_j A_j A_jᵀ G B_jᵀ B_j: the layers above and below j act as a Kronecker-factored
preconditioner of the gradient, a meta-optimizer living inside the model.

For depth 2 the step is exact at second order (DESIGN.md):

    ΔW_e = −α (W_2 W_2ᵀ G + G W_1ᵀ W_1) + α² G W_1ᵀ W_2ᵀ G.

For balanced weights (W_{j+1}ᵀ W_{j+1} = W_j W_jᵀ), B_jᵀB_j = [W_eᵀW_e]^{(j−1)/L} and
A_jA_jᵀ = [W_eW_eᵀ]^{(L−j)/L} (Arora, Cohen & Hazan 2018), so P depends on W_e alone:

    P_bal = Σ_{j=1}^{L} [W_eᵀW_e]^{(j−1)/L} ⊗ [W_eW_eᵀ]^{(L−j)/L},

with fractional powers of PSD matrices whose null space must be thresholded explicitly and
[A]⁰ = I (the j = 1 and j = L terms contain the identity, not a projector). All its terms are
diagonal in the basis V ⊗ U of the singular vectors of W_e = U S Vᵀ, so its eigenvalues are
Σ_j μ^{(j−1)/L} ν^{(L−j)/L} over pairs of eigenvalues μ of W_eᵀW_e and ν of W_eW_eᵀ (0⁰ = 1).

Layer indices (``layer``, ``adapt_layers``) are 0-based, as everywhere in ``closedform``.
Results are finite or the call raises ``ValueError`` naming the argument that overflows float64
(as in :mod:`~linmaml.closedform.deep_linear`).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from linmaml import _validate
from linmaml.closedform.deep_linear import check_weights
from linmaml.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "vec",
    "unvec",
    "preconditioner",
    "apply_preconditioner",
    "depth2_step",
    "second_order_remainder",
    "fractional_power",
    "balanced_preconditioner",
    "balanced_preconditioner_eigenvalues",
    "balanced_weights",
]


def vec(A) -> np.ndarray:
    """Column-major vectorisation: the columns of A stacked, shape (rows·cols,)."""
    A = _real_array(A, "A")
    if A.ndim != 2:
        raise ArgumentError("A", f"expected a 2-d matrix, got shape {A.shape}")
    return A.reshape(-1, order="F")


def _real_array(value, name: str) -> np.ndarray:
    try:
        if np.iscomplexobj(value):
            raise TypeError
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentTypeError(name, f"expected a real array, got {type(value).__name__}") from None


def unvec(v, shape) -> np.ndarray:
    """Inverse of :func:`vec`: a vector of length rows·cols back to a (rows, cols) matrix."""
    v = _real_array(v, "v")
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise ArgumentTypeError("shape", f"expected (rows, cols), got {shape!r}")
    shape = tuple(_validate.integer(n, "shape", minimum=0) for n in shape)
    if len(shape) != 2 or v.ndim != 1 or v.size != shape[0] * shape[1]:
        raise ArgumentError("shape", f"expected (rows, cols) with rows·cols = {v.size} entries of a 1-d v, got {shape} "
                                     f"for v of shape {v.shape}")
    return v.reshape(shape, order="F")


def _outer_factors(weights: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Products above and below each layer: for the 0-based layer j (matrix weights[j]),
    above[j] = weights[L−1] ⋯ weights[j+1] and below[j] = weights[j−1] ⋯ weights[0], identities
    when empty."""
    L = len(weights)
    below = [np.eye(weights[0].shape[1])]
    for j in range(L - 1):
        below.append(weights[j] @ below[-1])
    above = [np.eye(weights[-1].shape[0])]
    for j in range(L - 1, 0, -1):
        above.append(above[-1] @ weights[j])
    above.reverse()
    return above, below


def _finite_or_raise(result: np.ndarray, argument: str, detail: str) -> np.ndarray:
    if not np.all(np.isfinite(result)):
        raise ArgumentError(argument, detail)
    return result


_WEIGHTS_OVERFLOW = ("weights", "the products of layers overflow float64; expected smaller weights")


def _selected_layers(weights, layer, adapt_layers) -> tuple[int, ...]:
    if layer is not None and adapt_layers is not None:
        raise ArgumentError("layer", "give either layer (one term) or adapt_layers (a sum of terms), not both")
    if layer is not None:
        return (_validate.integer(layer, "layer", minimum=0, maximum=len(weights) - 1),)
    return _validate.layer_indices(adapt_layers, len(weights))


def preconditioner(weights, layer=None, adapt_layers=None) -> np.ndarray:
    """P = Σ_j (B_jᵀ B_j) ⊗ (A_j A_jᵀ), shape (d_L·d_0, d_L·d_0), column-major vec.

    One inner step of size α on the adapted layers moves the end-to-end map by
    vec ΔW_e = −α P vec G + O(α²) with G = ∂L/∂W_e. The sum runs over ``adapt_layers`` (0-based;
    None: all); ``layer=j`` returns the term of layer j alone.
    """
    weights = check_weights(weights)
    layers = _selected_layers(weights, layer, adapt_layers)
    size = weights[0].shape[1] * weights[-1].shape[0]
    P = np.zeros((size, size))
    with np.errstate(all="ignore"):
        above, below = _outer_factors(weights)
        for j in layers:
            P += np.kron(below[j].T @ below[j], above[j] @ above[j].T)
    return _finite_or_raise(P, *_WEIGHTS_OVERFLOW)


def _check_G(G, weights: list[np.ndarray], name: str = "G") -> np.ndarray:
    G = _validate.real_matrix(G, name)
    expected = (weights[-1].shape[0], weights[0].shape[1])
    if G.shape != expected:
        raise ArgumentError(name, f"expected shape {expected} (d_L, d_0), got {G.shape}")
    return G


def apply_preconditioner(weights, G, adapt_layers=None) -> np.ndarray:
    """unvec(P vec G) = Σ_j A_j A_jᵀ G B_jᵀ B_j without forming P; G and the result are (d_L, d_0)."""
    weights = check_weights(weights)
    G = _check_G(G, weights)
    layers = _validate.layer_indices(adapt_layers, len(weights))
    out = np.zeros_like(G)
    with np.errstate(all="ignore"):
        above, below = _outer_factors(weights)
        for j in layers:
            out += above[j] @ (above[j].T @ G @ below[j].T) @ below[j]
    if not np.all(np.isfinite(out)):
        with np.errstate(all="ignore"):
            factors_finite = all(np.all(np.isfinite(m)) for j in layers for m in (above[j] @ above[j].T, below[j].T @ below[j]))
        raise ArgumentError(*(_WEIGHTS_OVERFLOW if not factors_finite else
                              ("G", "the preconditioned gradient overflows float64; expected a smaller G")))
    return out


def _depth2(weights, G, lr, adapt_layers):
    weights = check_weights(weights)
    if len(weights) != 2:
        raise ArgumentError("weights", f"expected a depth-2 network [W1, W2], got {len(weights)} layers")
    G = _check_G(G, weights)
    lr = _validate.finite_number(lr, "lr", nonnegative=True)
    layers = _validate.layer_indices(adapt_layers, 2)
    return weights[0], weights[1], G, lr, layers


def depth2_step(weights, G, lr, adapt_layers=None) -> np.ndarray:
    """Exact change ΔW_e of W_e = W_2 W_1 after one GD step of size ``lr`` with gradient G = ∂L/∂W_e.

    Both layers adapt: ΔW_e = −α (W_2 W_2ᵀ G + G W_1ᵀ W_1) + α² G W_1ᵀ W_2ᵀ G. Only W_1 (index 0):
    −α W_2 W_2ᵀ G; only W_2 (index 1): −α G W_1ᵀ W_1 (both exact: W_e is linear in one layer).
    G and the result have shape (d_2, d_0).
    """
    W1, W2, G, lr, layers = _depth2(weights, G, lr, adapt_layers)
    step = np.zeros_like(G)
    with np.errstate(all="ignore"):
        if 0 in layers:
            step -= lr * (W2 @ (W2.T @ G))
        if 1 in layers:
            step -= lr * ((G @ W1.T) @ W1)
        if len(layers) == 2:
            step += lr * (lr * (G @ W1.T) @ (W2.T @ G))
    if not np.all(np.isfinite(step)):
        raise _depth2_overflow(W1, W2, G)
    return step


def _depth2_overflow(W1, W2, G) -> ArgumentError:
    """Blame G (and the weights) if the α-free terms overflow already, else the learning rate."""
    with np.errstate(all="ignore"):
        terms = (W2 @ (W2.T @ G), (G @ W1.T) @ W1, (G @ W1.T) @ (W2.T @ G))
    if not all(np.all(np.isfinite(t)) for t in terms):
        return ArgumentError("G", "the terms W_2W_2ᵀG, GW_1ᵀW_1 and GW_1ᵀW_2ᵀG overflow float64 at these weights; "
                                  "expected a smaller G (or smaller weights)")
    return ArgumentError("lr", "the step overflows float64; expected a smaller learning rate")


def second_order_remainder(weights, G, lr, adapt_layers=None) -> np.ndarray:
    """ΔW_e − (−α unvec(P vec G)) for depth 2: α² G W_1ᵀ W_2ᵀ G if both layers adapt, else zero."""
    W1, W2, G, lr, layers = _depth2(weights, G, lr, adapt_layers)
    if len(layers) < 2:
        return np.zeros_like(G)
    with np.errstate(all="ignore"):
        remainder = lr * (lr * (G @ W1.T) @ (W2.T @ G))
    if not np.all(np.isfinite(remainder)):
        raise _depth2_overflow(W1, W2, G)
    return remainder


# --------------------------------------------------------------------------------------------------
# Fractional powers and the balanced closed form


def default_threshold(eigenvalues: np.ndarray, size: int) -> float:
    """Eigenvalues of a computed PSD matrix at or below this are zero up to rounding: the error of a
    symmetric eigensolver is about size·eps·‖A‖₂; a factor 10 of margin."""
    scale = float(np.max(np.abs(eigenvalues))) if eigenvalues.size else 0.0
    return 10.0 * size * np.finfo(np.float64).eps * scale


def _check_threshold(threshold) -> float | None:
    if threshold is None:
        return None
    return _validate.finite_number(threshold, "threshold", nonnegative=True)


def _psd_eigh(A: np.ndarray, name: str, threshold: float | None):
    """Eigen-decomposition of a symmetric PSD matrix with the eigenvalues at or below the threshold set to 0."""
    if A.shape[0] != A.shape[1]:
        raise ArgumentError(name, f"expected a square matrix, got shape {A.shape}")
    scale = max(1.0, float(np.max(np.abs(A)))) if A.size else 1.0
    if not np.allclose(A, A.T, rtol=0.0, atol=1e-10 * scale):
        raise ArgumentError(name, "expected a symmetric matrix")
    vals, vecs = np.linalg.eigh(0.5 * A + 0.5 * A.T)  # halves first: A + Aᵀ can overflow
    tol = default_threshold(vals, A.shape[0])
    if vals.size and vals.min() < -max(tol, threshold or 0.0):
        raise ArgumentError(name, f"expected a positive semi-definite matrix, smallest eigenvalue {vals.min():.3e}")
    cut = tol if threshold is None else threshold
    vals = np.where(vals > cut, vals, 0.0)
    return vals, vecs


def _powers(vals: np.ndarray, p: float) -> np.ndarray:
    """λ^p on the kept eigenvalues and 0 on the thresholded ones, with 0⁰ = 1."""
    if p == 0:
        return np.ones_like(vals)
    kept = vals > 0
    out = np.zeros_like(vals)
    out[kept] = vals[kept] ** p
    return out


def fractional_power(A, p, threshold=None) -> np.ndarray:
    """[A]^p for a symmetric positive semi-definite (d, d) matrix A, by eigen-decomposition.

    Eigenvalues at or below ``threshold`` (default: 10·d·eps·‖A‖₂, the rounding level) count as
    exactly zero: they map to 0 for p ≠ 0, and [A]⁰ = I (the identity, also on the null space).
    Negative p gives the power of the pseudo-inverse on the kept eigenvalues. Without the threshold a
    rounding-level eigenvalue 1e-17 would become (1e-17)^{1/4} ≈ 6e-5 instead of 0.
    """
    A = _validate.real_matrix(A, "A")
    p = _validate.finite_number(p, "p")
    vals, vecs = _psd_eigh(A, "A", _check_threshold(threshold))
    if p == 0:
        return np.eye(A.shape[0])
    with np.errstate(all="ignore"):
        out = (vecs * _powers(vals, p)) @ vecs.T
    return _finite_or_raise(out, "p", f"[A]^p overflows float64 for p = {p}; expected a smaller |p| (or a better "
                                 f"conditioned A)")


def _check_end_to_end(W_e, depth):
    W_e = _validate.real_matrix(W_e, "W_e")
    if min(W_e.shape) < 1:
        raise ArgumentError("W_e", f"expected non-empty dimensions, got shape {W_e.shape}")
    depth = _validate.integer(depth, "depth", minimum=1)
    return W_e, depth


def balanced_preconditioner(W_e, depth: int, threshold=None) -> np.ndarray:
    """P_bal = Σ_{j=1}^{L} [W_eᵀW_e]^{(j−1)/L} ⊗ [W_eW_eᵀ]^{(L−j)/L}, shape (d_L·d_0, d_L·d_0).

    The preconditioner of a balanced depth-L network with end-to-end map W_e (d_L, d_0)
    (column-major vec; fractional powers as in :func:`fractional_power`, same ``threshold``).
    """
    W_e, L = _check_end_to_end(W_e, depth)
    threshold = _check_threshold(threshold)
    _check_squares(W_e)
    right_vals, right_vecs = _psd_eigh(W_e.T @ W_e, "W_e", threshold)
    left_vals, left_vecs = _psd_eigh(W_e @ W_e.T, "W_e", threshold)
    size = W_e.shape[0] * W_e.shape[1]
    P = np.zeros((size, size))
    for j in range(1, L + 1):
        right = (right_vecs * _powers(right_vals, (j - 1) / L)) @ right_vecs.T
        left = (left_vecs * _powers(left_vals, (L - j) / L)) @ left_vecs.T
        P += np.kron(right, left)
    return _finite_or_raise(P, "W_e", "the balanced preconditioner overflows float64; expected a smaller W_e")


def _check_squares(W_e: np.ndarray) -> None:
    """The closed forms work with σ² (the eigenvalues of W_eᵀW_e): refuse W_e whose σ² overflow."""
    with np.errstate(all="ignore"):
        top = float(np.linalg.norm(W_e, 2))
        square = top * top
    if not np.isfinite(square):
        raise ArgumentError("W_e", f"its largest singular value {top:.3g} overflows float64 when squared; expected a "
                                   f"smaller W_e")


def balanced_preconditioner_eigenvalues(W_e, depth: int, threshold=None) -> np.ndarray:
    """The d_L·d_0 eigenvalues of :func:`balanced_preconditioner`, ascending, from the singular values.

    With μ over the eigenvalues of W_eᵀW_e (σ_i² and d_0 − r zeros) and ν over those of W_eW_eᵀ
    (σ_i² and d_L − r zeros), the eigenvalues are Σ_{j=1}^{L} μ^{(j−1)/L} ν^{(L−j)/L} for every
    pair (μ, ν), with 0⁰ = 1; e.g. L·σ^{2(L−1)/L} for μ = ν = σ². Squared singular values at or
    below ``threshold`` (default as in :func:`fractional_power`) count as zero.
    """
    W_e, L = _check_end_to_end(W_e, depth)
    threshold = _check_threshold(threshold)
    _check_squares(W_e)
    d_out, d_in = W_e.shape
    squares = np.linalg.svd(W_e, compute_uv=False) ** 2
    cut = default_threshold(squares, max(d_out, d_in)) if threshold is None else threshold
    squares = np.where(squares > cut, squares, 0.0)
    mu = np.concatenate([squares, np.zeros(d_in - squares.size)])
    nu = np.concatenate([squares, np.zeros(d_out - squares.size)])
    total = np.zeros((d_in, d_out))
    for j in range(1, L + 1):
        total += np.outer(_powers(mu, (j - 1) / L), _powers(nu, (L - j) / L))
    return np.sort(_finite_or_raise(total, "W_e", "the balanced preconditioner overflows float64; expected a smaller "
                                           "W_e").ravel())


def balanced_weights(W_e, hidden_widths, rng=None, threshold=None) -> list[np.ndarray]:
    """Balanced weights [W_1, …, W_L] (W_{j+1}ᵀ W_{j+1} = W_j W_jᵀ) whose product is W_e.

    From the thin SVD W_e = U S Vᵀ restricted to its numerical rank r (singular values with σ² above
    ``threshold``): W_1 = Q_1 S^{1/L} Vᵀ, W_j = Q_j S^{1/L} Q_{j−1}ᵀ, W_L = U S^{1/L} Q_{L−1}ᵀ, with
    Q_j (d_j, r) orthonormal columns: random (from ``rng``, a seed or Generator) or the first r
    columns of the identity when ``rng`` is None. ``hidden_widths`` = (d_1, …, d_{L−1}), each ≥ r;
    L = len(hidden_widths) + 1 (an empty list gives [W_e]).
    """
    W_e = _validate.real_matrix(W_e, "W_e")
    if min(W_e.shape) < 1:
        raise ArgumentError("W_e", f"expected non-empty dimensions, got shape {W_e.shape}")
    if isinstance(hidden_widths, (str, bytes)):
        raise ArgumentTypeError("hidden_widths", "expected a sequence of integers")
    try:
        widths = [_validate.integer(w, "hidden_widths", minimum=1) for w in hidden_widths]
    except ArgumentTypeError:
        raise  # an entry that is not an integer, named by _validate.integer
    except TypeError:  # hidden_widths itself is not iterable
        raise ArgumentTypeError("hidden_widths", "expected a sequence of integers") from None
    threshold = _check_threshold(threshold)
    if not widths:
        return [W_e.copy()]
    _check_squares(W_e)
    L = len(widths) + 1
    U, s, Vt = np.linalg.svd(W_e, full_matrices=False)
    cut = default_threshold(s**2, max(W_e.shape)) if threshold is None else threshold
    r = int(np.sum(s**2 > cut))
    if min(widths) < r:
        raise ArgumentError("hidden_widths", f"expected every hidden width >= {r}, the rank of W_e, got {widths}")
    try:
        generator = None if rng is None else np.random.default_rng(rng)
    except (TypeError, ValueError) as error:
        kind = ArgumentTypeError if isinstance(error, TypeError) else ArgumentError
        raise kind("rng", f"expected None, a non-negative integer seed or a numpy Generator, got {rng!r}") from None
    frames = []
    for d in widths:
        if generator is None:
            frames.append(np.eye(d)[:, :r])
        else:
            Q, R = np.linalg.qr(generator.standard_normal((d, r)))
            frames.append(Q * np.where(np.diag(R) < 0, -1.0, 1.0))  # sign fix: Haar-distributed frame
    root = s[:r] ** (1.0 / L)
    weights = [(frames[0] * root) @ Vt[:r]]
    for j in range(1, L - 1):
        weights.append((frames[j] * root) @ frames[j - 1].T)
    weights.append((U[:, :r] * root) @ frames[-1].T)
    return weights
