"""Verification rows for the symbolic derivations and the exact scalar-chain objective (no torch).

The scalar objective is computed three independent ways — the sympy polynomial evaluated in exact
rational arithmetic, Gauss–Hermite quadrature (``closedform.scalar``), and adaptive numerical
integration of a plain inner loop (scipy ``quad``) — the quadrature's node count is shown sufficient
*and* minimal in exact rational arithmetic, and the matrix one-step update from non-commutative
symbols is compared with ``deep_linear.adapt`` and ``preconditioner``. Errors are
``_common.relative_error`` (‖a − b‖_F / ‖b‖_F, b the reference side). Rows start with "symbolic:"
(one, the compiled polynomial against the same polynomial evaluated exactly, is a smoke row).
"""
from __future__ import annotations

import numpy as np
import sympy as sp
from scipy import integrate

from linmaml.checks._common import random_layers, random_weights, random_widths, relative_error, worst_of
from linmaml.closedform import deep_linear as dl, scalar, symbolic
from linmaml.verification import CheckResult, identity


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
    """Gauss–Hermite quadrature (checks linmaml.closedform.scalar.scalar_maml_loss and
    linmaml.closedform.scalar.scalar_maml_grad) vs the sympy polynomial J and ∂J/∂w of
    linmaml.closedform.symbolic.scalar_objective evaluated in exact rationals at random float inputs."""
    cases = [(1, k) for k in range(0, 6)] + [(2, k) for k in range(0, 3)] + [(3, 1), (4, 1)]
    worst = 0.0
    for depth, steps in cases:
        derived = symbolic.scalar_objective(depth, steps)
        ws, lr, m, s, v = _random_problem(rng, depth)
        exact = float(derived.evaluate_exact(ws, lr, m, s, v))
        exact_grad = [float(g) for g in derived.evaluate_exact(ws, lr, m, s, v, gradient=True)]
        worst = worst_of(worst, relative_error(scalar.scalar_maml_loss(ws, lr, steps, m, s, v), exact),
                         relative_error(list(scalar.scalar_maml_grad(ws, lr, steps, m, s, v)), exact_grad))
    return CheckResult(len(cases), worst, "max relative error of value and gradient")


@identity("smoke: symbolic lambdified objective and gradient vs the same polynomial in rationals", 1e-12)
def _lambdify_vs_exact(rng):
    """The numpy functions compiled from the polynomial (checks
    linmaml.closedform.symbolic.ScalarObjective.lambdify and
    linmaml.closedform.symbolic.ScalarObjective.lambdify_gradient) vs the same polynomial
    evaluated in exact rationals. Smoke: both sides read one derived polynomial, so this checks the
    compilation to numpy (broadcasting, float evaluation), not the derivation."""
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
            worst = worst_of(worst, relative_error(f(*batch, lr, m, s, v), np.array([exact, exact])),
                             relative_error(list(grad(*ws, lr, m, s, v)), exact_grad))
    return CheckResult(2 * len(cases), worst, "max relative error of value and gradient")


@identity("symbolic: scalar.py vs adaptive integration of a direct inner loop", 1e-10)
def _quadrature_vs_quad(rng):
    """Gauss–Hermite quadrature (checks linmaml.closedform.scalar.scalar_maml_loss) vs
    scipy.integrate.quad over the Gaussian density of a plain inner loop (depths 1–4)."""
    cases = [(1, 2), (2, 1), (2, 3), (3, 2), (4, 1), (4, 2)]
    worst = 0.0
    for depth, steps in cases:
        ws, lr, m, s, v = _random_problem(rng, depth)

        def integrand(z):
            a = np.array([m + s * z])
            return float(_direct_task_loss(ws, a, lr, steps, v)[0]) * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)

        # |z| ≤ 12 loses at most a Gaussian tail of 1e-32 relative to polynomial growth of these degrees.
        reference = integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-13, limit=400, points=[0.0])[0]
        worst = worst_of(worst, relative_error(scalar.scalar_maml_loss(ws, lr, steps, m, s, v), reference))
    return CheckResult(len(cases), worst, "relative error")


def _exact_task_loss(ws, a, lr, steps: int, v):
    """½v(p_k − a)² as a polynomial in z (``a`` a sympy Poly in z), by the same plain loop as
    :func:`_direct_task_loss`, in exact rational arithmetic."""
    one = a ** 0
    ws = [one * w for w in ws]
    for _ in range(steps):
        residual = (_product(ws, one) - a) * (lr * v)
        ws = [w - residual * _product(ws[:j] + ws[j + 1:], one) for j, w in enumerate(ws)]
    return (_product(ws, one) - a) ** 2 * (v / 2)


def _product(polys, one):
    out = one
    for q in polys:
        out = out * q
    return out


def _hermite(n: int, z):
    """The probabilists' Hermite polynomial He_n (monic, orthogonal for N(0, 1)) by its recurrence."""
    previous, current = sp.Poly(1, z, domain=sp.QQ), sp.Poly(z, z, domain=sp.QQ)
    if n == 0:
        return previous
    for k in range(1, n):
        previous, current = current, current * sp.Poly(z, z, domain=sp.QQ) - previous * k
    return current


def _gaussian_mean(poly):
    """E[poly(z)], z ~ N(0, 1), exactly: E[z^k] = (k − 1)!! for even k, 0 for odd k."""
    return sum((c * sp.factorial2(k - 1) for (k,), c in poly.terms() if k % 2 == 0), sp.Rational(0))


@identity("symbolic: Gauss-Hermite node count is minimal (N exact, N-1 not; exact rationals)", 1e-12)
def _node_count_minimal(rng):
    """The node count N (checks linmaml.closedform.scalar.quadrature_nodes) is sufficient *and*
    minimal, in exact rational arithmetic, and linmaml.closedform.scalar.scalar_maml_loss equals the
    exact expectation.

    The per-task loss of a plain inner loop with rational w, α, m, s, v is a polynomial p(z) in the
    task's standard normal z (a = m + s z). An m-node Gauss rule for N(0, 1) returns exactly E[p mod
    He_m] (its nodes are the roots of He_m and it integrates degree ≤ 2m − 1 exactly), so the rule's
    value is computed in rationals without irrational nodes. With N nodes it must equal E[p]; with
    N − 1 it must differ — in rationals, since the gap (the leading coefficient times (N − 1)!) can be
    far below float resolution. The error is the float rule's relative error against the exact
    expectation, and infinite if N − 1 nodes were already exact or N were not.
    """
    z = sp.Symbol("z")
    cases = [(1, 0), (1, 3), (2, 1), (2, 2), (2, 3), (2, 4), (3, 1), (3, 2), (4, 1), (4, 2)]
    worst, smallest_gap = 0.0, np.inf
    rational = lambda low, high, den: sp.Rational(int(rng.integers(low, high + 1)), den)  # noqa: E731
    for depth, steps in cases:
        ws = [rational(3, 9, 8) * int(rng.choice([-1, 1])) for _ in range(depth)]
        lr, m, s, v = rational(1, 9, 64), rational(-8, 8, 8), rational(1, 6, 8), rational(4, 12, 8)
        p = _exact_task_loss(ws, sp.Poly(m + s * z, z, domain=sp.QQ), lr, steps, v)
        n = scalar.quadrature_nodes(depth, steps)
        exact = _gaussian_mean(p)
        with_n = _gaussian_mean(p.rem(_hermite(n, z)))
        with_fewer = _gaussian_mean(p.rem(_hermite(n - 1, z)))
        if with_n != exact or with_fewer == exact:
            return CheckResult(len(cases), np.inf, f"depth {depth}, {steps} steps: N = {n} is not minimal-exact")
        smallest_gap = min(smallest_gap, abs(float((with_fewer - exact) / exact)))
        floats = [float(w) for w in ws]
        rule = scalar.scalar_maml_loss(floats, float(lr), steps, float(m), float(s), float(v))
        worst = worst_of(worst, relative_error(rule, float(exact)))
    note = f"relative error of the float rule; N−1 nodes miss in every case (smallest exact gap {smallest_gap:.1e})"
    return CheckResult(len(cases), worst, note)


@identity("symbolic: non-commutative one-step update vs deep_linear.adapt", 1e-11)
def _matrix_update_vs_adapt(rng):
    """Σ_r α^r·(grouped term r) from MatrixSymbols (checks linmaml.closedform.symbolic.matrix_update)
    vs W_e after one step of linmaml.closedform.deep_linear.adapt (depths 1–4, random widths, random
    adapted layers, squared loss)."""
    worst, instances = 0.0, 0
    for depth in (1, 2, 3, 4):
        for _ in range(2):
            widths = random_widths(rng, depth)
            weights = random_weights(rng, widths)
            X, Y = rng.standard_normal((5, widths[0])), rng.standard_normal((5, widths[-1]))
            layers = random_layers(rng, depth)
            lr = float(rng.uniform(0.05, 0.5))
            G = dl.end_to_end_grad(weights, X, Y)
            stepped = dl.adapt(weights, X, Y, lr, 1, adapt_layers=layers)
            direct = dl.end_to_end(stepped) - dl.end_to_end(weights)
            derived = symbolic.matrix_update(depth, layers).evaluate(weights, G, lr)
            worst = worst_of(worst, relative_error(derived, direct))
            instances += 1
    return CheckResult(instances, worst, "relative error of W_e′ − W_e")


@identity("symbolic: P read off the α¹ term of the expanded adapted map vs preconditioner()", 1e-12)
def _kronecker_vs_preconditioner(rng):
    """P read off the sympy expansion of the adapted map (checks linmaml.closedform.preconditioner.preconditioner and
    linmaml.closedform.symbolic.MatrixUpdate.evaluate_preconditioner): the α¹ coefficient of W_e′ (the
    non-commutative expansion of linmaml.closedform.symbolic.matrix_update, grouped by powers of α) is linear in G,
    so evaluating it at every basis matrix G = E_k gives P column by column, vec(α¹ term at E_k) = −P e_k. No
    Kronecker product is formed on this side; both the closed form's Kronecker sum and the symbolic one are
    compared with it."""
    # looked up when the row runs, so that a test can swap preconditioner() for a wrong one and see the row fail
    from linmaml.closedform.preconditioner import preconditioner

    worst, instances = 0.0, 0
    for depth in (1, 2, 3, 4):
        widths = random_widths(rng, depth)
        weights = random_weights(rng, widths)
        size = widths[-1] * widths[0]
        for layers in (None, [depth - 1]):
            update = symbolic.matrix_update(depth, layers)
            read_off = np.zeros((size, size))
            for k in range(size):
                basis = np.zeros(size)
                basis[k] = 1.0
                G = basis.reshape(widths[-1], widths[0], order="F")
                read_off[:, k] = -update.evaluate_order(1, weights, G).reshape(-1, order="F")
            worst = worst_of(worst, relative_error(preconditioner(weights, adapt_layers=layers), read_off),
                             relative_error(update.evaluate_preconditioner(weights), read_off))
            instances += 1
    return CheckResult(instances, worst, "relative error of P against the one read off the expansion")
