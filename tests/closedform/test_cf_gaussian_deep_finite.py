"""The finite-n depth-2 expectation (linmaml.closedform.gaussian_deep_finite, reached through
expected_post_adaptation_loss(..., population=False)) against computations that share none of its
algebra: an explicit inner step layer by layer on sampled tasks (Monte Carlo with its standard error)
or on the nodes of a tensor Gauss–Hermite rule over every Gaussian variable (exact for the polynomial
degrees involved), the population expectation as n → ∞ (a different derivation), and finite
differences. The Wishart moment tensors are checked against an exact quadrature over the inputs."""
import numpy as np
import pytest

from linmaml.checks._common import central_difference, gauss_hermite_rule, random_spd, relative_error
from linmaml.closedform import gaussian_deep_finite
from linmaml.closedform.gaussian import (
    TaskMixture,
    expected_post_adaptation_loss,
    expected_post_adaptation_loss_and_grad,
    wishart_moment,
)
from linmaml.tasks import RegressionFamily


def make_family(rng, d_in, d_out, n, noise=0.4, condition=None, **overrides):
    k = d_in * d_out
    F = rng.standard_normal((k, k)) / np.sqrt(k)
    params = dict(task_mean=rng.standard_normal((d_out, d_in)), task_cov=0.3 * F @ F.T,
                  x_cov=random_spd(rng, d_in, 0.3, 2.0, condition=condition), noise_std=noise, n_support=n, n_query=2)
    params.update(overrides)
    return RegressionFamily(d_in, d_out, **params)


def make_layers(rng, d_in, d_out, width):
    return [rng.standard_normal((width, d_in)) / np.sqrt(d_in), rng.standard_normal((d_out, width)) / np.sqrt(width)]


def sqrtm_psd(C):
    vals, vecs = np.linalg.eigh(C)
    return vecs * np.sqrt(np.clip(vals, 0, None))


def direct_losses(layers, family, lr, W_tau, Xs, Ys):
    """Per task: one gradient step on each layer of the support loss 1/(2n)‖Xs W_eᵀ − Ys‖² (autograd-free:
    ∂/∂W1 = W2ᵀ G, ∂/∂W2 = G W1ᵀ with G the end-to-end gradient), then the expected query loss given the
    adapted map, ½ tr(R Σ Rᵀ) + ½ d_out σ²."""
    W1, W2 = layers
    n = Xs.shape[1]
    residual = np.einsum("tni,hi,oh->tno", Xs, W1, W2) - Ys
    G = np.einsum("tno,tni->toi", residual, Xs) / n
    W1_new = W1[None] - lr * np.einsum("oh,toi->thi", W2, G)
    W2_new = W2[None] - lr * np.einsum("toi,hi->toh", G, W1)
    R = W2_new @ W1_new - W_tau
    return 0.5 * np.einsum("toi,ij,toj->t", R, family.x_cov, R) + 0.5 * family.d_out * family.noise_std ** 2


def quadrature_expectation(layers, family, lr):
    """Tensor Gauss–Hermite over task map (3 nodes), support inputs (5 nodes) and support noise (3 nodes):
    degrees ≤ 4, ≤ 8 and ≤ 4 per variable, so the rule is exact."""
    o, d, n = family.d_out, family.d_in, family.n_support
    k = o * d
    points, weights = gauss_hermite_rule([3] * k + [5] * (n * d) + [3] * (n * o))
    vec = family.task_mean.reshape(-1, order="F") + points[:, :k] @ sqrtm_psd(family.task_cov).T
    W_tau = vec.reshape(-1, d, o).transpose(0, 2, 1)
    Xs = points[:, k:k + n * d].reshape(-1, n, d) @ sqrtm_psd(family.x_cov).T
    Ys = np.einsum("tni,toi->tno", Xs, W_tau) + family.noise_std * points[:, k + n * d:].reshape(-1, n, o)
    return float(weights @ direct_losses(layers, family, lr, W_tau, Xs, Ys))


@pytest.mark.parametrize("d_in,d_out,n,width", [(1, 1, 1, 1), (1, 1, 2, 3), (2, 1, 1, 2), (2, 1, 2, 1),
                                                (1, 2, 1, 2), (2, 2, 1, 3)])
def test_finite_n_expectation_equals_exact_quadrature(d_in, d_out, n, width):
    rng = np.random.default_rng(100 + 10 * d_in + d_out + 7 * n)
    family = make_family(rng, d_in, d_out, n, condition=5.0)
    layers = make_layers(rng, d_in, d_out, width)
    for lr in (0.25, -0.15):
        exact = quadrature_expectation(layers, family, lr)
        assert expected_post_adaptation_loss(layers, family, lr, population=False) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("d_in,d_out,n,width,lr", [(3, 1, 5, 4, 0.2), (2, 2, 3, 2, -0.2), (4, 1, 20, 8, 0.1)])
def test_finite_n_expectation_agrees_with_monte_carlo(d_in, d_out, n, width, lr):
    rng = np.random.default_rng(200 + n)
    family = make_family(rng, d_in, d_out, n, condition=10.0)
    layers = make_layers(rng, d_in, d_out, width)
    batch = family.sample(60_000, rng)
    losses = direct_losses(layers, family, lr, batch.W, batch.Xs, batch.Ys)
    se = losses.std(ddof=1) / np.sqrt(losses.size)
    exact = expected_post_adaptation_loss(layers, family, lr, population=False)
    assert abs(losses.mean() - exact) < 4 * se
    # the finite-n value differs from the population one by far more than the Monte Carlo error here
    assert abs(exact - expected_post_adaptation_loss(layers, family, lr, population=True)) > 10 * se


def test_large_n_limit_is_the_population_expectation_with_a_1_over_n_gap():
    rng = np.random.default_rng(301)
    base = make_family(rng, 3, 2, 1, condition=10.0)
    layers = make_layers(rng, 3, 2, 3)
    population = expected_post_adaptation_loss(layers, base, 0.2, population=True)
    gaps = []
    for n in (10 ** 4, 10 ** 5, 10 ** 6):
        family = make_family(rng, 3, 2, n, task_mean=base.task_mean, task_cov=base.task_cov, x_cov=base.x_cov)
        gaps.append(n * (expected_post_adaptation_loss(layers, family, 0.2, population=False) - population))
    # n·gap = c₁ + c₂/n + …: it converges to a nonzero constant, and its changes shrink tenfold per decade of n
    # (measured: 13.5696, 13.5671, 13.5669 for a population value of 7.88)
    assert abs(gaps[0]) > 1e-3 * abs(population)
    assert 8 < abs(gaps[1] - gaps[0]) / abs(gaps[2] - gaps[1]) < 12


def test_gradient_matches_finite_differences_on_a_mixture():
    rng = np.random.default_rng(302)
    mixture = TaskMixture([make_family(rng, 3, 2, 2), make_family(rng, 3, 2, 5, condition=20.0)], [0.3, 0.7])
    layers = make_layers(rng, 3, 2, 4)
    value, grads = expected_post_adaptation_loss_and_grad(layers, mixture, -0.25, population=False)
    assert value == pytest.approx(expected_post_adaptation_loss(layers, mixture, -0.25, population=False), rel=1e-15)
    numeric = central_difference(lambda ws: expected_post_adaptation_loss(ws, mixture, -0.25, population=False),
                                 layers, h=1e-3)
    assert relative_error(grads, numeric) < 1e-8


def test_zero_rate_gives_the_plain_loss_of_the_end_to_end_map():
    rng = np.random.default_rng(303)
    family = make_family(rng, 3, 2, 4)
    layers = make_layers(rng, 3, 2, 2)
    plain = expected_post_adaptation_loss(layers[1] @ layers[0], family, 0.0, 0)
    assert expected_post_adaptation_loss(layers, family, 0.0, population=False) == pytest.approx(plain, rel=1e-13)


@pytest.mark.parametrize("k,n", [(2, 1), (2, 3), (3, 1), (3, 2), (4, 1), (4, 2)])
def test_wishart_moment_tensor_equals_exact_quadrature_over_the_inputs(k, n):
    """E[Σ̂_{a₁b₁}⋯Σ̂_{a_k b_k}] for d = 2 by a product rule over the n·d input variables (degree 2k each,
    k + 1 nodes: exact), and for k = 2 also the closed form E[Σ̂AΣ̂] of gaussian.wishart_moment."""
    rng = np.random.default_rng(304 + k * 10 + n)
    d = 2
    Sigma = random_spd(rng, d)
    points, weights = gauss_hermite_rule([k + 1] * (n * d))
    X = points.reshape(-1, n, d) @ sqrtm_psd(Sigma).T
    S = np.einsum("tni,tnj->tij", X, X) / n
    product = S
    for _ in range(k - 1):
        product = np.einsum("t...,tij->t...ij", product, S)
    exact = np.einsum("t,t...->...", weights, product)
    tensor = gaussian_deep_finite.wishart_moment_tensor(Sigma, n, k)
    assert relative_error(tensor, exact) < 1e-13
    if k == 2:
        A = rng.standard_normal((d, d))
        assert relative_error(np.einsum("abcd,bc->ad", tensor, A), wishart_moment(Sigma, A, n)) < 1e-13


def test_depth_three_at_finite_n_is_refused_and_depth_two_overflow_names_lr():
    rng = np.random.default_rng(305)
    family = make_family(rng, 2, 1, 3)
    three = [np.ones((2, 2)), np.ones((2, 2)), np.ones((1, 2))]
    with pytest.raises(ValueError, match="^population"):
        expected_post_adaptation_loss(three, family, 0.1, population=False)
    with pytest.raises(ValueError, match="^lr"):
        expected_post_adaptation_loss(make_layers(rng, 2, 1, 2), family, 1e200, population=False)
    with pytest.raises(ValueError, match="^steps"):
        expected_post_adaptation_loss(make_layers(rng, 2, 1, 2), family, 0.1, steps=2, population=False)


def test_families_too_large_for_the_exact_tensors_are_refused_by_name():
    family = RegressionFamily(9, 1, noise_std=0.1, n_support=5)  # d_in^8 = 43M entries
    layers = [np.ones((2, 9)), np.ones((1, 2))]
    with pytest.raises(ValueError, match="^family"):
        expected_post_adaptation_loss(layers, family, 0.1, population=False)
