"""Paired, exact scoring of linear one-step predictors: the exact conditional query loss against
Monte Carlo over sampled query points (standard errors), the paired ratio's delta-method interval
against a direct bootstrap, the gain captured and the seed summaries against direct formulas, and the
adapted end-to-end maps against the closed forms' inner step and a hand-written Meta-SGD step."""
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from linmaml import meta
from linmaml.closedform import deep_linear as cf
from linmaml.closedform import gaussian_lr as glr
from linmaml.errors import ArgumentError
from linmaml.simulator import deep, linnet, shallow
from linmaml.simulator.held_out import (adapted_end_to_end, exact_query_loss, gain_captured, paired_exact_losses,
                                        paired_ratio, seed_gain_summary, seed_ratio_summary)
from linmaml.tasks import RegressionFamily


def _family(d_out=1, n_query=3):
    rng = np.random.default_rng(11)
    F = rng.standard_normal((3, 3))
    return RegressionFamily(3, d_out, task_mean=rng.standard_normal((d_out, 3)), task_cov=0.7,
                            x_cov=F @ F.T / 3 + 0.2 * np.eye(3), noise_std=0.4, n_support=6, n_query=n_query)


@pytest.mark.parametrize("d_out", [1, 2])
def test_exact_query_loss_matches_sampled_query_points(d_out):
    family = _family(d_out, n_query=400)
    batch = family.sample(3000, 0)
    adapted = batch.W + 0.5 * np.random.default_rng(1).standard_normal(batch.W.shape)
    exact = exact_query_loss(adapted, batch.W, family.x_cov, family.noise_std)
    residual = np.einsum("tqi,toi->tqo", batch.Xq, adapted) - batch.Yq
    sampled = 0.5 * np.sum(residual ** 2, axis=2).mean(axis=1)
    diff = sampled - exact  # per task, mean zero given the task: z-test over tasks
    assert abs(diff.mean()) / (diff.std(ddof=1) / np.sqrt(diff.size)) < 4.0
    torch_value = exact_query_loss(torch.as_tensor(adapted), torch.as_tensor(batch.W), family.x_cov, family.noise_std)
    assert np.allclose(torch_value, exact, rtol=1e-14)


def test_exact_query_loss_refuses_mismatched_shapes():
    with pytest.raises(ArgumentError) as info:
        exact_query_loss(np.zeros((2, 1, 3)), np.zeros((3, 1, 3)), np.eye(3), 0.1)
    assert info.value.argument == "adapted"
    with pytest.raises(ArgumentError) as info:
        exact_query_loss(np.zeros((2, 1, 3)), np.zeros((2, 1, 3)), np.eye(2), 0.1)
    assert info.value.argument == "x_cov"


def test_paired_ratio_interval_matches_a_bootstrap():
    rng = np.random.default_rng(2)
    base = rng.gamma(2.0, 1.0, size=4000)
    a = 0.6 * base + 0.2 * rng.gamma(2.0, 1.0, size=4000)
    out = paired_ratio(a, base)
    assert out["ratio"] == pytest.approx(a.mean() / base.mean(), rel=1e-14)
    idx = rng.integers(0, a.size, size=(2000, a.size))
    boot = a[idx].mean(axis=1) / base[idx].mean(axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    assert out["ci95"] == pytest.approx((hi - lo) / 2, rel=0.15)
    # pairing matters: the unpaired (independent-samples) half-width is several times wider here
    unpaired = 1.96 * out["ratio"] * np.hypot(a.std() / a.mean(), base.std() / base.mean()) / np.sqrt(a.size)
    assert unpaired > 3 * out["ci95"]


def test_gain_captured_is_the_ratio_of_paired_gains():
    rng = np.random.default_rng(3)
    best = rng.gamma(2.0, 0.1, size=500)
    baseline = best + rng.gamma(3.0, 1.0, size=500)
    model = best + 0.25 * (baseline - best) + rng.normal(0, 0.01, size=500)
    out = gain_captured(model, baseline, best)
    direct = (baseline.mean() - model.mean()) / (baseline.mean() - best.mean())
    assert out["fraction"] == pytest.approx(direct, rel=1e-13)
    assert out["fraction"] == pytest.approx(0.75, abs=3 * out["ci95"] / 1.96)
    assert gain_captured(best, baseline, best)["fraction"] == pytest.approx(1.0, rel=1e-14)
    assert gain_captured(baseline, baseline, best)["fraction"] == pytest.approx(0.0, abs=1e-14)


def test_seed_summaries_against_direct_formulas():
    rng = np.random.default_rng(4)
    reference = rng.gamma(2.0, 1.0, size=300)
    models = np.stack([(0.5 + 0.05 * k) * reference + rng.gamma(1.0, 0.1, size=300) for k in range(3)])
    out = seed_ratio_summary(models, reference)
    ratios = models.mean(axis=1) / reference.mean()
    assert [p["ratio"] for p in out["per_seed"]] == pytest.approx(ratios.tolist(), rel=1e-13)
    assert out["ratio"] == pytest.approx(ratios.mean(), rel=1e-13)  # mean of per-task means is linear
    assert out["ci95_seeds"] == pytest.approx(stats.t.ppf(0.975, 2) * ratios.std(ddof=1) / np.sqrt(3), rel=1e-6)
    assert out["ci95"] == pytest.approx(np.hypot(out["ci95_seeds"], out["ci95_tasks"]), rel=1e-13)
    best = 0.3 * reference
    gain = seed_gain_summary(models, reference, best)
    fractions = (reference.mean() - models.mean(axis=1)) / (reference.mean() - best.mean())
    assert [p["fraction"] for p in gain["per_seed"]] == pytest.approx(fractions.tolist(), rel=1e-12)
    assert gain["ci95_seeds"] == pytest.approx(stats.t.ppf(0.975, 2) * fractions.std(ddof=1) / np.sqrt(3), rel=1e-6)
    with pytest.raises(ArgumentError):
        seed_ratio_summary(models[:1], reference)
    # a trained reference: seed i paired with seed i
    others = np.stack([reference * (1.0 + 0.1 * k) for k in range(3)])
    paired = seed_ratio_summary(models, others)
    direct = models.mean(axis=1) / others.mean(axis=1)
    assert [p["ratio"] for p in paired["per_seed"]] == pytest.approx(direct.tolist(), rel=1e-13)
    assert paired["ratio"] == pytest.approx(models.mean() / others.mean(), rel=1e-13)
    with pytest.raises(ArgumentError) as info:
        seed_ratio_summary(models, others[:, :10])
    assert info.value.argument == "reference"


@pytest.mark.parametrize("make", [lambda: deep(3, 2, [4]), lambda: linnet(shallow(3, 2), [3, 3]), lambda: shallow(3, 2)])
def test_adapted_end_to_end_of_a_chain_is_the_closed_form_step(make):
    chain = make()
    family = _family(d_out=2)
    weights = chain.init(np.random.default_rng(0), 0.8)
    learner = chain.learner(weights, 0.07, 1)
    batch = family.sample(9, 5)
    maps = adapted_end_to_end(learner, batch, chunk=4)
    numpy_weights = [W.numpy() for W in weights]
    for t, (Xs, Ys, _, _) in enumerate(batch):
        adapted = cf.adapt(numpy_weights, Xs, Ys, 0.07, 1, adapt_layers=chain.adapt_layers)
        W_e = adapted[0]
        for W in adapted[1:]:
            W_e = W @ W_e
        assert np.allclose(maps[t], W_e, rtol=1e-11, atol=1e-12)


def test_adapted_end_to_end_of_meta_sgd_is_its_elementwise_step():
    family = _family()
    linear = nn.Linear(3, 1, bias=False, dtype=torch.float64)
    learner = meta.MAML(linear, lr=0.3, steps=1, transform=meta.MetaSGD())
    with torch.no_grad():
        for p in learner.transform.parameters():
            p.copy_(torch.tensor([[0.5, 2.0, -1.0]], dtype=torch.float64).reshape(p.shape))
    batch = family.sample(7, 2)
    W0 = linear.weight.detach().numpy()
    maps = adapted_end_to_end(learner, batch)
    expected = glr.apply_one_step_map(batch, 0.3 * np.diag([0.5, 2.0, -1.0]), W0)
    assert np.allclose(maps, expected, rtol=1e-12, atol=1e-13)


def test_paired_exact_losses_scores_every_map_on_the_same_tasks():
    family = _family()
    _, Q = glr.optimal_one_step_map(family)
    M = family.task_mean
    maps = {"Q*": lambda b: glr.apply_one_step_map(b, Q, M), "none": lambda b: np.broadcast_to(M, b.W.shape)}
    out = paired_exact_losses(maps, family, 2500, seed=9, chunk=1000)
    rng = np.random.default_rng(9)
    batches = [family.sample(1000, rng), family.sample(1000, rng), family.sample(500, rng)]
    W = np.concatenate([b.W for b in batches])
    direct = 0.5 * np.einsum("toi,ij,toj->t", M[None] - W, family.x_cov, M[None] - W) + 0.5 * family.noise_std ** 2
    assert np.allclose(out["none"], direct, rtol=1e-13)
    # Monte Carlo over tasks agrees with the closed-form expectation (standard errors)
    for name, Qm in (("Q*", Q), ("none", np.zeros((3, 3)))):
        exact = glr.expected_one_step_map_loss(family, Qm)
        assert abs(out[name].mean() - exact) < 4 * out[name].std(ddof=1) / np.sqrt(out[name].size)
