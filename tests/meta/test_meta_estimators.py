"""Meta-gradient estimators (linmaml.meta.estimators) against independent computations.

References: the numpy closed forms (k-step adaptation, exact and first-order MAML meta-gradients,
with adapt_layers for the parameters that do not adapt), a hand-written torch loop for truncated
backpropagation, central finite differences of a numpy proximal solve for iMAML's mixed terms, and
Monte Carlo standard errors for evolution strategies. The rows of ``linmaml verify`` (linmaml/checks/
estimators.py) cover the main identities; these tests cover the rates, the partial adaptation paths,
the engine plumbing and bad input.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from linmaml import meta
from linmaml.checks import estimators as rows
from linmaml.checks._common import central_difference, random_weights, relative_error
from linmaml.checks.meta import deep_linear_model, loss_function
from linmaml.closedform import deep_linear as dl
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta import estimators
from linmaml.meta.engine import Engine

torch.set_num_threads(1)


def _partial_instance(seed, loss="squared", steps=2, adapt=(1,)):
    """Depth-3 instance where only the layers ``adapt`` move in the inner loop."""
    rng = np.random.default_rng(seed)
    widths = [3, 2, 3, 1 if loss == "logistic" else 2]
    weights = random_weights(rng, widths)
    tasks, batch = rows.stacked_tasks(rng, 3, widths[0], widths[-1], loss, n_support=5, n_query=4)
    learner = meta.MAML(deep_linear_model(weights), lr=0.15, steps=steps, adapted=[f"{j}.weight" for j in adapt])
    return weights, tasks, batch, Engine(learner, loss_function(loss))


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_partial_adaptation_truncated_and_hfmaml_equal_the_closed_form(loss):
    """Layers that do not adapt get their mixed terms: checked against maml_grad(adapt_layers=...)."""
    weights, tasks, batch, engine = _partial_instance(1, loss, steps=3, adapt=(0, 2))
    exact = dl.maml_grad(weights, tasks, 0.15, 3, loss, adapt_layers=[0, 2])
    truncated = estimators.TruncatedMAML(3).estimate(engine, *batch)
    assert relative_error(rows.layer_grads(truncated, 3), exact) < 1e-12
    hf = estimators.HessianFreeMAML(1e-4).estimate(engine, *batch)
    assert relative_error(rows.layer_grads(hf, 3), exact) < 1e-6
    first = dl.maml_grad(weights, tasks, 0.15, 3, loss, adapt_layers=[0, 2], first_order=True)
    assert relative_error(rows.layer_grads(estimators.FirstOrderMAML().estimate(engine, *batch), 3), first) < 1e-12


def test_truncated_window_equals_a_hand_written_partial_backward():
    """0 < K < k: the first k − K steps from the numpy closed form (constants), the last K written
    out in torch on the matrices, θ entering through the straight-through identity."""
    rng = np.random.default_rng(3)
    weights = random_weights(rng, [3, 4, 2])
    tasks, batch = rows.stacked_tasks(rng, 2, 3, 2, "squared", n_support=5, n_query=6)
    k, K, lr = 4, 2, 0.1
    engine = Engine(meta.MAML(deep_linear_model(weights), lr=lr, steps=k), loss_function("squared"))
    got = rows.layer_grads(estimators.TruncatedMAML(K).estimate(engine, *batch), 2)
    theta = [torch.tensor(W, requires_grad=True) for W in weights]
    total = 0.0
    for Xs, Ys, Xq, Yq in tasks:
        early = dl.adapt(weights, Xs, Ys, lr, k - K)
        phi = [t + torch.tensor(e) - t.detach() for t, e in zip(theta, early)]
        Xs, Ys, Xq, Yq = (torch.tensor(a) for a in (Xs, Ys, Xq, Yq))
        for _ in range(K):
            W1, W2 = phi
            R = (Xs @ W1.T @ W2.T - Ys) / len(Xs)          # ∂loss/∂F
            g2 = R.T @ (Xs @ W1.T)
            g1 = W2.T @ R.T @ Xs
            phi = [W1 - lr * g1, W2 - lr * g2]
        F = Xq @ phi[0].T @ phi[1].T
        total = total + ((F - Yq) ** 2).sum() / (2 * len(Xq))
    expected = torch.autograd.grad(total / len(tasks), theta)
    assert relative_error(got, expected) < 1e-12


def test_hfmaml_error_falls_as_delta_squared_and_is_exact_on_a_quadratic():
    rng = np.random.default_rng(4)
    errors = [rows.hfmaml_error(np.random.default_rng(5), 2, 2, "squared", delta) for delta in (1e-2, 1e-3)]
    assert errors[0] > 1e-9, "the deep loss is not quadratic: the difference must err at a large step"
    assert 40 < errors[0] / errors[1] < 250, errors  # O(δ²): about 100 per decade
    # depth 1, squared loss: the support gradient is affine in θ, so any δ is exact
    assert rows.hfmaml_error(rng, 1, 3, "squared", 0.5) < 1e-12


def test_imaml_mixed_terms_of_parameters_that_do_not_adapt_equal_finite_differences():
    """Only the middle layer W2 adapts, so the proximal problem is quadratic in W2 and solved exactly
    by hand: with A = Xs W1ᵀ and B = W3, ((AᵀA/n) ⊗ BᵀB + λI) vec W2* = vec(BᵀYᵀA/n + λθ2). The
    meta-gradient w.r.t. every layer (W1 and W3 through the mixed terms) by central differences."""
    weights, tasks, batch, engine = _partial_instance(6, "squared", steps=1, adapt=(1,))
    lam = 1.5

    def meta_loss(ws):
        W1, theta2, W3 = ws
        total = 0.0
        for Xs, Ys, Xq, Yq in tasks:
            A, n = Xs @ W1.T, len(Xs)
            system = np.kron(A.T @ A / n, W3.T @ W3) + lam * np.eye(theta2.size)
            rhs = (W3.T @ Ys.T @ A / n + lam * theta2).ravel(order="F")
            W2 = np.linalg.solve(system, rhs).reshape(theta2.shape, order="F")
            total += dl.task_loss([W1, W2, W3], Xq, Yq) / len(tasks)
        return total

    expected = central_difference(meta_loss, weights, h=1e-3)
    rate = rows.solver_rate(weights, tasks, "squared", lam)
    estimate = estimators.iMAML(lam=lam, cg_steps=20, tolerance=1e-13, max_inner_steps=20_000,
                                inner_lr=rate).estimate(engine, *batch)
    assert relative_error(rows.layer_grads(estimate, 3), expected) < 1e-8


def test_imaml_reports_its_solver_and_stops_cg_early():
    weights, tasks, batch, engine = _partial_instance(7, steps=1, adapt=(0, 1, 2))
    estimate = estimators.iMAML(lam=2.0, cg_steps=3, tolerance=1e-3, max_inner_steps=5).estimate(engine, *batch)
    info = estimate.info
    assert len(info["cg_iterations"]) == 3 and max(info["cg_iterations"]) <= 3
    assert max(info["inner_steps"]) <= 5


@pytest.mark.parametrize("population, seeds", [(2, 60), (16, 30)])
def test_es_mean_squared_error_is_the_closed_form_variance(population, seeds):
    """Depth-1 squared loss: the objective is quadratic, so each antithetic pair gives exactly εεᵀg and
    E‖ĝ − g‖² = (d + 1)‖g‖²/N (d coordinates, g the exact MAML gradient): the mean over seeds of
    ‖ĝ − g‖² agrees with it within 4.5 standard errors, at two populations (the 1/N law)."""
    rng = np.random.default_rng(8)
    weights, tasks, batch, lr, engine = rows.instance(rng, 1, 2, "squared", count=1)
    exact = dl.maml_grad(weights, tasks, lr, 2, "squared")[0]
    squared = [float(np.sum((rows.layer_grads(estimators.EvolutionStrategies(population, 0.2, seed=s)
                                              .estimate(engine, *batch), 1)[0].numpy() - exact) ** 2))
               for s in range(seeds)]
    expected = (exact.size + 1) * float(np.sum(exact ** 2)) / population
    se = np.std(squared, ddof=1) / np.sqrt(seeds)
    assert abs(np.mean(squared) - expected) < 4.5 * se, (np.mean(squared), expected, se)


def test_es_is_seeded_and_restores_the_parameters_exactly():
    weights, tasks, batch, engine = _partial_instance(9)
    before = {n: p.detach().clone() for n, p in engine.learner.named_parameters()}
    a = estimators.EvolutionStrategies(5, 0.1, seed=3).estimate(engine, *batch)
    b = estimators.EvolutionStrategies(5, 0.1, seed=3).estimate(engine, *batch)
    c = estimators.EvolutionStrategies(5, 0.1, seed=4).estimate(engine, *batch)
    for n, p in engine.learner.named_parameters():
        assert torch.equal(p, before[n])
        assert torch.equal(a.grads[n], b.grads[n])
    assert not all(torch.equal(a.grads[n], c.grads[n]) for n in a.grads)
    # global generator: reproducible from torch.manual_seed
    torch.manual_seed(11)
    d = estimators.EvolutionStrategies(5, 0.1, seed=None).estimate(engine, *batch)
    torch.manual_seed(11)
    e = estimators.EvolutionStrategies(5, 0.1, seed=None).estimate(engine, *batch)
    assert all(torch.equal(d.grads[n], e.grads[n]) for n in d.grads)


@pytest.mark.parametrize("strategy", ["split", "vmap"])
def test_reptile_and_fomaml_do_not_depend_on_the_strategy(strategy):
    weights, tasks, batch, engine = _partial_instance(10, adapt=(0, 1, 2))
    other = Engine(engine.learner, engine.loss_fn, strategy=strategy, tasks_per_chunk=2)
    for estimator in (estimators.Reptile(), estimators.FirstOrderMAML()):
        a, b = estimator.estimate(engine, *batch), estimator.estimate(other, *batch)
        assert relative_error(list(a.grads.values()), list(b.grads.values())) < 1e-12
        assert abs(a.loss - b.loss) < 1e-12


def test_reptile_and_fomaml_work_with_a_learned_transform_and_the_others_refuse_it():
    rng = np.random.default_rng(12)
    weights = random_weights(rng, [3, 3, 2])
    _, batch = rows.stacked_tasks(rng, 2, 3, 2, n_support=4, n_query=4)
    learner = meta.MAML(deep_linear_model(weights), lr=0.1, steps=2, transform=meta.KFO())
    engine = Engine(learner, loss_function("squared"))
    fast = engine.adapted(batch[0], batch[1])
    reptile = estimators.Reptile().estimate(engine, *batch)
    expected = (learner.model[0].weight - fast["0.weight"]).mean(0) / 0.2
    assert relative_error(reptile.grads["model.0.weight"], expected) < 1e-12
    assert all(float(g.abs().max()) == 0 for n, g in reptile.grads.items() if n.startswith("transform"))
    estimators.FirstOrderMAML().estimate(engine, *batch)
    for estimator in (estimators.TruncatedMAML(1), estimators.iMAML(), estimators.HessianFreeMAML()):
        with pytest.raises(ArgumentError) as caught:
            estimator.estimate(engine, *batch)
        assert caught.value.argument == "transform"


def test_estimator_engine_accumulates_the_estimate_like_meta_gradient():
    weights, tasks, batch, engine = _partial_instance(13, adapt=(0, 1, 2))
    estimate = estimators.TruncatedMAML(2).estimate(engine, *batch)
    wrapped = estimators.EstimatorEngine(engine, estimators.TruncatedMAML(2))
    engine.learner.zero_grad(set_to_none=True)
    loss_sum, _ = wrapped.meta_gradient(*batch, scale=1.0 / 3)
    # the engine's own exact meta-gradient of the mean (K = k = 2 is exact MAML)
    exact = dl.maml_grad(weights, tasks, 0.15, 2)
    assert relative_error([p.grad for p in engine.learner.parameters()], exact) < 1e-12
    assert relative_error([p.grad for p in engine.learner.parameters()], list(estimate.grads.values())) < 1e-12
    assert abs(loss_sum / 3 - dl.maml_loss(weights, tasks, 0.15, 2)) < 1e-12
    assert wrapped.score is not None and wrapped.learner is engine.learner


@pytest.mark.parametrize("build, argument", [
    (lambda: estimators.TruncatedMAML(-1), "window"),
    (lambda: estimators.iMAML(lam=0), "lam"),
    (lambda: estimators.iMAML(cg_steps=0), "cg_steps"),
    (lambda: estimators.iMAML(tolerance=-1), "tolerance"),
    (lambda: estimators.EvolutionStrategies(population=0), "population"),
    (lambda: estimators.EvolutionStrategies(sigma=0), "sigma"),
    (lambda: estimators.HessianFreeMAML(delta=float("nan")), "delta"),
])
def test_bad_settings_name_their_argument(build, argument):
    with pytest.raises((ArgumentError, ArgumentTypeError)) as caught:
        build()
    assert caught.value.argument == argument


def test_imaml_refuses_a_non_positive_solver_rate():
    rng = np.random.default_rng(15)
    weights = random_weights(rng, [2, 2])
    _, batch = rows.stacked_tasks(rng, 1, 2, 2, n_support=3, n_query=3)
    engine = Engine(meta.MAML(deep_linear_model(weights), lr=-0.1, steps=1), loss_function("squared"))
    with pytest.raises(ArgumentError) as caught:
        estimators.iMAML().estimate(engine, *batch)
    assert caught.value.argument == "inner_lr"


def test_bad_engine_and_estimator_are_refused():
    with pytest.raises(ArgumentTypeError) as caught:
        estimators.Reptile().estimate(object(), *[torch.zeros(1, 2, 1)] * 4)
    assert caught.value.argument == "engine"
    _, _, _, engine = _partial_instance(14)
    with pytest.raises(ArgumentTypeError) as caught:
        estimators.EstimatorEngine(engine, "reptile")
    assert caught.value.argument == "estimator"
