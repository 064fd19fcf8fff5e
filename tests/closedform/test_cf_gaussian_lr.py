"""Training/test inner rates, negative rates and the optimal one-step matrix map
(linmaml.closedform.gaussian_lr) against explicit inner steps on sampled tasks (Monte Carlo with
standard errors), scipy minimisers on the exact or sampled objective, and least squares."""
import numpy as np
import pytest
from scipy import optimize

from linmaml.checks._common import random_spd, relative_error
from linmaml.closedform.gaussian import (
    TaskMixture,
    expected_post_adaptation_loss,
    maml_fixed_point,
    optimal_inner_lr,
)
from linmaml.closedform.gaussian_lr import (
    best_scalar_lr,
    expected_one_step_map_loss,
    maml_trained_init,
    meta_test_loss,
    negative_lr_table,
    optimal_one_step_map,
)
from linmaml.tasks import RegressionFamily


def make_family(rng, d_in=3, d_out=2, condition=None, isotropic_tasks=False, **overrides):
    k = d_in * d_out
    F = rng.standard_normal((k, k)) / np.sqrt(k)
    params = dict(task_mean=rng.standard_normal((d_out, d_in)), task_cov=0.4 if isotropic_tasks else 0.3 * F @ F.T,
                  x_cov=random_spd(rng, d_in, 0.3, 2.0, condition=condition), noise_std=0.5, n_support=3, n_query=4)
    params.update(overrides)
    return RegressionFamily(d_in, d_out, **params)


def sampled_map_losses(family, W0, Q, tasks, rng, population=False):
    """Per task: W′ = W0 − Ĝ Q with the sampled support gradient (or (W0 − W_τ)Σ), then the query loss."""
    batch = family.sample(tasks, rng)
    if population:
        G = (W0[None] - batch.W) @ family.x_cov
    else:
        G = np.einsum("tno,tni->toi", batch.Xs @ W0.T - batch.Ys, batch.Xs) / family.n_support
    adapted = W0[None] - G @ Q
    residual = np.einsum("tqi,toi->tqo", batch.Xq, adapted) - batch.Yq
    return 0.5 * np.mean(np.sum(residual**2, axis=2), axis=1)


def z(samples, exact):
    return abs(samples.mean() - exact) / (samples.std(ddof=1) / np.sqrt(samples.size))


# --------------------------------------------------------------------------------------------------
# The one-step matrix map


@pytest.mark.parametrize("population", [False, True])
def test_matrix_map_loss_monte_carlo(population):
    rng = np.random.default_rng(1 + population)
    family = make_family(rng, condition=30.0)
    W0, Q = rng.standard_normal((2, 3)), 0.3 * rng.standard_normal((3, 3))
    losses = sampled_map_losses(family, W0, Q, 200_000, rng, population)
    assert z(losses, expected_one_step_map_loss(family, Q, W0, population)) < 3


def test_scalar_map_is_the_scalar_rate_expectation():
    rng = np.random.default_rng(3)
    family, W0 = make_family(rng), rng.standard_normal((2, 3))
    for alpha in (0.4, -0.3):
        assert expected_one_step_map_loss(family, alpha * np.eye(3), W0) == pytest.approx(
            expected_post_adaptation_loss(W0, family, alpha, 1), rel=1e-12)


@pytest.mark.parametrize("population", [False, True])
def test_optimal_map_minimises_the_exact_loss(population):
    rng = np.random.default_rng(4 + population)
    family = make_family(rng, condition=50.0)
    W0, Q = optimal_one_step_map(family, population)
    np.testing.assert_array_equal(W0, family.task_mean)
    d = family.d_in

    def loss(x):
        return expected_one_step_map_loss(family, x[d * 2:].reshape(d, d), x[:d * 2].reshape(2, d), population)

    start = np.concatenate([np.zeros(2 * d), np.eye(d).ravel() * 0.1])
    result = optimize.minimize(loss, start, method="BFGS", options={"gtol": 1e-11, "maxiter": 5000})
    assert loss(np.concatenate([W0.ravel(), Q.ravel()])) <= result.fun * (1 + 1e-10)
    assert relative_error(Q, result.x[2 * d:].reshape(d, d)) < 1e-4
    if population:  # Q = Σ⁻¹ solves every task in one step, from any W0: only the noise floor is left
        assert expected_one_step_map_loss(family, Q, rng.standard_normal((2, d)), True) == pytest.approx(
            0.5 * 2 * family.noise_std**2, rel=1e-9)
    else:
        assert relative_error(W0, result.x[:2 * d].reshape(2, d)) < 1e-4


def test_optimal_map_follows_sigma_with_isotropic_tasks_and_beats_the_best_scalar():
    rng = np.random.default_rng(6)
    family = make_family(rng, d_in=4, d_out=1, condition=100.0, isotropic_tasks=True)
    _, Q = optimal_one_step_map(family)
    lam, U = np.linalg.eigh(family.x_cov)
    in_sigma_basis = U.T @ Q @ U
    assert np.abs(in_sigma_basis - np.diag(np.diag(in_sigma_basis))).max() < 1e-12 * np.abs(Q).max()
    s, n, c = 0.4, 3, (0.4 * np.trace(family.x_cov) + 0.25) / 3  # S = Ω_in = 0.4·I (d_out = 1)
    np.testing.assert_allclose(np.diag(in_sigma_basis), s / ((1 + 1 / n) * s * lam + c), rtol=1e-12)
    alpha, scalar_loss = best_scalar_lr(family)
    assert expected_one_step_map_loss(family, Q) < scalar_loss
    assert alpha == pytest.approx(optimize.minimize_scalar(
        lambda a: expected_post_adaptation_loss(family.task_mean, family, a, 1), bounds=(0, 10), method="bounded",
        options={"xatol": 1e-12}).x, rel=1e-6)


@pytest.mark.parametrize("call,name", [
    (lambda f: optimal_one_step_map(TaskMixture([f])), "family"),
    (lambda f: optimal_one_step_map(f, population=None), "population"),
    (lambda f: expected_one_step_map_loss(f, np.eye(2)), "Q"),
    (lambda f: expected_one_step_map_loss(f, np.eye(3), W0=np.zeros((3, 3))), "W0"),
    (lambda f: expected_one_step_map_loss(f, 1e300 * np.eye(3)), "Q"),
])
def test_matrix_map_bad_input(call, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        call(make_family(np.random.default_rng(7)))


# --------------------------------------------------------------------------------------------------
# Training vs test rates, negative rates


@pytest.mark.parametrize("lr", [-0.3, -1.0])
def test_negative_rate_expectation_monte_carlo(lr):
    rng = np.random.default_rng(8)
    family = make_family(rng)
    W = rng.standard_normal((2, 3))
    losses = sampled_map_losses(family, W, lr * np.eye(3), 200_000, rng)
    assert z(losses, expected_post_adaptation_loss(W, family, lr, 1)) < 3


def test_meta_test_loss_of_a_mixture_monte_carlo_and_single_family_independence():
    rng = np.random.default_rng(9)
    mixture = TaskMixture([make_family(rng, condition=10.0), make_family(rng)], [0.3, 0.7])
    lr_train, lr_test = -0.4, 0.3
    W = maml_fixed_point(mixture, lr_train)
    counts = rng.multinomial(200_000, mixture.weights)
    losses = np.concatenate([sampled_map_losses(c, W, lr_test * np.eye(3), k, rng)
                             for c, k in zip(mixture.components, counts)])
    assert z(losses, meta_test_loss(mixture, lr_train, lr_test)) < 3
    assert meta_test_loss(mixture, lr_train, lr_test) != pytest.approx(meta_test_loss(mixture, 0.3, lr_test))
    single = mixture.components[0]
    assert meta_test_loss(single, -0.5, 0.2) == pytest.approx(meta_test_loss(single, 0.5, 0.2), rel=1e-10)


def test_maml_trained_init_minimises_the_explicit_finite_task_objective():
    rng = np.random.default_rng(10)
    family = make_family(rng, n_support=2, n_query=3)
    batch = family.sample(7, rng)
    for lr in (-0.5, 0.3):
        def objective(x):
            W = x.reshape(2, 3)
            total = 0.0
            for Xs, Ys, Xq, Yq in batch:
                adapted = W - lr * (Xs @ W.T - Ys).T @ Xs / Xs.shape[0]
                total += 0.5 * np.mean(np.sum((Xq @ adapted.T - Yq) ** 2, axis=1))
            return total

        result = optimize.minimize(objective, np.zeros(6), method="BFGS", options={"gtol": 1e-12})
        assert relative_error(maml_trained_init(batch, lr), result.x.reshape(2, 3)) < 1e-6


def test_negative_lr_table_reproduces_bernacchia():
    # Few noisy points per task, few tasks: the best meta-TRAINING rate is negative, the best test
    # rate positive; the gap to lr_train = 0 is many paired standard errors.
    family = RegressionFamily(5, 1, task_mean=0.0, task_cov=0.05, x_cov=1.0, noise_std=1.0, n_support=5, n_query=5)
    rates = [-0.5, -0.25, 0.0, 0.25]
    table = negative_lr_table(family, rates, n_tasks=10, repeats=150, seed=0)
    assert table["best_lr_train"] < 0 < table["lr_test"] == table["optimal_lr_test"]
    zero = rates.index(0.0)
    best = rates.index(table["best_lr_train"])
    assert table["test_loss"][zero] - table["test_loss"][best] > 3 * table["gap_se"][zero]
    # Every entry is above the infinitely-many-tasks loss (the init is noisier than M).
    assert min(table["test_loss"]) > table["infinite_tasks_loss"]
    # The exact test side agrees with sampled test tasks at one trained init.
    rng = np.random.default_rng(11)
    init = maml_trained_init(family.sample(10, rng), -0.25)
    losses = sampled_map_losses(family, init, table["lr_test"] * np.eye(5), 100_000, rng)
    assert z(losses, expected_post_adaptation_loss(init, family, table["lr_test"], 1)) < 3


@pytest.mark.parametrize("kwargs,name", [
    (dict(lr_train=0.1), "lr_train"),
    (dict(lr_train=[]), "lr_train"),
    (dict(lr_train=[0.1, np.nan]), r"lr_train\[1\]"),
    (dict(lr_test=np.inf), "lr_test"),
    (dict(n_tasks=0), "n_tasks"),
    (dict(repeats=1), "repeats"),
])
def test_negative_lr_table_bad_input(kwargs, name):
    args = dict(family=RegressionFamily(2, 1), lr_train=[0.0, 0.1], n_tasks=3, repeats=3)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        negative_lr_table(**args)


def test_meta_test_loss_bad_rates():
    family = RegressionFamily(2, 1)
    with pytest.raises(ValueError, match="^lr_train"):
        meta_test_loss(family, np.nan, 0.1)
    with pytest.raises(ValueError, match="^lr_test"):
        meta_test_loss(family, 0.1, 1e300)


def test_optimal_inner_lr_is_the_best_test_rate_even_when_negative_rates_are_allowed():
    rng = np.random.default_rng(12)
    family = make_family(rng)
    W = rng.standard_normal((2, 3))
    alpha = optimal_inner_lr(W, family)
    grid = np.linspace(-2, 2, 401)
    assert expected_post_adaptation_loss(W, family, alpha) <= min(expected_post_adaptation_loss(W, family, a)
                                                                  for a in grid)
