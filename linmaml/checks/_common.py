"""What every verification row shares: one relative error, one instance generator, one grid, one z-score.

Every row module in :mod:`linmaml.checks` draws its random instances and measures its error through
these helpers, so "relative error" means one thing across the whole table:

    relative_error(a, b) = ‖a − b‖_F / ‖b‖_F     (b is the reference side; ‖a − b‖_F when b = 0)

with the Frobenius norm taken over the concatenation of all arrays in ``a`` and ``b`` (lists of
arrays, e.g. the layers of a network, count as one vector). Statistical rows report instead the
deviation of a Monte Carlo mean from the exact value in standard errors (:func:`z_score`).

The helpers are numpy only (torch tensors are accepted and converted), so the closed-form rows stay
free of torch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from linmaml.errors import ArgumentError

#: The one definition, printed in ``linmaml verify``'s header.
RELATIVE_ERROR = "relative error = ‖a − b‖_F / ‖b‖_F over all arrays of a row's instance (b the reference)"
LOSSES = ("squared", "logistic")


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def worst_of(*errors: float) -> float:
    """The largest of ``errors``, or NaN if any is NaN: the running maximum of a row's instances.

    Python's ``max(worst, error)`` drops a NaN that is not its first argument (``max(0.0, nan)`` is
    0.0, since ``nan > 0.0`` is false), so a row whose later instance came out NaN would pass; a NaN
    never passes a row (``CheckResult``), and this keeps it.
    """
    values = [float(e) for e in errors]
    return float("nan") if any(np.isnan(v) for v in values) else max(values)


def relative_error(a, b) -> float:
    """‖a − b‖_F / ‖b‖_F over lists of arrays (or single arrays / numbers); ‖a − b‖_F when b = 0.

    ``b`` is the reference (independent) side. NaN anywhere gives NaN, which never passes a row.
    """
    if not isinstance(a, (list, tuple)):
        a, b = [a], [b]
    a = [_as_numpy(x) for x in a]
    b = [_as_numpy(y) for y in b]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ArgumentError("relative_error", f"shapes differ: {[x.shape for x in a]} vs {[y.shape for y in b]}")
    num = np.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b)))
    den = np.sqrt(sum(float(np.sum(y**2)) for y in b))
    return float(num / den) if den > 0 else float(num)


def z_score(samples, exact: float) -> float:
    """|mean(samples) − exact| in standard errors of the mean (sample standard deviation, ddof 1)."""
    samples = np.asarray(samples, dtype=np.float64).ravel()
    se = samples.std(ddof=1) / np.sqrt(samples.size)
    return float(abs(samples.mean() - exact) / se)


# --------------------------------------------------------------------------------------------------
# Random instances


def random_widths(rng: np.random.Generator, depth: int, loss: str = "squared", low: int = 1,
                  high: int = 4) -> list[int]:
    """Widths [d0, …, dL] drawn uniformly from {low, …, high}; d_L = 1 for the logistic loss."""
    widths = [int(w) for w in rng.integers(low, high + 1, size=depth + 1)]
    if loss == "logistic":
        widths[-1] = 1
    return widths


def random_weights(rng: np.random.Generator, widths: Sequence[int], scale: float = 1.0) -> list[np.ndarray]:
    """[W1, …, WL], Wj of shape (d_j, d_{j−1}) with entries of variance scale²/d_{j−1}, so the
    end-to-end map stays of order one at every depth."""
    return [scale * rng.standard_normal((widths[j + 1], widths[j])) / np.sqrt(widths[j])
            for j in range(len(widths) - 1)]


def random_data(rng: np.random.Generator, n: int, d_in: int, d_out: int, loss: str = "squared"):
    """X (n, d_in) standard normal; Y (n, d_out) standard normal (squared) or 0/1 labels (logistic)."""
    X = rng.standard_normal((n, d_in))
    if loss == "squared":
        Y = rng.standard_normal((n, d_out))
    else:
        Y = (rng.random((n, d_out)) < 0.5).astype(np.float64)
    return X, Y


def random_task(rng: np.random.Generator, d_in: int, d_out: int, loss: str = "squared", low: int = 2,
                high: int = 6):
    """(Xs, Ys, Xq, Yq) with support and query sizes drawn from {low, …, high}."""
    Xs, Ys = random_data(rng, int(rng.integers(low, high + 1)), d_in, d_out, loss)
    Xq, Yq = random_data(rng, int(rng.integers(low, high + 1)), d_in, d_out, loss)
    return Xs, Ys, Xq, Yq


def random_tasks(rng: np.random.Generator, count: int, d_in: int, d_out: int, loss: str = "squared"):
    return [random_task(rng, d_in, d_out, loss) for _ in range(count)]


def random_rates(rng: np.random.Generator, steps: int, low: float = 0.02, high: float = 0.2):
    """An inner learning rate in [low, high], or (a third of the time) one per step."""
    if rng.random() < 1 / 3:
        return [float(r) for r in rng.uniform(low, high, size=steps)]
    return float(rng.uniform(low, high))


def random_layers(rng: np.random.Generator, depth: int, minimum: int = 1):
    """None (all layers) half of the time, otherwise a sorted random subset of at least ``minimum``."""
    if rng.random() < 0.5 and minimum <= depth:
        return None
    size = int(rng.integers(minimum, depth + 1))
    return sorted(int(j) for j in rng.choice(depth, size=size, replace=False))


def random_spd(rng: np.random.Generator, d: int, low: float = 0.3, high: float = 2.0,
               condition: float | None = None) -> np.ndarray:
    """A random symmetric positive definite (d, d) matrix: eigenvalues uniform in [low, high], or,
    with ``condition`` κ, log-spaced from 1 to κ (times ``low``) in random eigenvectors."""
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    if condition is None:
        eigenvalues = rng.uniform(low, high, size=d)
    else:
        eigenvalues = low * np.geomspace(1.0, condition, d) if d > 1 else np.array([low])
    return (Q * eigenvalues) @ Q.T


# --------------------------------------------------------------------------------------------------
# Numerical references


def central_difference(f: Callable[[list[np.ndarray]], float], params: Sequence[np.ndarray],
                       h: float = 1e-3) -> list[np.ndarray]:
    """Gradient of ``f(list of arrays)`` by the fourth-order central stencil
    (−f(x+2h) + 8f(x+h) − 8f(x−h) + f(x−2h)) / 12h, error O(h⁴), coordinate by coordinate."""
    params = [np.asarray(P, dtype=np.float64) for P in params]
    grads = []
    for j, P in enumerate(params):
        g = np.zeros_like(P)
        for idx in np.ndindex(P.shape):
            values = []
            for shift in (2 * h, h, -h, -2 * h):
                moved = [Q.copy() for Q in params]
                moved[j][idx] += shift
                values.append(f(moved))
            g[idx] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
        grads.append(g)
    return grads


def log_grid(low: float, high: float, points: int) -> np.ndarray:
    """``points`` values log-spaced from ``low`` to ``high`` (both > 0), ends included."""
    if not (0 < low < high) or points < 2:
        raise ArgumentError("log_grid", f"expected 0 < low < high and points >= 2, got {low}, {high}, {points}")
    return np.geomspace(low, high, points)


def refine_argmin(f: Callable[[float], float], low: float, high: float, points: int = 61,
                  levels: int = 8) -> float:
    """Minimiser of a scalar function on [low, high] by repeated grid refinement (no derivatives):
    each level evaluates ``points`` values and zooms onto the neighbours of the best one."""
    for _ in range(levels):
        grid = np.linspace(low, high, points)
        values = np.array([f(a) for a in grid])
        k = int(np.nanargmin(values))
        low, high = grid[max(k - 1, 0)], grid[min(k + 1, points - 1)]
    return float(0.5 * (low + high))


def gauss_hermite_rule(nodes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(points (K, m), weights (K,)) of the tensor-product Gauss–Hermite rule for z ~ N(0, I_m) with
    ``nodes[i]`` nodes on variable i (probabilists' rule, weight e^(−z²/2)/√(2π), weights summing to 1).

    Exact (up to rounding) for every polynomial whose degree in each variable i is at most
    2·nodes[i] − 1: the product rule integrates each monomial ∏ z_i^(k_i) variable by variable. The
    rows that compare an expectation with such a rule are sharper than Monte Carlo: the two sides
    then agree to rounding, not to a few standard errors.
    """
    rules = []
    for k in nodes:
        z, w = np.polynomial.hermite_e.hermegauss(int(k))
        rules.append((z, w / np.sqrt(2 * np.pi)))
    sizes = [len(z) for z, _ in rules]
    index = np.array(np.unravel_index(np.arange(int(np.prod(sizes))), sizes))  # (m, K)
    points = np.stack([rules[i][0][index[i]] for i in range(len(rules))], axis=1)
    weights = np.prod([rules[i][1][index[i]] for i in range(len(rules))], axis=0)
    return points, weights


def gauss_hermite_expectation(f: Callable[[np.ndarray], np.ndarray], nodes: Sequence[int]) -> float:
    """E[f(z)], z ~ N(0, I_m), by :func:`gauss_hermite_rule` (``f`` maps points (K, m) to values (K,))."""
    points, weights = gauss_hermite_rule(nodes)
    return float(np.sum(weights * f(points)))
