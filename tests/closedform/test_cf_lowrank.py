"""Two-layer ANIL closed forms and sample counts (linmaml.closedform.lowrank) on low-rank families,
against explicit head steps on sampled tasks (Monte Carlo with standard errors), finite differences,
brute-force scans and the isotropic closed forms derived in the tests themselves."""
import numpy as np
import pytest

from linmaml.checks._common import central_difference, random_spd, relative_error
from linmaml.closedform import lowrank
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.tasks import LowRankRegressionFamily


def _family(**overrides):
    params = dict(d_in=5, d_out=2, rank=2, head_cov=[1.0, 0.3], task_mean=0.3, noise_std=0.4, n_support=4,
                  n_query=3, x_cov=random_spd(np.random.default_rng(4), 5, condition=5.0), basis_seed=2)
    params.update(overrides)
    return LowRankRegressionFamily(**params)


def _layers(rng, fam, hidden=3):
    return [rng.standard_normal((hidden, fam.d_in)) / np.sqrt(fam.d_in),
            rng.standard_normal((fam.d_out, hidden)) / np.sqrt(hidden)]


@pytest.mark.parametrize("population", [False, True])
def test_anil_expected_loss_matches_explicit_head_steps_on_sampled_tasks(population):
    rng = np.random.default_rng(0)
    fam = _family()
    W1, W2 = _layers(rng, fam)
    lr = 0.4
    batch = fam.sample(40_000, seed=1)
    if population:
        grad = (W2 @ W1 - batch.W) @ fam.x_cov @ W1.T
    else:
        feats = batch.Xs @ W1.T  # (T, n, h): the head's inputs
        grad = np.swapaxes(feats @ W2.T - batch.Ys, 1, 2) @ feats / fam.n_support
    adapted = (W2 - lr * grad) @ W1
    res = batch.Xq @ np.swapaxes(adapted, 1, 2) - batch.Yq
    losses = 0.5 * np.mean(np.sum(res**2, axis=2), axis=1)
    exact = lowrank.anil_expected_loss([W1, W2], fam, lr, population)
    se = losses.std(ddof=1) / np.sqrt(losses.size)
    assert abs(losses.mean() - exact) < 3.5 * se


@pytest.mark.parametrize("population", [False, True])
def test_anil_gradient_matches_finite_differences(population):
    rng = np.random.default_rng(3)
    fam = _family()
    layers = _layers(rng, fam, hidden=2)
    _, grads = lowrank.anil_expected_loss_and_grad(layers, fam, 0.25, population)
    numeric = central_difference(lambda ws: lowrank.anil_expected_loss(ws, fam, 0.25, population), layers, h=1e-3)
    assert relative_error(grads, numeric) < 1e-8


def test_convex_best_loss_equals_isotropic_formula_and_needs_samples_linear_in_d():
    """Σ = I, M = 0, no noise: min over α of ½[e − 2αe + α²e(n + d + 1)/n] = ½e(d + 1)/(n + d + 1), derived here
    from the Wishart moment; so the fewest n reaching ε is ⌈(d + 1)(e/(2ε) − 1)⌉."""
    for d in (4, 10, 30):
        fam = LowRankRegressionFamily(d, 1, rank=2, head_cov=[1.0, 0.5], task_mean=0.0, noise_std=0.0)
        e = 1.5
        for n in (1, 7, 50):
            assert lowrank.convex_best_loss(fam, n) == pytest.approx(0.5 * e * (d + 1) / (n + d + 1), rel=1e-12)
        eps = 0.1 * 0.5 * e
        n_star = lowrank.samples_to_reach(lambda n: lowrank.convex_best_loss(fam, n), eps)
        assert n_star == int(np.ceil((d + 1) * (e / (2 * eps) - 1) - 1e-9))


def test_ideal_representation_needs_samples_independent_of_d():
    """W1 = Bᵀ (the true subspace), W2 = 0: the head step is a k-dimensional problem, best loss
    ½e(k + 1)/(n + k + 1) whatever d (same derivation in k dimensions)."""
    for d in (5, 40):
        fam = LowRankRegressionFamily(d, 1, rank=3, head_cov=1.0, task_mean=0.0, noise_std=0.0, basis_seed=1)
        layers = [fam.basis.T.copy(), np.zeros((1, 3))]
        for n in (2, 9):
            assert lowrank.anil_best_loss(layers, fam, n) == pytest.approx(0.5 * 3 * 4 / (n + 4), rel=1e-10)


def test_best_head_lr_beats_a_fine_grid():
    rng = np.random.default_rng(5)
    fam = _family()
    layers = _layers(rng, fam)
    alpha, best = lowrank.best_head_lr(layers, fam)
    grid = np.linspace(alpha - 1, alpha + 1, 2001)
    values = [lowrank.anil_expected_loss(layers, fam, a) for a in grid]
    assert best <= min(values) + 1e-12
    assert abs(grid[int(np.argmin(values))] - alpha) <= 1e-3


def test_samples_to_reach_matches_a_linear_scan():
    losses = {n: 10.0 / n for n in range(1, 200)}
    for eps in (10.0, 0.5, 0.0513, 0.06):
        expected = next((n for n in range(1, 200) if losses[n] <= eps), None)
        assert lowrank.samples_to_reach(lambda n: 10.0 / n, eps, 199) == expected
    assert lowrank.samples_to_reach(lambda n: 10.0 / n, 0.01, 199) is None


def test_bad_arguments_are_named():
    fam = _family()
    with pytest.raises(ArgumentTypeError) as info:
        lowrank.anil_expected_loss(np.eye(5), fam, 0.1)
    assert info.value.argument == "layers"
    with pytest.raises(ArgumentError) as info:
        lowrank.anil_expected_loss([np.zeros((3, 4)), np.zeros((2, 3))], fam, 0.1)
    assert info.value.argument == "layers[0]"
    with pytest.raises(ArgumentError) as info:
        lowrank.anil_expected_loss([np.zeros((3, 5)), np.zeros((2, 2))], fam, 0.1)
    assert info.value.argument == "layers[1]"
    with pytest.raises(ArgumentTypeError) as info:
        lowrank.anil_expected_loss([np.zeros((3, 5)), np.zeros((2, 3))], "family", 0.1)
    assert info.value.argument == "family"
    with pytest.raises(ArgumentError) as info:
        lowrank.samples_to_reach(lambda n: 1.0, float("nan"))
    assert info.value.argument == "epsilon"


def test_optimal_one_step_map_on_a_rank_k_family_lives_in_the_subspace():
    """Σ = I, S = Ω_in = d_out·BΛBᵀ singular: Q* = [(1 + 1/n)S + cI]⁻¹S = B diag(s_i/((1 + 1/n)s_i + c)) Bᵀ with
    s_i = d_out·λ_i and c = (tr S + d_out σ²)/n, written here from the eigen-decomposition; zero off the subspace."""
    from linmaml.closedform.gaussian_lr import optimal_one_step_map

    fam = LowRankRegressionFamily(6, 2, rank=2, head_cov=[1.0, 0.4], noise_std=0.3, n_support=5, basis_seed=4)
    _, Q = optimal_one_step_map(fam)
    s = 2 * np.array([1.0, 0.4])
    c = (s.sum() + 2 * 0.3**2) / 5
    expected = fam.basis @ np.diag(s / ((1 + 1 / 5) * s + c)) @ fam.basis.T
    assert np.allclose(Q, expected, atol=1e-13)


def test_expected_loss_of_the_task_mean_without_adaptation_is_half_the_head_variance():
    """No step: ½E‖W_τ − M‖²_Σ + ½d_out σ² = ½·d_out·tr(Λ) + ½d_out σ² for Σ = I (Ω's trace, rank k)."""
    from linmaml.closedform.gaussian import expected_post_adaptation_loss

    fam = LowRankRegressionFamily(7, 3, rank=2, head_cov=[1.0, 0.5], noise_std=0.2, task_mean=0.7)
    value = expected_post_adaptation_loss(fam.task_mean, fam, 0.3, steps=0)
    assert value == pytest.approx(0.5 * 3 * 1.5 + 0.5 * 3 * 0.04, rel=1e-13)
