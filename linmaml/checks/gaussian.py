"""Verification rows for the Gaussian task-family expectations (numpy, scipy, sympy; no torch).

Each row compares :mod:`linmaml.closedform.gaussian` with a computation that shares none of its
algebra: an exact symbolic expectation (sympy, monomial by monomial over Gaussian moments), Monte
Carlo over sampled tasks (errors in standard errors, tolerance 3), a grid search, or gradient
descent on the exact objective with finite-difference gradients. Rows start with "gaussian:".
"""
from __future__ import annotations

import numpy as np

from linmaml.closedform import gaussian as g
from linmaml.tasks import RegressionFamily
from linmaml.verification import CheckResult, identity

# --------------------------------------------------------------------------------------------------
# Random instances


def _spd(rng: np.random.Generator, d: int, low: float = 0.3, high: float = 2.0) -> np.ndarray:
    """A random symmetric positive definite matrix with eigenvalues in [low, high]."""
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * rng.uniform(low, high, size=d)) @ Q.T


def _family(rng: np.random.Generator, d_in: int, d_out: int, **overrides) -> RegressionFamily:
    k = d_in * d_out
    F = rng.standard_normal((k, k)) / np.sqrt(k)
    params = dict(task_mean=rng.standard_normal((d_out, d_in)), task_cov=0.3 * F @ F.T,
                  x_cov=_spd(rng, d_in), noise_std=float(rng.uniform(0.1, 0.6)),
                  n_support=int(rng.integers(1, 7)), n_query=int(rng.integers(2, 8)))
    params.update(overrides)
    return RegressionFamily(d_in, d_out, **params)


def _z_score(samples: np.ndarray, exact: float) -> float:
    """|mean − exact| in standard errors of the mean."""
    se = samples.std(ddof=1) / np.sqrt(samples.size)
    return float(abs(samples.mean() - exact) / se)


# --------------------------------------------------------------------------------------------------
# Wishart moment


def _exact_gaussian_expectation_of_wishart_product(L, A, n: int):
    """E[Σ̂ A Σ̂] in sympy, with x = L z, z ~ N(0, I): expand in the z's and replace each monomial
    by its moment E[∏ z^k] = ∏ (k − 1)!! (0 for odd k). Exact, shares nothing with the closed form."""
    import sympy as sp

    d = L.shape[0]
    zs = [[sp.Symbol(f"z{i}_{k}") for k in range(d)] for i in range(n)]
    Sigma_hat = sp.zeros(d, d)
    for row in zs:
        x = L * sp.Matrix(row)
        Sigma_hat += x * x.T
    product = (Sigma_hat / n) * A * (Sigma_hat / n)
    flat = [z for row in zs for z in row]

    def moment(k: int) -> int:
        return 0 if k % 2 else int(sp.factorial2(k - 1)) if k else 1

    out = sp.zeros(d, d)
    for a in range(d):
        for b in range(d):
            total = 0
            for exponents, coefficient in sp.Poly(sp.expand(product[a, b]), *flat).terms():
                weight = 1
                for k in exponents:
                    weight *= moment(k)
                total += coefficient * weight
            out[a, b] = sp.expand(total)
    return out


@identity("gaussian: Wishart moment E[Σ̂AΣ̂] vs exact symbolic expectation", 1e-12)
def _wishart_symbolic(rng):
    """Symbolic d = 2 (n = 1, 2, general A, Σ = LLᵀ): the formula holds identically; then the numeric
    wishart_moment equals the exact rational expectation at random rational instances (d = 2, 3)."""
    import sympy as sp

    l11, l21, l22 = sp.symbols("l11 l21 l22")
    L = sp.Matrix([[l11, 0], [l21, l22]])
    A = sp.Matrix(2, 2, sp.symbols("a11 a12 a21 a22"))
    Sigma = L * L.T
    worst, instances = 0.0, 0
    for n in (1, 2):
        exact = _exact_gaussian_expectation_of_wishart_product(L, A, n)
        formula = Sigma * A * Sigma + (Sigma * A.T * Sigma + (A * Sigma).trace() * Sigma) / n
        if sp.expand(exact - formula) != sp.zeros(2, 2):
            return CheckResult(instances + 1, float("inf"), f"symbolic identity fails for d=2, n={n}")
        instances += 1
    for d, n in ((2, 3), (3, 1)):
        L_num = sp.Matrix(d, d, lambda i, j: sp.Rational(int(rng.integers(-9, 10)), 4) if j <= i else 0)
        for i in range(d):
            L_num[i, i] = sp.Rational(int(rng.integers(1, 10)), 4)
        A_num = sp.Matrix(d, d, lambda i, j: sp.Rational(int(rng.integers(-9, 10)), 3))
        exact = np.array(_exact_gaussian_expectation_of_wishart_product(L_num, A_num, n), dtype=float)
        Sigma_num = np.array(L_num * L_num.T, dtype=float)
        numeric = g.wishart_moment(Sigma_num, np.array(A_num, dtype=float), n)
        worst = max(worst, float(np.abs(numeric - exact).max() / np.abs(exact).max()))
        instances += 1
    return CheckResult(instances, worst, "symbolic d=2 (n=1,2) is an identity; numeric vs exact rationals")


@identity("gaussian: Wishart moment vs Monte Carlo (standard errors)", 3.0)
def _wishart_monte_carlo(rng):
    """tr(Bᵀ Σ̂AΣ̂) averaged over sampled Σ̂ (general, non-symmetric A) vs the closed form, in SEs."""
    worst, samples = 0.0, 100_000
    for _ in range(3):
        d, n = int(rng.integers(2, 5)), int(rng.integers(1, 7))
        Sigma, A, B = _spd(rng, d), rng.standard_normal((d, d)), rng.standard_normal((d, d))
        X = rng.standard_normal((samples, n, d)) @ np.linalg.cholesky(Sigma).T
        S_hat = np.einsum("tni,tnj->tij", X, X) / n
        stat = np.einsum("tij,jk,tki->t", S_hat, A, S_hat @ B.T)  # tr(Σ̂ A Σ̂ Bᵀ)
        worst = max(worst, _z_score(stat, float(np.sum(B * g.wishart_moment(Sigma, A, n)))))
    return CheckResult(3, worst, f"max |error| in Monte Carlo standard errors ({samples} samples each)")


# --------------------------------------------------------------------------------------------------
# Expected post-adaptation loss


def _one_step_query_losses(family: RegressionFamily, W: np.ndarray, lr: float, tasks: int, rng) -> np.ndarray:
    """Per task: one explicit gradient step on the sampled support set, then the sampled query loss."""
    batch = family.sample(tasks, rng)
    n = family.n_support
    residual = batch.Xs @ W.T - batch.Ys  # (T, n, d_out)
    adapted = W - lr * np.einsum("tno,tni->toi", residual, batch.Xs) / n
    query = np.einsum("tqi,toi->tqo", batch.Xq, adapted) - batch.Yq
    return 0.5 * np.mean(np.sum(query**2, axis=2), axis=1)


@identity("gaussian: expected one-step query loss vs Monte Carlo (standard errors)", 3.0)
def _one_step_loss_monte_carlo(rng):
    """Sampled tasks (support noise, few support points), a real inner step, the real query loss."""
    worst, tasks = 0.0, 60_000
    for _ in range(3):
        d_in, d_out = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        family = _family(rng, d_in, d_out)
        W = rng.standard_normal((d_out, d_in))
        lr = float(rng.uniform(0.05, 0.5))
        losses = _one_step_query_losses(family, W, lr, tasks, rng)
        worst = max(worst, _z_score(losses, g.expected_post_adaptation_loss(W, family, lr, steps=1)))
    return CheckResult(3, worst, f"max |error| in Monte Carlo standard errors ({tasks} tasks each)")


@identity("gaussian: expected k-step population loss vs Monte Carlo (standard errors)", 3.0)
def _population_loss_monte_carlo(rng):
    """Sampled task maps, k explicit population gradient steps W ← W − α(W − W_τ)Σ, exact query loss."""
    worst = 0.0
    tasks = 60_000
    for _ in range(3):
        d_in, d_out = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        family = _family(rng, d_in, d_out)
        W = rng.standard_normal((d_out, d_in))
        lr, steps = float(rng.uniform(0.05, 0.5)), int(rng.integers(2, 6))
        W_tau = family.sample_weights(tasks, rng)
        adapted = np.broadcast_to(W, W_tau.shape).copy()
        for _ in range(steps):
            adapted -= lr * (adapted - W_tau) @ family.x_cov
        D = adapted - W_tau
        losses = 0.5 * np.einsum("toi,ij,toj->t", D, family.x_cov, D) + 0.5 * d_out * family.noise_std**2
        worst = max(worst, _z_score(losses, g.expected_post_adaptation_loss(W, family, lr, steps=steps)))
    return CheckResult(3, worst, f"max |error| in Monte Carlo standard errors ({tasks} tasks each)")


# --------------------------------------------------------------------------------------------------
# Optimal inner learning rate


def _grid_argmin(f, low: float, high: float, points: int = 61, levels: int = 8) -> float:
    """Minimise a one-dimensional function by a grid, zooming into the best cell ``levels`` times."""
    for _ in range(levels):
        grid = np.linspace(low, high, points)
        values = np.array([f(x) for x in grid])
        best = int(np.argmin(values))
        width = grid[1] - grid[0]
        low, high = max(grid[0], grid[best] - width), min(grid[-1], grid[best] + width)
    return float(grid[best])


@identity("gaussian: optimal inner lr vs grid search on the exact loss", 1e-6)
def _optimal_lr_grid(rng):
    """Isotropic closed form, general Σ, a mixture (one step, finite n) and population k = 1..5 steps."""
    cases = []
    d_in, d_out = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    cases.append((_family(rng, d_in, d_out, x_cov=float(rng.uniform(0.5, 2.0))), 1, None))
    cases.append((_family(rng, d_in, d_out), 1, None))
    mixture = g.TaskMixture([_family(rng, d_in, d_out), _family(rng, d_in, d_out)], [0.3, 0.7])
    cases.append((mixture, 1, None))
    for steps in range(1, 6):
        cases.append((_family(rng, d_in, d_out), steps, True))
    worst = 0.0
    for family, steps, population in cases:
        W = rng.standard_normal((d_out, d_in))
        alpha = g.optimal_inner_lr(W, family, steps=steps, population=population)
        components = family.components if isinstance(family, g.TaskMixture) else (family,)
        top = 2.0 / min(np.linalg.eigvalsh(c.x_cov).min() for c in components)

        def loss(a):
            return g.expected_post_adaptation_loss(W, family, a, steps=steps, population=population)

        searched = _grid_argmin(loss, 0.0, top)
        if loss(alpha) > loss(searched) * (1 + 1e-13):
            return CheckResult(len(cases), float("inf"), "grid search found a lower loss than α*")
        worst = max(worst, abs(searched - alpha) / alpha)
    return CheckResult(len(cases), worst, "relative distance of the grid minimiser from α*")


# --------------------------------------------------------------------------------------------------
# Fixed points


def _steepest_descent(f, W0: np.ndarray, iterations: int = 400, h: float = 1e-3) -> np.ndarray:
    """Outer-loop gradient descent on a quadratic f: central-difference gradients (exact for
    quadratics up to rounding) and the exact step length along −∇f from three function values."""
    W = W0.copy()
    for _ in range(iterations):
        grad = np.zeros_like(W)
        for idx in np.ndindex(W.shape):
            E = np.zeros_like(W)
            E[idx] = h
            grad[idx] = (f(W + E) - f(W - E)) / (2 * h)
        norm = np.sqrt(np.sum(grad**2))
        if norm < 1e-11:
            break
        direction = grad / norm
        f0, fp, fm = f(W), f(W - h * direction), f(W + h * direction)
        curvature = (fp - 2 * f0 + fm) / h**2
        W = W - (norm / curvature) * direction
    return W


@identity("gaussian: MAML and ERM fixed points vs outer-loop gradient descent", 1e-7)
def _fixed_points_descent(rng):
    """Mixtures of families with different Σ_c (where MAML ≠ ERM): closed-form minimisers vs descent
    on the exact objective, for 0 (ERM), 1 (finite n) and 2–4 (population) inner steps."""
    worst, instances = 0.0, 0
    for steps in (0, 1, 2, 4):
        d_in, d_out = int(rng.integers(2, 4)), int(rng.integers(1, 3))
        components = [_family(rng, d_in, d_out, x_cov=_spd(rng, d_in, 0.5, 1.5)) for _ in range(3)]
        mixture = g.TaskMixture(components, list(rng.uniform(0.2, 1.0, size=3)))
        lr = float(rng.uniform(0.05, 0.3))
        closed = g.erm_fixed_point(mixture) if steps == 0 else g.maml_fixed_point(mixture, lr, steps)
        descended = _steepest_descent(lambda W: g.expected_post_adaptation_loss(W, mixture, lr, steps),
                                      np.zeros((d_out, d_in)))
        worst = max(worst, float(np.linalg.norm(descended - closed) / np.linalg.norm(closed)))
        instances += 1
    return CheckResult(instances, worst, "relative Frobenius distance")
