"""Deep-model expectations in linmaml.closedform.gaussian against computations that share none of
their algebra: an explicit inner step on sampled or quadrature task maps (tensor Gauss–Hermite, exact
for polynomials of the degree involved), Monte Carlo with standard errors, and finite differences."""
import numpy as np
import pytest

from linmaml.checks._common import central_difference, random_spd, relative_error
from linmaml.closedform.gaussian import (
    TaskMixture,
    expected_post_adaptation_loss,
    expected_post_adaptation_loss_and_grad,
)
from linmaml.tasks import RegressionFamily


def make_family(rng, d_in, d_out, noise=0.3, condition=None):
    k = d_in * d_out
    F = rng.standard_normal((k, k)) / np.sqrt(k)
    Sigma = random_spd(rng, d_in, 0.3, 2.0, condition=condition)
    return RegressionFamily(d_in, d_out, task_mean=rng.standard_normal((d_out, d_in)), task_cov=0.3 * F @ F.T,
                            x_cov=Sigma, noise_std=noise)


def make_layers(rng, d_in, d_out, depth):
    widths = [d_in] + [int(w) for w in rng.integers(1, 4, size=depth - 1)] + [d_out]
    return [rng.standard_normal((widths[j + 1], widths[j])) / np.sqrt(widths[j]) for j in range(depth)]


def explicit_losses(layers, family, lr, W_tau):
    """Query loss after one population step on every layer, for each task map W_tau[t] (a direct loop:
    per-layer gradients A_jᵀ (W_e − W_τ) Σ B_jᵀ from freshly formed products)."""
    def product(mats, size):
        out = np.eye(size)
        for W in mats:
            out = W @ out
        return out

    W_e = product(layers, layers[0].shape[1])
    G = (W_e[None] - W_tau) @ family.x_cov
    new = []
    for j, W in enumerate(layers):
        A = product(layers[j + 1:], W.shape[0])
        B = product(layers[:j], layers[0].shape[1])
        new.append(W[None] - lr * A.T @ G @ B.T)
    adapted = new[0]
    for W in new[1:]:
        adapted = W @ adapted
    D = adapted - W_tau
    return 0.5 * np.einsum("toi,ij,toj->t", D, family.x_cov, D) + 0.5 * family.d_out * family.noise_std**2


def gauss_hermite_expectation(layers, family, lr):
    """E over vec W_τ = vec M + F ξ, ξ ~ N(0, I), by the tensor Gauss–Hermite rule with L + 1 nodes per
    coordinate: exact for the degree-2L polynomial the loss is in ξ."""
    depth = len(layers)
    nodes, weights = np.polynomial.hermite_e.hermegauss(depth + 1)
    weights = weights / weights.sum()
    vals, vecs = np.linalg.eigh(family.task_cov)
    F = vecs * np.sqrt(np.clip(vals, 0, None))
    k = F.shape[0]
    grid = np.stack(np.meshgrid(*[nodes] * k, indexing="ij"), -1).reshape(-1, k)
    w = np.prod(np.stack(np.meshgrid(*[weights] * k, indexing="ij"), -1).reshape(-1, k), axis=1)
    vec = family.task_mean.reshape(-1, order="F") + grid @ F.T
    W_tau = vec.reshape(-1, family.d_in, family.d_out).transpose(0, 2, 1)
    return float(w @ explicit_losses(layers, family, lr, W_tau))


@pytest.mark.parametrize("depth,d_in,d_out", [(2, 2, 1), (2, 2, 2), (3, 2, 2), (4, 3, 1), (4, 2, 2)])
def test_deep_expectation_equals_exact_gauss_hermite_quadrature(depth, d_in, d_out):
    rng = np.random.default_rng(100 + depth * 10 + d_in + d_out)
    family = make_family(rng, d_in, d_out, condition=20.0)
    layers = make_layers(rng, d_in, d_out, depth)
    for lr in (0.3, -0.2):
        exact = gauss_hermite_expectation(layers, family, lr)
        assert expected_post_adaptation_loss(layers, family, lr) == pytest.approx(exact, rel=1e-11)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_deep_expectation_monte_carlo_within_three_standard_errors(depth):
    rng = np.random.default_rng(7 + depth)
    family = make_family(rng, 3, 2, condition=10.0)
    layers = make_layers(rng, 3, 2, depth)
    lr = 0.25
    losses = explicit_losses(layers, family, lr, family.sample_weights(200_000, rng))
    exact = expected_post_adaptation_loss(layers, family, lr, population=True)
    assert abs(losses.mean() - exact) < 3 * losses.std(ddof=1) / np.sqrt(losses.size)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_deep_gradient_matches_finite_differences(depth):
    rng = np.random.default_rng(20 + depth)
    family = TaskMixture([make_family(rng, 3, 2), make_family(rng, 3, 2)], [0.4, 0.6])
    layers = make_layers(rng, 3, 2, depth)
    value, grads = expected_post_adaptation_loss_and_grad(layers, family, 0.2)
    assert value == pytest.approx(expected_post_adaptation_loss(layers, family, 0.2), rel=1e-14)
    numeric = central_difference(lambda ws: expected_post_adaptation_loss(ws, family, 0.2), layers, h=1e-3)
    assert relative_error(grads, numeric) < 1e-6


def test_shallow_gradient_matches_finite_differences():
    rng = np.random.default_rng(30)
    family = make_family(rng, 3, 2)
    W = rng.standard_normal((2, 3))
    for steps, population in ((1, None), (3, True), (0, None)):
        _, grad = expected_post_adaptation_loss_and_grad(W, family, 0.3, steps, population)
        numeric = central_difference(lambda ws: expected_post_adaptation_loss(ws[0], family, 0.3, steps, population),
                                     [W])[0]
        assert relative_error(grad, numeric) < 1e-8


def test_zero_rate_and_zero_steps_give_the_plain_loss_of_the_end_to_end_map():
    rng = np.random.default_rng(31)
    family = make_family(rng, 3, 2)
    layers = make_layers(rng, 3, 2, 3)
    W_e = layers[2] @ layers[1] @ layers[0]
    plain = expected_post_adaptation_loss(W_e, family, 0.0, 0)
    assert expected_post_adaptation_loss(layers, family, 0.0) == pytest.approx(plain, rel=1e-13)
    assert expected_post_adaptation_loss(layers, family, 0.7, steps=0) == pytest.approx(plain, rel=1e-13)
    # a one-layer list is the shallow model
    assert expected_post_adaptation_loss([W_e], family, 0.3, population=True) == \
        expected_post_adaptation_loss(W_e, family, 0.3, population=True)


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(weights=[np.ones((2, 3)), np.ones((2, 3))]), ValueError, r"weights\[1\]"),
    (dict(weights=[np.ones((4, 3)), np.ones((1, 4))]), ValueError, r"weights\[1\]"),
    (dict(weights=[np.ones((4, 3)), np.full((2, 4), np.nan)]), ValueError, r"weights\[1\]"),
    (dict(weights=[np.ones((4, 3)), np.ones((4, 4)), np.ones((2, 4))], population=False), ValueError, "population"),
    (dict(population=False, lr=1e200), ValueError, "lr"),
    (dict(steps=2), ValueError, "steps"),
    (dict(lr=1e200), ValueError, "lr"),
    (dict(lr=np.inf), ValueError, "lr"),
    (dict(weights=[1e200 * np.ones((4, 3)), np.ones((2, 4))], lr=0.0), ValueError, "weights"),
])
def test_deep_bad_input_names_the_argument(kwargs, error, name):
    rng = np.random.default_rng(32)
    args = dict(weights=[np.ones((4, 3)), np.ones((2, 4))], family=make_family(rng, 3, 2), lr=0.1)
    args.update(kwargs)
    with pytest.raises(error, match=f"^{name}"):
        expected_post_adaptation_loss(**args)
    with pytest.raises(error, match=f"^{name}"):
        expected_post_adaptation_loss_and_grad(**args)


def test_negative_input_covariance_is_refused():
    with pytest.raises(ValueError, match="^x_cov"):
        RegressionFamily(2, 1, x_cov=np.diag([1.0, -0.5]))
