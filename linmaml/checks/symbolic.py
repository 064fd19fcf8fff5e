"""Verification rows for the symbolic derivations and the exact scalar-chain objective (no torch).

The scalar objective is computed three independent ways — the sympy polynomial evaluated in exact
rational arithmetic, Gauss–Hermite quadrature (``closedform.scalar``), and adaptive numerical
integration of a plain inner loop (scipy ``quad``) — and the matrix one-step update from
non-commutative symbols is compared with ``deep_linear.adapt`` and ``preconditioner``. Rows start
with "symbolic:".
"""
from __future__ import annotations

import numpy as np

from linmaml.closedform import scalar, symbolic
from linmaml.verification import CheckResult, identity


def _relative(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300))


def _random_problem(rng, depth: int):
    """Initial weights of order one, a small inner rate, and a task distribution of order one."""
    ws = [float(w) for w in rng.uniform(0.3, 1.2, size=depth) * rng.choice([-1, 1], size=depth)]
    return ws, float(rng.uniform(0.02, 0.3)), float(rng.uniform(-1, 1)), float(rng.uniform(0.1, 0.8)), \
        float(rng.uniform(0.5, 1.5))


def _direct_task_loss(ws, a: np.ndarray, lr: float, steps: int, v: float) -> np.ndarray:
    """½v(p_k − a)² per task weight a, by a plain loop over layers and steps (no shared code)."""
    ws = [np.full_like(a, w) for w in ws]
    for _ in range(steps):
        p = np.prod(ws, axis=0)
        ws = [w - lr * v * (p - a) * np.prod([u for i, u in enumerate(ws) if i != j], axis=0)
              for j, w in enumerate(ws)]
    return 0.5 * v * (np.prod(ws, axis=0) - a) ** 2


@identity("symbolic: scalar objective and gradient, exact rationals vs Gauss-Hermite (scalar.py)", 1e-12)
def _symbolic_vs_quadrature(rng):
    """The sympy polynomial J and ∂J/∂w evaluated exactly at random float inputs vs scalar.py."""
    cases = [(1, k) for k in range(0, 6)] + [(2, k) for k in range(0, 3)] + [(3, 1), (4, 1)]
    worst = 0.0
    for depth, steps in cases:
        derived = symbolic.scalar_objective(depth, steps)
        ws, lr, m, s, v = _random_problem(rng, depth)
        exact = float(derived.evaluate_exact(ws, lr, m, s, v))
        exact_grad = [float(g) for g in derived.evaluate_exact(ws, lr, m, s, v, gradient=True)]
        worst = max(worst, _relative(scalar.scalar_maml_loss(ws, lr, steps, m, s, v), exact),
                    _relative(scalar.scalar_maml_grad(ws, lr, steps, m, s, v), exact_grad))
    return CheckResult(len(cases), worst, "max relative error of value and gradient")


@identity("symbolic: lambdified scalar objective and gradient vs exact rationals", 1e-12)
def _lambdify_vs_exact(rng):
    """The numpy functions compiled from the polynomial vs its exact value, on small grids of points."""
    cases = [(1, 3), (2, 1), (2, 2), (3, 1), (4, 1)]
    worst = 0.0
    for depth, steps in cases:
        derived = symbolic.scalar_objective(depth, steps)
        f, grad = derived.lambdify(), derived.lambdify_gradient()
        for _ in range(2):
            ws, lr, m, s, v = _random_problem(rng, depth)
            exact = float(derived.evaluate_exact(ws, lr, m, s, v))
            exact_grad = [float(g) for g in derived.evaluate_exact(ws, lr, m, s, v, gradient=True)]
            batch = [np.array([w, w]) for w in ws]  # also exercises broadcasting over arrays
            worst = max(worst, _relative(f(*batch, lr, m, s, v), [exact, exact]),
                        _relative(grad(*ws, lr, m, s, v), exact_grad))
    return CheckResult(2 * len(cases), worst, "max relative error of value and gradient")


@identity("symbolic: scalar.py vs adaptive integration of a direct inner loop", 1e-10)
def _quadrature_vs_quad(rng):
    """scalar_maml_loss vs scipy.integrate.quad over the Gaussian density of a plain loop (depths 1–4)."""
    from scipy import integrate

    cases = [(1, 2), (2, 1), (2, 3), (3, 2), (4, 1), (4, 2)]
    worst = 0.0
    for depth, steps in cases:
        ws, lr, m, s, v = _random_problem(rng, depth)

        def integrand(z):
            a = np.array([m + s * z])
            return float(_direct_task_loss(ws, a, lr, steps, v)[0]) * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)

        # |z| ≤ 12 loses at most a Gaussian tail of 1e-32 relative to polynomial growth of these degrees.
        reference = integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-13, limit=400, points=[0.0])[0]
        worst = max(worst, _relative(scalar.scalar_maml_loss(ws, lr, steps, m, s, v), reference))
    return CheckResult(len(cases), worst, "relative error")


@identity("symbolic: scalar.py node count is exact (vs a direct loop with twice the nodes)", 1e-12)
def _node_count_sufficient(rng):
    """Where sympy cannot expand (depth 2 with 5 steps, depth 4 with 3): the minimal Gauss rule of
    scalar.py equals an independent loop over a rule with 2n + 8 nodes — it would not if n were
    too small for the integrand's degree."""
    from scipy.special import roots_hermitenorm

    worst, cases = 0.0, [(2, 4), (2, 5), (3, 3), (4, 3)]
    for depth, steps in cases:
        ws, lr, m, s, v = _random_problem(rng, depth)
        lr, s = 0.3 * lr, 0.5 * s  # keep the inner loop tame over the wide reference rule
        n = scalar.quadrature_nodes(depth, steps)
        z, w = roots_hermitenorm(2 * n + 8)
        keep = w > 0
        reference = float(np.dot(w[keep] / w[keep].sum(), _direct_task_loss(ws, m + s * z[keep], lr, steps, v)))
        worst = max(worst, _relative(scalar.scalar_maml_loss(ws, lr, steps, m, s, v), reference))
    return CheckResult(len(cases), worst, "relative error")


@identity("symbolic: non-commutative one-step update vs deep_linear.adapt", 1e-11)
def _matrix_update_vs_adapt(rng):
    """Σ_r α^r·(grouped term r) from MatrixSymbols vs W_e after one explicit inner step (depths 1–4,
    random widths, random adapted layers, squared loss)."""
    from linmaml.closedform import deep_linear as dl

    worst, instances = 0.0, 0
    for depth in (1, 2, 3, 4):
        for _ in range(2):
            widths = [int(x) for x in rng.integers(1, 5, size=depth + 1)]
            weights = [rng.standard_normal((widths[j + 1], widths[j])) / np.sqrt(widths[j]) for j in range(depth)]
            X, Y = rng.standard_normal((5, widths[0])), rng.standard_normal((5, widths[-1]))
            layers = sorted(int(j) for j in rng.choice(depth, size=int(rng.integers(1, depth + 1)), replace=False))
            lr = float(rng.uniform(0.05, 0.5))
            G = dl.end_to_end_grad(weights, X, Y)
            stepped = dl.adapt(weights, X, Y, lr, 1, adapt_layers=layers)
            direct = dl.end_to_end(stepped) - dl.end_to_end(weights)
            derived = symbolic.matrix_update(depth, layers).evaluate(weights, G, lr)
            worst = max(worst, _relative(derived, direct))
            instances += 1
    return CheckResult(instances, worst, "relative error of W_e′ − W_e")


@identity("symbolic: Kronecker preconditioner of the α¹ term vs preconditioner()", 1e-12)
def _kronecker_vs_preconditioner(rng):
    """P from the symbolic Kronecker sum vs ``preconditioner`` and vs the α¹ term (vec(term) = −P vec G)."""
    from linmaml.closedform.preconditioner import preconditioner

    worst, instances = 0.0, 0
    for depth in (1, 2, 3, 4):
        widths = [int(x) for x in rng.integers(1, 5, size=depth + 1)]
        weights = [rng.standard_normal((widths[j + 1], widths[j])) for j in range(depth)]
        G = rng.standard_normal((widths[-1], widths[0]))
        for layers in (None, [depth - 1]):
            update = symbolic.matrix_update(depth, layers)
            P = update.evaluate_preconditioner(weights)
            first = update.evaluate_order(1, weights, G)
            worst = max(worst, _relative(P, preconditioner(weights, adapt_layers=layers)),
                        _relative(first.reshape(-1, order="F"), -P @ G.reshape(-1, order="F")))
            instances += 1
    return CheckResult(instances, worst, "relative error")
