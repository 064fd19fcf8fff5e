"""The exact population MAML objective of a scalar linear chain, fast enough for interactive surfaces.

Model and tasks
---------------
The model is the scalar chain f(x) = w_L ⋯ w_1 x (depth L ≥ 1, end-to-end weight p = w_1 ⋯ w_L).
Inputs are x ~ N(0, V); a task is y = a·x with a ~ N(m, s²), noise-free. Inner and outer losses are
the population losses ℓ_a(w) = ½·V·(p − a)². One inner step of plain gradient descent with rate α
moves every layer at once:

    w_j ← w_j − α·V·(p − a)·∏_{i≠j} w_i,

and after k steps the objective is J(w) = E_a[½·V·(p_k − a)²], p_k the adapted end-to-end weight.

Why quadrature is exact
-----------------------
Every adapted weight is a polynomial in a: after step t ≥ 1 its degree is (2L − 1)^{t−1} (the
gradient multiplies (p − a), of degree L·d, with L − 1 other weights of degree d). The integrand
(p_k − a)² therefore has degree D = 2L(2L − 1)^{k−1} (D = 2 for k = 0), and Gauss–Hermite
quadrature with ⌈(D + 1)/2⌉ = D/2 + 1 nodes integrates it exactly; s = 0 needs one node and α·V = 0
is the k = 0 case. For L = 2 this is 3, 19 and 163 nodes for 1, 3 and 5 steps. Every node's term is
non-negative, so the sum has no cancellation: the result is exact up to float64 rounding (relative
error ~1e-14), not an approximation. Points where the inner loop overflows float64 give ``inf``.

Rare tasks can dominate. E_a weighs tasks with large ``|a|``, for which the inner loop diverges; with
deep chains and several steps their growth (degree D in a) can beat the Gaussian tail, and then J
is genuinely astronomically large. Example: depth 6, 5 steps, α = 0.05, V = 1, w ≈ 0.85 and
a ~ N(0.5, 0.3²): the integrand peaks near a = 0.5 + 0.3·370 at ~10^36615 (checked in 30-digit
arithmetic), so ``inf`` is the correct float64 answer there, not a quadrature artefact.

Performance
-----------
Depth 2 with one step needs no quadrature: with p = w₁w₂, q = w₁² + w₂², c = α·V and e = p − a,
the adapted residual is p₁ − a = u·e + v·e² with u = 1 − c·q and v = c²·p, and for
e ~ N(μ, s²) (μ = p − m)

    E[(u e + v e²)²] = (u μ + v (μ² + s²))² + (u + 2 v μ)² s² + 2 v² s⁴

(mean² plus variance of u e + v e²: Var(ξ²) = 2 and Cov(ξ, ξ²) = 0 for ξ ~ N(0, 1)), a sum of
squares like the quadrature, computed on (points,) arrays. Otherwise the inner loop runs on
(points × nodes) arrays in chunks that stay in cache, in place, without
temporaries per step. :func:`surface_grid` also uses the symmetries of the depth-2 objective
(J(w1, w2) = J(w2, w1) = J(−w1, −w2), bitwise in float64) to evaluate only a quarter of the grid.
"""
from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Sequence

import numpy as np
from scipy.special import roots_hermitenorm

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError

#: Elements per (points × nodes) work array: ~256 KiB, so the handful of arrays fits in L2.
_CHUNK_ELEMENTS = 32768
#: Most Gauss–Hermite nodes an evaluation may need (depth 2 reaches it after 13 steps); beyond, the
#: rule alone takes many seconds and the nodes' work grows by a factor 2L − 1 per step.
MAX_NODES = 2**20
#: Most grid points per axis of :func:`surface_grid` (25 million points).
MAX_GRID = 5000


def quadrature_nodes(depth: int, steps: int) -> int:
    """Gauss–Hermite nodes that make the depth-``depth``, ``steps``-step objective exact.

    The integrand (p_k − a)² has degree D = 2L(2L − 1)^{k−1} in a (2 for k = 0); ⌈(D + 1)/2⌉ nodes
    integrate a polynomial of degree D exactly against a Gaussian.
    """
    depth = _validate.integer(depth, "depth", minimum=1)
    steps = _validate.integer(steps, "steps", minimum=0)
    degree = 2 if steps == 0 else 2 * depth * (2 * depth - 1) ** (steps - 1)
    return degree // 2 + 1


@functools.lru_cache(maxsize=64)
def _standard_normal_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights (summing to 1) of the n-point Gauss rule for z ~ N(0, 1)."""
    z = w = None
    if n <= 400:
        # Companion-matrix eigenvalues plus a Newton polish: accurate to ~1e-15 at these sizes,
        # unless its weight scaling overflows (from about 370 nodes): then NaN, and scipy's rule.
        with np.errstate(all="ignore"):
            z, w = np.polynomial.hermite_e.hermegauss(n)
        if not np.all(np.isfinite(w)):
            z = w = None
    if z is None:
        z, w = roots_hermitenorm(n)  # O(n) asymptotic rule for large n
    keep = w > 0  # weights that underflow carry nothing representable
    z, w = z[keep], w[keep] / w[keep].sum()
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


def _task_rule(mean: float, std: float, depth: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Task weights a_n and probabilities π_n with E_a[F(a)] = Σ π_n F(a_n) for deg F ≤ D."""
    if std == 0.0:
        return np.array([mean]), np.array([1.0])
    # log of the node count L(2L − 1)^{k−1} + 1, so that a huge k costs no giant integer
    if steps > 0 and math.log(depth) + (steps - 1) * math.log(2 * depth - 1) > math.log(MAX_NODES - 1):
        raise ArgumentError("steps", f"depth {depth} with {steps} inner steps needs more than {MAX_NODES} quadrature nodes "
                                     f"(the integrand has degree 2L(2L − 1)^(k − 1)); expected fewer steps or a shallower chain")
    z, w = _standard_normal_rule(quadrature_nodes(depth, steps))
    return mean + std * z, w


def _check_problem(lr, steps, mean, std, x_var):
    lr = _validate.finite_number(lr, "lr", nonnegative=True)
    steps = _validate.integer(steps, "steps", minimum=0)
    mean = _validate.finite_number(mean, "mean")
    std = _validate.finite_number(std, "std", nonnegative=True)
    x_var = _validate.finite_number(x_var, "x_var", nonnegative=True)
    return lr, steps, mean, std, x_var


def _flat_weights(ws, name: str = "ws") -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Broadcast the L layer weights to one shape; return them flattened (contiguous) and the shape."""
    if (isinstance(ws, np.ndarray) and ws.ndim == 0) or not isinstance(ws, (Sequence, np.ndarray)) \
            or isinstance(ws, (str, bytes)):
        raise ArgumentTypeError(name, f"expected a sequence of L layer weights (numbers or arrays), got {type(ws).__name__}")
    if len(ws) == 0:
        raise ArgumentError(name, "expected at least one layer weight, got none")
    arrays = []
    for j, w in enumerate(ws):
        try:
            arrays.append(np.asarray(w, dtype=np.float64))
        except (TypeError, ValueError):
            raise ArgumentTypeError(f"{name}[{j}]", "expected a real number or array") from None
        if not np.all(np.isfinite(arrays[-1])):
            raise ArgumentError(f"{name}[{j}]", "contains non-finite values")
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise ArgumentError(name, f"layer weights of shapes {[a.shape for a in arrays]} do not broadcast") from None
    flat = [np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1) for a in arrays]
    return flat, shape


def _chunk_points(n_nodes: int) -> int:
    return max(1, _CHUNK_ELEMENTS // n_nodes)


def _workers(n_elements: int) -> int:
    """Threads for the loss kernel: numpy releases the GIL in its loops, so chunks run in parallel."""
    if n_elements < 8 * _CHUNK_ELEMENTS:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _scaling(depth: int, c: float) -> tuple[float, float]:
    """(λ, c̃) for the rescaled inner loop w̃ = λw, ã = λ^L a.

    With λ = c^{1/(2L−2)} one step reads w̃_j ← w̃_j − (p̃ − ã)∏_{i≠j} w̃_i, so the multiplication by
    c = α·V disappears from the innermost loop, and the loss is ½V·λ^{−2L}·(p̃ − ã)². Depth 1 and
    extreme c (where λ^{2L} would leave the comfortable float64 range) keep λ = 1 and multiply by c.
    """
    if depth >= 2 and c > 0.0:
        log_scale = depth / (depth - 1) * math.log10(c)  # log10 λ^{2L}
        if abs(log_scale) < 30:
            return c ** (1.0 / (2 * depth - 2)), 1.0
    return 1.0, c


def _loss_flat(weights: list[np.ndarray], a: np.ndarray, pi: np.ndarray, c: float, steps: int,
               x_var: float) -> np.ndarray:
    """J at P points: ``weights`` are L arrays of shape (P,), (a, π) the task rule, c = α·V."""
    depth, n_points, n_nodes = len(weights), weights[0].shape[0], a.shape[0]
    scale, c_inner = _scaling(depth, c) if steps > 0 else (1.0, c)
    if scale != 1.0:
        weights = [w * scale for w in weights]
        a = a * scale ** depth
    out = np.empty(n_points)
    cp = _chunk_points(n_nodes)
    bounds = [(start, min(start + cp, n_points)) for start in range(0, n_points, cp)]
    workers = max(1, min(_workers(n_points * n_nodes), len(bounds)))  # no points: one idle worker

    def run(part):
        # Overflow gives inf (documented), not a warning; errstate is per thread, hence set here.
        with np.errstate(over="ignore", invalid="ignore"):
            kernel = _LossKernel(depth, cp, a, pi, c_inner, steps)
            for start, stop in part:
                out[start:stop] = kernel(weights, start, stop)

    if workers == 1:
        run(bounds)
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, [bounds[w::workers] for w in range(workers)]))
    with np.errstate(over="ignore"):
        out *= 0.5 * x_var / scale ** (2 * depth)
    # The inputs are finite, so a NaN is an overflow of the inner loop (∞ − ∞ or 0·∞ on the way).
    out[np.isnan(out)] = np.inf
    return out


class _LossKernel:
    """Per-thread work buffers; ``kernel(weights, start, stop)`` returns Σ_n π_n (p_k − a_n)² per point."""

    def __init__(self, depth, rows, a, pi, c, steps):
        shape = (rows, a.shape[0])
        self.depth, self.a, self.row_a, self.pi, self.c, self.steps = depth, a, a[None, :], pi, c, steps
        self.W = [np.empty(shape) for _ in range(depth)]
        self.e = np.empty(shape)
        self.grads = [np.empty(shape) for _ in range(depth)]
        self.prefix = [np.empty(shape) for _ in range(max(0, depth - 2))]
        self.suffix = [np.empty(shape) for _ in range(max(0, depth - 2))]

    def __call__(self, weights, start, stop):
        rows, depth = stop - start, self.depth
        W = [w[:rows] for w in self.W]
        e, grads = self.e[:rows], [g[:rows] for g in self.grads]
        prefix, suffix = [b[:rows] for b in self.prefix], [b[:rows] for b in self.suffix]
        if self.steps == 0:
            p = weights[0][start:stop].copy()
            for w in weights[1:]:
                p *= w[start:stop]
            np.subtract(p[:, None], self.row_a, out=e)
        else:
            # The first step broadcasts from the (rows, 1) initial weights: no copy per node.
            init = [w[start:stop, None] for w in weights]
            _gradient_directions(init, self.row_a, self.c, e, grads, prefix, suffix)
            for j in range(depth):
                np.subtract(init[j], grads[j], out=W[j])
            for _ in range(self.steps - 1):
                _gradient_directions(W, self.row_a, self.c, e, grads, prefix, suffix)
                for j in range(depth):
                    W[j] -= grads[j]
            _residual(W, self.row_a, e)
        np.multiply(e, e, out=e)
        return e @ self.pi


def _residual(W: list[np.ndarray], row_a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = p − a with p = ∏ W_j (the W_j may be (rows, 1) columns that broadcast against a)."""
    if len(W) == 1:
        return np.subtract(W[0], row_a, out=out)
    if W[0].shape == out.shape:
        np.multiply(W[0], W[1], out=out)
        for w in W[2:]:
            out *= w
        return np.subtract(out, row_a, out=out)
    product = W[0] * W[1]
    for w in W[2:]:
        product = product * w
    return np.subtract(product, row_a, out=out)


def _gradient_directions(W, row_a, c, e, grads, prefix, suffix) -> None:
    """grads[j] = c·(p − a)·∏_{i≠j} W_i for every layer (all from the same, un-updated W)."""
    depth = len(W)
    _residual(W, row_a, e)
    if c != 1.0:
        e *= c
    if depth == 1:
        grads[0][...] = e
        return
    if depth == 2:
        np.multiply(e, W[1], out=grads[0])
        np.multiply(e, W[0], out=grads[1])
        return
    # pre[j] = W_0 ⋯ W_{j-1} (j ≥ 1) and suf[j] = W_{j+1} ⋯ W_{L-1} (j ≤ L-2); the L-2 products
    # that are not a single layer live in the preallocated buffers.
    pre = {1: W[0]}
    for j in range(2, depth):
        pre[j] = np.multiply(pre[j - 1], W[j - 1], out=prefix[j - 2])
    suf = {depth - 2: W[depth - 1]}
    for j in range(depth - 3, -1, -1):
        suf[j] = np.multiply(suf[j + 1], W[j + 1], out=suffix[j])
    np.multiply(e, suf[0], out=grads[0])
    np.multiply(e, pre[depth - 1], out=grads[depth - 1])
    for j in range(1, depth - 1):
        np.multiply(e, pre[j], out=grads[j])
        grads[j] *= suf[j]


def scalar_maml_loss(ws, lr, steps, mean, std, x_var):
    """Exact population MAML objective J(w_1, …, w_L) of the scalar chain (see the module docstring).

    Parameters
    ----------
    ws : sequence of L numbers or arrays
        The initial layer weights w_1 … w_L (w_1 applied first), broadcastable to one shape S
        (e.g. ``np.meshgrid`` outputs).
    lr : float
        Inner learning rate α ≥ 0.
    steps : int
        Inner gradient steps k ≥ 0 (k = 0 is the plain average loss).
    mean, std : float
        Task distribution a ~ N(mean, std²), std ≥ 0.
    x_var : float
        Input variance V ≥ 0.

    Returns
    -------
    ndarray of shape S (a float when S = ()): E_a[½·V·(p_k − a)²], exact up to rounding.
    """
    weights, shape = _flat_weights(ws)
    lr, steps, mean, std, x_var = _check_problem(lr, steps, mean, std, x_var)
    c = lr * x_var
    steps = steps if c != 0.0 else 0  # with α·V = 0 the inner loop does not move
    if x_var == 0.0:  # no input variance: every loss is 0 (even where (p − a)² would overflow)
        loss = np.zeros(shape)
    elif len(weights) == 2 and steps == 1:
        loss = _depth2_one_step(weights[0], weights[1], c, mean, std, x_var).reshape(shape)
    else:
        a, pi = _task_rule(mean, std, len(weights), steps)
        loss = _loss_flat(weights, a, pi, c, steps, x_var).reshape(shape)
    return float(loss) if shape == () else loss


def _depth2_one_step(w1: np.ndarray, w2: np.ndarray, c: float, mean: float, std: float,
                     x_var: float) -> np.ndarray:
    """J for depth 2 and one step by the Gaussian moments of e = p − a (module docstring).

    In place on a few (points,) buffers: this is the whole cost of a one-step surface."""
    var = std * std
    with np.errstate(over="ignore", invalid="ignore"):
        p = w1 * w2
        u = w1 * w1
        u += w2 * w2
        u *= -c
        u += 1.0                                  # u = 1 − c·q
        mu = p - mean
        v = p
        v *= c * c                                # v = c²·p (p is not needed any more)
        first = mu * mu
        first += var
        first *= v
        first += u * mu                           # E[u e + v e²] = u μ + v (μ² + s²)
        slope = v * mu
        slope *= 2.0
        slope += u                                # u + 2 v μ
        first *= first
        slope *= slope
        slope *= var
        first += slope
        v *= v
        v *= 2.0 * var * var
        first += v
        first *= 0.5 * x_var
    # The inputs are finite, so a NaN is an overflow (∞ − ∞ or 0·∞ on the way to a huge value).
    overflow = np.isnan(first)
    if overflow.any():
        first[overflow] = np.inf
    return first


def scalar_maml_grad(ws, lr, steps, mean, std, x_var):
    """Exact gradient of :func:`scalar_maml_loss` with respect to every initial layer weight.

    Same arguments as :func:`scalar_maml_loss`. Returns a list of L arrays of the broadcast shape S
    (floats when S = ()), all finite: where a gradient overflows float64 (the objective is then ∞
    or astronomically large) it raises ``ValueError`` naming ``lr`` (the inner loop diverged) or
    ``ws`` (the weights overflow even without adaptation). ∂J/∂w_j is computed per quadrature node by an adjoint (reverse) pass through
    the k inner steps, written out by hand: with e = p − a and P_{−j} = ∏_{i≠j} w_i, one step maps
    an adjoint w̄′ of the adapted weights to

        w̄_j = w̄′_j − α·V·[P_{−j}·Σ_i w̄′_i P_{−i} + e·Σ_{i≠j} w̄′_i ∏_{l∉{i,j}} w_l],

    and the final loss seeds w̄_j = V·e_k·P_{−j}^{(k)}. Products that exclude layers come from
    prefix/suffix products, so zero weights are fine.
    """
    weights, shape = _flat_weights(ws)
    lr, steps, mean, std, x_var = _check_problem(lr, steps, mean, std, x_var)
    c = lr * x_var
    steps = steps if c != 0.0 else 0
    depth = len(weights)
    a, pi = _task_rule(mean, std, depth, steps)
    n_points, n_nodes = weights[0].shape[0], a.shape[0]
    grads = [np.empty(n_points) for _ in range(depth)]
    cp = max(1, _CHUNK_ELEMENTS // (n_nodes * (steps + 1)))
    row_a = a[None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n_points, cp):
            stop = min(start + cp, n_points)
            state = [np.repeat(w[start:stop, None], n_nodes, axis=1) for w in weights]
            history = []
            for _ in range(steps):
                history.append(state)
                pre, suf = _exclusive_products(state)
                e = _product(state) - row_a
                state = [w - c * e * p * s for w, p, s in zip(state, pre, suf)]
            pre, suf = _exclusive_products(state)
            e = _product(state) - row_a
            adjoint = [x_var * e * p * s for p, s in zip(pre, suf)]
            for state in reversed(history):
                pre, suf = _exclusive_products(state)
                e = _product(state) - row_a
                total = sum(b * p * s for b, p, s in zip(adjoint, pre, suf))
                pair = _pair_excluded(state, adjoint, pre, suf)
                adjoint = [b - c * (p * s * total + e * h) for b, p, s, h in zip(adjoint, pre, suf, pair)]
            for j in range(depth):
                grads[j][start:stop] = adjoint[j] @ pi
    if x_var == 0.0:  # every loss is 0, so is every gradient (even where the products overflow)
        grads = [np.zeros(n_points) for _ in range(depth)]
    bad = ~np.all(np.isfinite(np.stack(grads)), axis=0) if grads else np.zeros(0, dtype=bool)
    if bad.any():
        raise _gradient_overflow(weights, bad, steps, mean, std, x_var)
    out = [g.reshape(shape) for g in grads]
    return [float(g) for g in out] if shape == () else out


def _gradient_overflow(weights, bad, steps, mean, std, x_var) -> ArgumentError:
    """The error for gradients that overflow at the points ``bad``: ``ws`` if the plain (unadapted)
    gradient V·(p − E a)·∏_{i≠j} w_i overflows there too, else ``lr``."""
    points = [w[bad] for w in weights]
    first = ", ".join(f"{w[0]:.3g}" for w in points)
    with np.errstate(all="ignore"):
        pre, suf = _exclusive_products(points)
        e = _product(points) - mean
        plain = [x_var * e * p * q for p, q in zip(pre, suf)]
    count = f"{int(bad.sum())} of {bad.size} point(s), the first at ws = ({first})"
    if steps == 0 or not all(np.all(np.isfinite(g)) for g in plain):
        return ArgumentError("ws", f"the gradient overflows float64 at {count}; expected smaller weights")
    return ArgumentError("lr", f"the inner loop diverged: the gradient after {steps} inner steps overflows float64 at "
                               f"{count}; expected a smaller learning rate or fewer steps")


def _product(W):
    out = W[0].copy()
    for w in W[1:]:
        out *= w
    return out


def _exclusive_products(W):
    """prefix[j] = ∏_{i<j} W_i and suffix[j] = ∏_{i>j} W_i (1.0 for empty products)."""
    depth = len(W)
    prefix, suffix = [1.0] * depth, [1.0] * depth
    for j in range(1, depth):
        prefix[j] = prefix[j - 1] * W[j - 1]
    for j in range(depth - 2, -1, -1):
        suffix[j] = suffix[j + 1] * W[j + 1]
    return prefix, suffix


def _pair_excluded(W, adjoint, prefix, suffix):
    """h_j = Σ_{i≠j} adjoint_i ∏_{l∉{i,j}} W_l for every j, by one forward and one backward sweep."""
    depth = len(W)
    before, after = [0.0] * depth, [0.0] * depth
    for j in range(1, depth):  # before[j] = Σ_{i<j} adjoint_i ∏_{l<j, l≠i} W_l
        before[j] = before[j - 1] * W[j - 1] + prefix[j - 1] * adjoint[j - 1]
    for j in range(depth - 2, -1, -1):  # after[j] = Σ_{i>j} adjoint_i ∏_{l>j, l≠i} W_l
        after[j] = after[j + 1] * W[j + 1] + suffix[j + 1] * adjoint[j + 1]
    return [before[j] * suffix[j] + prefix[j] * after[j] for j in range(depth)]


def symmetric_grid(points: int, half_width: float) -> np.ndarray:
    """``points`` evenly spaced values on [−half_width, half_width], exactly antisymmetric (g[::-1] = −g)."""
    points = _validate.integer(points, "grid", minimum=2)
    half_width = _validate.finite_number(half_width, "range", positive=True)
    if np.isfinite(2.0 * half_width):
        g = np.linspace(-half_width, half_width, points)
    else:  # the span 2·half_width overflows float64
        g = half_width * np.linspace(-1.0, 1.0, points)
    # linspace's rounding is not symmetric; averaging with the mirror makes it so (≤ 1 ulp change).
    # Halving first is exact and cannot overflow.
    return 0.5 * g - 0.5 * g[::-1]


def surface_grid(depth, lr, steps, mean, std, x_var, grid, range):  # noqa: A002 (mirrors the CLI flag)
    """The exact population MAML objective on a grid: what ``linmaml surface`` prints.

    Parameters: ``depth`` 1 or 2; ``lr``, ``steps``, ``mean``, ``std``, ``x_var`` as in
    :func:`scalar_maml_loss`; ``grid`` points per axis (2 … :data:`MAX_GRID`) evenly spaced over
    [−range, range].

    Returns
    -------
    dict
        depth 2: ``{"w1": (N,), "w2": (N,), "loss": (N, N)}`` with ``loss[i, j]`` = J(w1[i], w2[j]);
        depth 1: ``{"w": (N,), "loss": (N,)}``. The axis is exactly antisymmetric, so the depth-2
        surface is computed on a quarter of the grid and mirrored: every quadrature term is
        bitwise symmetric, and only the rounding of the final sum over nodes can differ (≤ 1 ulp)
        from evaluating each grid point on its own.
    """
    depth = _validate.integer(depth, "depth", minimum=1, maximum=2)
    lr, steps, mean, std, x_var = _check_problem(lr, steps, mean, std, x_var)
    _validate.integer(grid, "grid", maximum=MAX_GRID)
    axis = symmetric_grid(grid, range)
    if depth == 1:
        return {"w": axis, "loss": scalar_maml_loss([axis], lr, steps, mean, std, x_var)}
    rows, cols, orbit = _quarter_grid(axis.size)
    values = scalar_maml_loss([axis[rows], axis[cols]], lr, steps, mean, std, x_var)
    return {"w1": axis, "w2": axis.copy(), "loss": values[orbit]}


@functools.lru_cache(maxsize=8)
def _quarter_grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One representative (i, j) per orbit of the n×n grid under (i, j) → (j, i) and
    (i, j) → (n−1−i, n−1−j): the pairs with i ≤ j ≤ n−1−i, listed row by row, and the (n, n) array
    giving each grid point's position in that list."""
    i = np.arange((n + 1) // 2)
    lengths = n - 2 * i  # row i holds j = i … n−1−i
    rows = np.repeat(i, lengths)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    cols = np.arange(rows.size) - np.repeat(offsets, lengths) + rows
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    flip = ii + jj > n - 1
    ii, jj = np.where(flip, n - 1 - ii, ii), np.where(flip, n - 1 - jj, jj)
    ci, cj = np.minimum(ii, jj), np.maximum(ii, jj)
    orbit = offsets[ci] + (cj - ci)
    for array in (rows, cols, orbit):
        array.setflags(write=False)
    return rows, cols, orbit
