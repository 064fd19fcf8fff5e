"""Held-out evaluation: confidence intervals against direct formulas and Monte Carlo coverage;
adaptation curves against a per-task loop through the numpy closed forms."""
import math

import numpy as np
import pytest

from linmaml.closedform import deep_linear as cf
from linmaml.simulator import adaptation_curve, deep, linnet, logr, mean_ci, per_task_curves, ratio_of_means_ci
from linmaml.tasks import ClassificationFamily, RegressionFamily

# Student-t 0.975 quantiles from printed tables (df = 4, 9, 29).
T975 = {5: 2.776445, 10: 2.262157, 30: 2.045230}


@pytest.mark.parametrize("n", sorted(T975))
def test_mean_ci_matches_the_textbook_formula(n):
    values = np.random.default_rng(n).standard_normal(n) * 3 + 1
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    got_mean, half = mean_ci(values)
    assert got_mean == pytest.approx(mean, rel=1e-13)
    assert half == pytest.approx(T975[n] * sd / math.sqrt(n), rel=1e-6)


def test_mean_ci_covers_the_true_mean_95_percent_of_the_time():
    reps, n = 4000, 8
    samples = np.random.default_rng(0).standard_normal((n, reps)) + 2.0
    mean, half = mean_ci(samples, axis=0)
    coverage = np.mean(np.abs(mean - 2.0) <= half)
    se = math.sqrt(0.95 * 0.05 / reps)
    assert abs(coverage - 0.95) < 4 * se


def test_ratio_ci_is_the_delta_method_on_linearised_values():
    rng = np.random.default_rng(1)
    b = rng.gamma(4.0, 1.0, size=500)
    a = 0.3 * b + rng.normal(0, 0.2, size=500)
    ratio, half = ratio_of_means_ci(a, b)
    assert ratio == pytest.approx(a.mean() / b.mean())
    # The same interval written as the CI of the linearised per-sample values (a − r·b)/mean(b).
    _, half_lin = mean_ci((a - ratio * b) / b.mean())
    assert half == pytest.approx(half_lin, rel=1e-10)


def test_ratio_ci_has_nominal_coverage():
    rng = np.random.default_rng(2)
    reps, n, hits = 1500, 200, 0
    for _ in range(reps):
        b = rng.exponential(2.0, size=n)
        a = 0.5 * b + rng.normal(0, 0.5, size=n)  # true ratio of means 0.5
        ratio, half = ratio_of_means_ci(a, b)
        hits += abs(ratio - 0.5) <= half
    assert abs(hits / reps - 0.95) < 4 * math.sqrt(0.95 * 0.05 / reps)


def _closed_form_curve(chain, weights, tasks, lr, steps):
    """Per-task loss/accuracy after 0..steps inner steps, via the numpy closed forms, one task at a time."""
    weights = [w.numpy() for w in weights]
    loss, acc = np.zeros((steps + 1, len(tasks))), np.zeros((steps + 1, len(tasks)))
    for t, (Xs, Ys, Xq, Yq) in enumerate(tasks):
        for k in range(steps + 1):
            adapted = cf.adapt(weights, Xs, Ys, lr, k, chain.loss, chain.adapt_layers)
            loss[k, t] = cf.task_loss(adapted, Xq, Yq, chain.loss)
            acc[k, t] = np.mean((Xq @ cf.end_to_end(adapted).T > 0) == (Yq > 0.5))
    return loss, acc


def test_regression_curve_matches_closed_form_loop():
    chain = deep(3, 2, (4,))
    fam = RegressionFamily(3, 2, task_mean=0.5, noise_std=0.1, n_support=6, n_query=5)
    tasks = fam.sample(7, seed=3)
    weights = chain.init(1)
    got = per_task_curves(chain, weights, tasks, 0.2, 3)
    loss, _ = _closed_form_curve(chain, weights, tasks, 0.2, 3)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-11)
    assert "accuracy" not in got


def test_classification_curve_matches_closed_form_loop_and_band():
    chain = linnet(logr(3), (4,))
    fam = ClassificationFamily(3, task_mean=[1.0, 0, 0], n_support=6, n_query=9)
    weights = chain.init(2)
    curve = adaptation_curve(chain, weights, fam, lr=0.3, max_steps=2, n_tasks=40, seed=5)
    loss, acc = _closed_form_curve(chain, weights, fam.sample(40, 5), 0.3, 2)
    np.testing.assert_allclose(curve.loss_mean, loss.mean(axis=1), rtol=1e-11)
    np.testing.assert_allclose(curve.accuracy_mean, acc.mean(axis=1), rtol=1e-12)
    t39 = 2.022691  # Student t 0.975 quantile, df = 39
    np.testing.assert_allclose(curve.accuracy_ci, t39 * acc.std(axis=1, ddof=1) / math.sqrt(40), rtol=1e-6)
    d = curve.to_dict()
    assert d["steps"] == [0, 1, 2] and len(d["accuracy_ci"]) == 3


def test_bad_level_and_sizes():
    with pytest.raises(ValueError, match="^level"):
        mean_ci([1.0, 2.0], level=1.5)
    with pytest.raises(ValueError, match="^values"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="^numerator"):
        ratio_of_means_ci([1.0, 2.0], [1.0, 2.0, 3.0])


def test_learner_curves_of_a_meta_learner_match_closed_form_loop():
    # The route every figure's meta-learner takes (default scoring: the learner's own forward), on a
    # plain meta.MAML around a Sequential of Linears (LogR+LinNet's sizes), against the numpy closed forms task by task; three
    # steps from a learner trained for two (scored without the once-per-learner warning).
    import warnings

    import torch

    from linmaml import meta
    from linmaml.meta.losses import logistic_loss
    from linmaml.simulator import learner_curves

    chain = linnet(logr(3), (4,))
    weights = chain.init(2)
    model = torch.nn.Sequential(*(torch.nn.Linear(W.shape[1], W.shape[0], bias=False) for W in weights)).double()
    with torch.no_grad():
        for layer, W in zip(model, weights):
            layer.weight.copy_(W)
    fam = ClassificationFamily(3, task_mean=[1.0, 0, 0], n_support=6, n_query=9)
    tasks = fam.sample(11, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = learner_curves(meta.MAML(model, lr=0.3, steps=2), tasks, logistic_loss, 3, accuracy=True)
    loss, acc = _closed_form_curve(chain, weights, tasks, 0.3, 3)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-11)
    np.testing.assert_array_equal(got["accuracy"], acc)


def test_learner_curves_refuse_accuracy_without_binary_labels():
    import torch

    from linmaml import meta
    from linmaml.errors import ArgumentError
    from linmaml.meta.losses import squared_loss
    from linmaml.simulator import learner_curves

    tasks = RegressionFamily(3, 1, task_mean=0.5, n_support=4, n_query=4).sample(3, seed=0)
    learner = meta.MAML(torch.nn.Linear(3, 1, bias=False).double(), lr=0.1, steps=1)
    with pytest.raises(ArgumentError) as info:
        learner_curves(learner, tasks, squared_loss, 1, accuracy=True)
    assert info.value.argument == "tasks"


def test_learner_curves_of_anil_match_the_closed_form_head_only_loop():
    # ANIL has no .model (features and head): the curve route needs only what the engine needs.
    import torch

    from linmaml import meta
    from linmaml.meta.losses import squared_loss
    from linmaml.simulator import learner_curves

    chain = deep(3, 2, (4,), adapt_layers=(1,))  # the closed forms adapt the head (layer 1) only
    weights = chain.init(5)
    features = torch.nn.Linear(3, 4, bias=False).double()
    head = torch.nn.Linear(4, 2, bias=False).double()
    with torch.no_grad():
        features.weight.copy_(weights[0])
        head.weight.copy_(weights[1])
    tasks = RegressionFamily(3, 2, task_mean=0.5, noise_std=0.1, n_support=6, n_query=5).sample(9, seed=6)
    got = learner_curves(meta.ANIL(features, head, lr=0.2, steps=3), tasks, squared_loss, 3)
    loss, _ = _closed_form_curve(chain, weights, tasks, 0.2, 3)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-11)
