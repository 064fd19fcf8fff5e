"""linmaml.closedform.gaussian against independent computations: scalar chi-square moments, explicit
inner loops, Monte Carlo with standard errors, scipy minimisers and Kronecker normal equations."""
import numpy as np
import pytest
from scipy import optimize

from linmaml.closedform.gaussian import (
    TaskMixture,
    erm_fixed_point,
    expected_post_adaptation_loss,
    maml_fixed_point,
    optimal_inner_lr,
    wishart_moment,
)
from linmaml.tasks import RegressionFamily


def spd(rng, d, low=0.4, high=1.8):
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * rng.uniform(low, high, size=d)) @ Q.T


def family(rng, d_in=3, d_out=2, **overrides):
    k = d_in * d_out
    F = rng.standard_normal((k, k)) / np.sqrt(k)
    params = dict(task_mean=rng.standard_normal((d_out, d_in)), task_cov=0.2 * F @ F.T, x_cov=spd(rng, d_in),
                  noise_std=0.3, n_support=4, n_query=6)
    params.update(overrides)
    return RegressionFamily(d_in, d_out, **params)


# --------------------------------------------------------------------------------------------------
# Wishart moment


@pytest.mark.parametrize("n", [1, 2, 7])
def test_wishart_moment_scalar_case_is_a_chi_square_moment(n):
    # d = 1: Σ̂ = λ·χ²_n/n, so E[Σ̂ a Σ̂] = a λ² (1 + 2/n).
    lam, a = 1.7, -0.6
    assert wishart_moment([[lam]], [[a]], n)[0, 0] == pytest.approx(a * lam**2 * (1 + 2 / n), rel=1e-15)


def test_wishart_moment_symmetric_form_and_transpose_term():
    rng = np.random.default_rng(0)
    Sigma, A = spd(rng, 3), rng.standard_normal((3, 3))
    S = A + A.T
    np.testing.assert_allclose(wishart_moment(Sigma, S, 4),
                               (1 + 1 / 4) * Sigma @ S @ Sigma + np.trace(S @ Sigma) * Sigma / 4, rtol=1e-13)
    # For a non-symmetric A the two forms differ by Σ(Aᵀ − A)Σ/n: the general form is the right one.
    assert not np.allclose(wishart_moment(Sigma, A, 4),
                           (1 + 1 / 4) * Sigma @ A @ Sigma + np.trace(A @ Sigma) * Sigma / 4)


def test_wishart_moment_monte_carlo_entries():
    rng = np.random.default_rng(1)
    d, n, samples = 3, 2, 200_000
    Sigma, A = spd(rng, d), rng.standard_normal((d, d))
    X = rng.standard_normal((samples, n, d)) @ np.linalg.cholesky(Sigma).T
    S_hat = np.einsum("tni,tnj->tij", X, X) / n
    products = S_hat @ A @ S_hat
    se = products.std(axis=0, ddof=1) / np.sqrt(samples)
    z = np.abs(products.mean(axis=0) - wishart_moment(Sigma, A, n)) / se
    assert z.max() < 4.0  # 9 entries: the largest |z| stays below 4 with probability ≈ 0.9994


@pytest.mark.parametrize("args,name", [
    (([[1.0, 0.0]], [[1.0]], 2), "Sigma"),
    ((np.eye(2), np.eye(3), 2), "A"),
    ((np.eye(2), np.eye(2), 0), "n"),
    ((np.eye(2) * np.nan, np.eye(2), 1), "Sigma"),
])
def test_wishart_moment_bad_input(args, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        wishart_moment(*args)


# --------------------------------------------------------------------------------------------------
# Expected post-adaptation loss


def test_one_step_loss_scalar_case_by_hand():
    # d_in = d_out = 1: E[(1 − αΣ̂)² λ] = λ − 2αλ² + α²λ³(1 + 2/n); noise adds α²σ²λ²/n + σ².
    lam, mu, omega, sigma, n, w, lr = 1.3, 0.4, 0.25, 0.5, 5, -0.2, 0.35
    fam = RegressionFamily(1, 1, task_mean=mu, task_cov=omega, x_cov=lam, noise_std=sigma, n_support=n)
    B = lam - 2 * lr * lam**2 + lr**2 * lam**3 * (1 + 2 / n)
    expected = 0.5 * (B * ((w - mu) ** 2 + omega) + lr**2 * sigma**2 * lam**2 / n + sigma**2)
    assert expected_post_adaptation_loss([[w]], fam, lr) == pytest.approx(expected, rel=1e-14)


def test_one_step_loss_monte_carlo():
    rng = np.random.default_rng(2)
    fam = family(rng, d_in=2, d_out=2, n_support=3)
    W, lr, tasks = rng.standard_normal((2, 2)), 0.4, 100_000
    batch = fam.sample(tasks, rng)
    adapted = W - lr * np.einsum("tno,tni->toi", batch.Xs @ W.T - batch.Ys, batch.Xs) / fam.n_support
    query = np.einsum("tqi,toi->tqo", batch.Xq, adapted) - batch.Yq
    losses = 0.5 * np.mean(np.sum(query**2, axis=2), axis=1)
    se = losses.std(ddof=1) / np.sqrt(tasks)
    assert abs(losses.mean() - expected_post_adaptation_loss(W, fam, lr)) < 3.5 * se


@pytest.mark.parametrize("steps", [0, 1, 2, 5])
def test_population_steps_with_a_fixed_task_by_explicit_loop(steps):
    # Ω = 0: one task W_τ = M, so the expectation is over nothing but the (exact) query loss.
    rng = np.random.default_rng(steps)
    fam = family(rng, task_cov=0.0)
    W, lr = rng.standard_normal((2, 3)), 0.3
    current = W.copy()
    for _ in range(steps):
        current = current - lr * (current - fam.task_mean) @ fam.x_cov
    D = current - fam.task_mean
    expected = 0.5 * np.trace(D @ fam.x_cov @ D.T) + 0.5 * 2 * fam.noise_std**2
    assert expected_post_adaptation_loss(W, fam, lr, steps, population=True) == pytest.approx(expected, rel=1e-13)


def test_finite_n_tends_to_the_population_level():
    rng = np.random.default_rng(3)
    fam, W = family(rng, n_support=10**9), rng.standard_normal((2, 3))
    assert expected_post_adaptation_loss(W, fam, 0.3, 1) == pytest.approx(
        expected_post_adaptation_loss(W, fam, 0.3, 1, population=True), rel=1e-7)
    small = family(np.random.default_rng(3), n_support=2)
    assert expected_post_adaptation_loss(W, small, 0.3, 1) != pytest.approx(
        expected_post_adaptation_loss(W, small, 0.3, 1, population=True), rel=1e-3)


def test_zero_rate_is_the_plain_loss_and_mixture_is_the_weighted_sum():
    rng = np.random.default_rng(4)
    f1, f2 = family(rng), family(rng)
    W = rng.standard_normal((2, 3))
    assert expected_post_adaptation_loss(W, f1, 0.0, 1) == pytest.approx(expected_post_adaptation_loss(W, f1, 0.7, 0))
    mix = TaskMixture([f1, f2], [1.0, 3.0])
    assert expected_post_adaptation_loss(W, mix, 0.2, 3) == pytest.approx(
        0.25 * expected_post_adaptation_loss(W, f1, 0.2, 3) + 0.75 * expected_post_adaptation_loss(W, f2, 0.2, 3),
        rel=1e-14)


def test_population_false_with_several_steps_raises():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="^population"):
        expected_post_adaptation_loss(np.zeros((2, 3)), family(rng), 0.1, steps=2, population=False)


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(weights=np.zeros((3, 2))), ValueError, "weights"),
    (dict(lr=np.nan), ValueError, "lr"),
    (dict(steps=-1), ValueError, "steps"),
    (dict(family="tasks"), TypeError, "family"),
])
def test_expected_loss_bad_input(kwargs, error, name):
    rng = np.random.default_rng(6)
    args = dict(weights=np.zeros((2, 3)), family=family(rng), lr=0.1, steps=1)
    args.update(kwargs)
    with pytest.raises(error, match=f"^{name}"):
        expected_post_adaptation_loss(**args)


# --------------------------------------------------------------------------------------------------
# Optimal inner learning rate


def _scipy_argmin(W, fam, steps, population, top):
    result = optimize.minimize_scalar(lambda a: expected_post_adaptation_loss(W, fam, a, steps, population),
                                      bounds=(0.0, top), method="bounded", options={"xatol": 1e-12})
    return result.x


@pytest.mark.parametrize("isotropic", [True, False])
def test_optimal_lr_one_step_matches_a_scalar_minimiser(isotropic):
    rng = np.random.default_rng(7)
    fam = family(rng, x_cov=1.4 if isotropic else spd(rng, 3), noise_std=0.6, n_support=3)
    W = rng.standard_normal((2, 3))
    alpha = optimal_inner_lr(W, fam)
    assert alpha == pytest.approx(_scipy_argmin(W, fam, 1, None, 5.0), rel=1e-6)


def test_isotropic_closed_form_by_hand():
    # Σ = λI, d_in = d_out = 1: α* = n·e/(λ(n + 2)e + σ²) with e = (w − μ)² + ω.
    lam, mu, omega, sigma, n, w = 0.8, 1.0, 0.3, 0.7, 4, -0.5
    fam = RegressionFamily(1, 1, task_mean=mu, task_cov=omega, x_cov=lam, noise_std=sigma, n_support=n)
    e = (w - mu) ** 2 + omega
    assert optimal_inner_lr([[w]], fam) == pytest.approx(n * e / (lam * (n + 2) * e + sigma**2), rel=1e-14)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_optimal_lr_population_steps(steps):
    rng = np.random.default_rng(8 + steps)
    fam = family(rng)
    W = rng.standard_normal((2, 3))
    alpha = optimal_inner_lr(W, fam, steps, population=True)
    top = 2.0 / np.linalg.eigvalsh(fam.x_cov).min()
    assert alpha == pytest.approx(_scipy_argmin(W, fam, steps, True, top), rel=1e-6)


def test_optimal_lr_isotropic_population_is_inverse_eigenvalue():
    # Every direction has curvature λ, so one step of 1/λ solves each task: α* = 1/λ for any k.
    fam = RegressionFamily(3, 2, task_mean=0.5, task_cov=0.4, x_cov=2.5)
    for steps in (1, 3):
        assert optimal_inner_lr(np.ones((2, 3)), fam, steps, population=True) == pytest.approx(0.4, rel=1e-15)


def test_optimal_lr_degenerate_cases():
    fam = RegressionFamily(2, 1, task_mean=[[1.0, 2.0]], task_cov=0.0, x_cov=1.0, noise_std=0.0)
    assert optimal_inner_lr([[1.0, 2.0]], fam) == 0.0  # already at the only task: nothing to learn
    with pytest.raises(ValueError, match="^steps"):
        optimal_inner_lr([[0.0, 0.0]], fam, steps=0)


# --------------------------------------------------------------------------------------------------
# Fixed points


def test_single_family_fixed_points_are_the_task_mean():
    rng = np.random.default_rng(9)
    fam = family(rng)
    for steps in (1, 2, 4):
        np.testing.assert_allclose(maml_fixed_point(fam, 0.2, steps), fam.task_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(erm_fixed_point(fam), fam.task_mean, rtol=1e-12, atol=1e-12)


def _mixture(rng):
    comps = [family(rng, x_cov=spd(rng, 3, 0.3, 2.0)) for _ in range(3)]
    return TaskMixture(comps, [0.5, 0.3, 0.2])


def test_erm_fixed_point_solves_the_kronecker_normal_equations():
    rng = np.random.default_rng(10)
    mix = _mixture(rng)
    # Σ_c π_c (Σ_c ⊗ I) vec W = Σ_c π_c (Σ_c ⊗ I) vec M_c (column-major vec).
    H = sum(p * np.kron(c.x_cov, np.eye(2)) for p, c in zip(mix.weights, mix.components))
    b = sum(p * np.kron(c.x_cov, np.eye(2)) @ c.task_mean.reshape(-1, order="F")
            for p, c in zip(mix.weights, mix.components))
    expected = np.linalg.solve(H, b).reshape(2, 3, order="F")
    np.testing.assert_allclose(erm_fixed_point(mix), expected, rtol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_fixed_point_minimises_the_objective(steps):
    rng = np.random.default_rng(11 + steps)
    mix = _mixture(rng)
    result = optimize.minimize(lambda x: expected_post_adaptation_loss(x.reshape(2, 3), mix, 0.25, steps),
                               np.zeros(6), method="BFGS", options={"gtol": 1e-12})
    np.testing.assert_allclose(maml_fixed_point(mix, 0.25, steps), result.x.reshape(2, 3), rtol=1e-5, atol=1e-6)
    # ... and with different input covariances it is not the ERM solution.
    assert not np.allclose(maml_fixed_point(mix, 0.25, steps), erm_fixed_point(mix), atol=1e-3)


def test_fixed_point_with_singular_curvature_is_minimum_norm():
    # Σ = diag(1, 0): the second input never varies, so its weight is free; the closed form sets it to 0.
    fam = RegressionFamily(2, 1, task_mean=[[1.5, 2.0]], task_cov=0.1, x_cov=np.diag([1.0, 0.0]))
    np.testing.assert_allclose(maml_fixed_point(fam, 0.3, 1), [[1.5, 0.0]], atol=1e-12)
    np.testing.assert_allclose(erm_fixed_point(fam), [[1.5, 0.0]], atol=1e-12)


def test_task_mixture_validation():
    rng = np.random.default_rng(12)
    with pytest.raises(ValueError, match=r"^components\[1\]"):
        TaskMixture([family(rng), family(rng, d_in=2)])
    with pytest.raises(ValueError, match="^weights"):
        TaskMixture([family(rng)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"^weights\[0\]"):
        TaskMixture([family(rng)], [-1.0])
    with pytest.raises(TypeError, match=r"^components\[0\]"):
        TaskMixture(["not a family"])
