"""The best diagonal one-step map, the one-step map applied to sampled tasks, the Bayes posterior
floor, and depth's step floor: each against an independent computation (a numerical minimiser, a
direct loop, the n×n form of the posterior, Monte Carlo with standard errors, a finite-difference
inner step)."""
import numpy as np
import pytest
from scipy.optimize import minimize

from linmaml.closedform import depth_step
from linmaml.closedform import gaussian_lr as glr
from linmaml.errors import ArgumentError
from linmaml.tasks import RegressionFamily


def _rotated_family(rng, d=4, kappa=30.0, n=12, sigma=0.3, omega_inverse=False):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    U = q * np.sign(np.diag(r))
    s = np.geomspace(1, 1 / kappa, d)
    Sigma = (U * s) @ U.T
    if omega_inverse:
        Omega = (U / s) @ U.T
    else:
        F = rng.standard_normal((d, d))
        Omega = 0.5 * F @ F.T / d + 0.1 * np.eye(d)
    return RegressionFamily(d, 1, task_mean=rng.standard_normal((1, d)), task_cov=Omega, x_cov=Sigma,
                            noise_std=sigma, n_support=n, n_query=3)


@pytest.mark.parametrize("population", [False, True])
def test_optimal_diagonal_map_matches_numerical_minimisation(population):
    rng = np.random.default_rng(3)
    for _ in range(3):
        family = _rotated_family(rng)
        W0, q = glr.optimal_diagonal_map(family, population)
        assert np.array_equal(W0, family.task_mean)
        result = minimize(lambda x: glr.expected_one_step_map_loss(family, np.diag(x), population=population),
                          np.full(family.d_in, 0.1), method="BFGS", options={"gtol": 1e-12, "maxiter": 10_000})
        assert np.allclose(q, result.x, rtol=1e-5, atol=1e-7)
        best = glr.expected_one_step_map_loss(family, np.diag(q), population=population)
        assert best <= result.fun * (1 + 1e-12)
        # between the best matrix map and the best scalar step
        _, Q = glr.optimal_one_step_map(family, population)
        assert glr.expected_one_step_map_loss(family, Q, population=population) <= best * (1 + 1e-12)
        if not population:
            assert best <= glr.best_scalar_lr(family)[1] * (1 + 1e-12)


def test_optimal_diagonal_map_is_q_star_when_axis_aligned():
    family = RegressionFamily(3, 1, task_mean=1.0, task_cov=np.diag([2.0, 0.5, 1.0]), x_cov=np.diag([1.0, 0.1, 3.0]),
                              noise_std=0.2, n_support=7, n_query=2)
    _, q = glr.optimal_diagonal_map(family)
    _, Q = glr.optimal_one_step_map(family)
    assert np.allclose(np.diag(q), Q, rtol=1e-12, atol=1e-14)


def test_apply_one_step_map_is_a_direct_loop():
    rng = np.random.default_rng(0)
    family = RegressionFamily(3, 2, task_mean=rng.standard_normal((2, 3)), task_cov=0.5, x_cov=1.0, noise_std=0.1,
                              n_support=5, n_query=2)
    batch = family.sample(6, 1)
    Q, W0 = rng.standard_normal((3, 3)), rng.standard_normal((2, 3))
    out = glr.apply_one_step_map(batch, Q, W0)
    for t, (Xs, Ys, _, _) in enumerate(batch):
        G = np.zeros((2, 3))
        for x, y in zip(Xs, Ys):
            G += np.outer(W0 @ x - y, x) / len(Xs)
        assert np.allclose(out[t], W0 - G @ Q, rtol=1e-13, atol=1e-13)


def test_bayes_posterior_mean_matches_the_n_by_n_form():
    rng = np.random.default_rng(1)
    family = _rotated_family(rng, n=6)
    batch = family.sample(5, 2)
    mean = glr.bayes_posterior_mean(family, batch.Xs, batch.Ys)
    m, Omega, var = family.task_mean[0], family.task_cov, family.noise_std ** 2
    for t, (X, y, _, _) in enumerate(batch):
        K = X @ Omega @ X.T + var * np.eye(len(X))
        direct = m + Omega @ X.T @ np.linalg.solve(K, y[:, 0] - X @ m)
        assert np.allclose(mean[t, 0], direct, rtol=1e-10, atol=1e-10)


def test_bayes_floor_matches_monte_carlo_and_is_below_q_star():
    rng = np.random.default_rng(5)
    family = _rotated_family(rng, kappa=10.0, n=8, sigma=0.5, omega_inverse=True)
    batch = family.sample(40_000, 7)
    floor = glr.bayes_conditional_loss(family, batch.Xs)
    post = glr.bayes_posterior_mean(family, batch.Xs, batch.Ys)
    D = (post - batch.W)[:, 0]
    realised = 0.5 * np.einsum("ti,ij,tj->t", D, family.x_cov, D) + 0.5 * family.noise_std ** 2
    diff = realised - floor
    z = abs(diff.mean()) / (diff.std(ddof=1) / np.sqrt(diff.size))
    assert z < 4.0
    _, Q = glr.optimal_one_step_map(family)
    assert floor.mean() < glr.expected_one_step_map_loss(family, Q)


def test_bayes_refuses_what_it_cannot_do():
    fam = RegressionFamily(2, 2, task_mean=1.0, task_cov=1.0, x_cov=1.0, noise_std=0.1, n_support=3, n_query=1)
    with pytest.raises(ArgumentError) as info:
        glr.bayes_conditional_loss(fam, np.zeros((1, 3, 2)))
    assert info.value.argument == "family"
    fam = RegressionFamily(2, 1, task_mean=1.0, task_cov=1.0, x_cov=1.0, noise_std=0.0, n_support=3, n_query=1)
    with pytest.raises(ArgumentError):
        glr.bayes_posterior_mean(fam, np.zeros((1, 3, 2)), np.zeros((1, 3, 1)))


def _chain(rng, widths):
    return [rng.standard_normal((widths[j + 1], widths[j])) * rng.uniform(0.3, 2.0) for j in range(len(widths) - 1)]


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_step_along_map_is_the_first_order_step_and_above_the_floor(depth):
    rng = np.random.default_rng(depth)
    for _ in range(20):
        widths = [3] + [int(rng.integers(1, 5)) for _ in range(depth - 1)] + [1]
        weights = _chain(rng, widths)  # unbalanced on purpose
        W_e = weights[0]
        for W in weights[1:]:
            W_e = W @ W_e
        lr = float(rng.uniform(0.01, 2.0))
        value = depth_step.step_along_map(weights, lr)
        u = W_e[0] / np.linalg.norm(W_e)
        # independent side: one explicit gradient step of every layer on the linear loss <u, W_e>,
        # by hand (dW_j = above_jᵀ u below_jᵀ), read off along u to first order (central difference)
        def moved(h):
            new = []
            for j in range(depth):
                above = np.eye(weights[-1].shape[0])  # W_L ⋯ W_{j+1}
                for W in reversed(weights[j + 1:]):
                    above = above @ W
                below = np.eye(widths[0])
                for W in weights[:j]:
                    below = W @ below
                new.append(weights[j] - h * above.T @ u[None, :] @ below.T)
            out = new[0]
            for W in new[1:]:
                out = W @ out
            return out[0]
        h = 1e-6
        first_order = -(moved(h) - moved(-h)) @ u / (2 * h)
        assert np.isclose(value, lr * first_order, rtol=1e-6)
        assert value >= depth_step.step_floor(np.linalg.norm(W_e), lr, depth) * (1 - 1e-12)


def test_step_floor_is_reached_by_a_balanced_scalar_chain():
    for depth in (1, 2, 3, 5):
        w = 1.3
        weights = [np.array([[w]]) for _ in range(depth)]
        assert np.isclose(depth_step.step_along_map(weights, 0.2), depth_step.step_floor(w ** depth, 0.2, depth),
                          rtol=1e-13)


def test_overshoot_loss_floor():
    family = RegressionFamily(4, 1, task_mean=1.0, task_cov=1.0, x_cov=1.0, noise_std=0.1, n_support=40, n_query=2)
    c_star, best = glr.best_scalar_lr(family)
    # below the threshold alpha*2*||M|| <= c*, the floor is the best scalar step itself
    assert np.isclose(depth_step.overshoot_loss_floor(family, 0.9 * c_star / 4, 2), best, rtol=1e-12)
    # above it the loss grows; an explicit Q with the floor along M and c* elsewhere
    alpha = 1.0
    floor = depth_step.step_floor(2.0, alpha, 2)
    assert floor == pytest.approx(4.0)
    u = np.full(4, 0.5)
    Q = c_star * np.eye(4) + (floor - c_star) * np.outer(u, u)
    value = depth_step.overshoot_loss_floor(family, alpha, 2)
    assert value == pytest.approx(glr.expected_one_step_map_loss(family, Q), rel=1e-12)
    assert value > 1.5 * best
    # any other Q with u^T Q u = floor is no better (random perturbations orthogonal to the constraint)
    rng = np.random.default_rng(0)
    for _ in range(20):
        E = rng.standard_normal((4, 4))
        E -= (u @ E @ u) * np.outer(u, u)
        assert glr.expected_one_step_map_loss(family, Q + 0.05 * E) >= value
    with pytest.raises(ArgumentError):
        depth_step.overshoot_loss_floor(RegressionFamily(2, 1, task_mean=1.0, task_cov=1.0,
                                                         x_cov=np.diag([1.0, 2.0])), 0.1, 2)
