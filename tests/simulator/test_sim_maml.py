"""Simulator MAML (adapt, maml_loss, maml_grad through linmaml.meta): against finite differences, a
first-order gradient written out by hand, per-task loops and the closed forms' numpy recursions."""
import numpy as np
import pytest
import torch

from linmaml import simulator as S
from linmaml.checks._common import central_difference
from linmaml.closedform import deep_linear as cf
from linmaml.tasks import ClassificationFamily, RegressionFamily


@pytest.mark.parametrize("loss,layers", [("squared", None), ("logistic", None), ("squared", (1,))])
def test_second_order_meta_gradient_matches_finite_differences(loss, layers):
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3, 2)) / 1.5, rng.standard_normal((1, 3)) / 1.7]
    if loss == "squared":
        fam = RegressionFamily(2, 1, task_mean=0.5, noise_std=0.2, n_support=4, n_query=5)
    else:
        fam = ClassificationFamily(2, task_mean=[1.0, 0.0], n_support=4, n_query=5)
    tasks = fam.sample(3, seed=1)
    value, grads = S.maml_value_and_grad(weights, tasks, 0.3, 3, loss, layers)
    numeric = central_difference(lambda ws: S.maml_loss(ws, tasks, 0.3, 3, loss, layers), weights, h=1e-3)
    for g, n in zip(grads, numeric):
        np.testing.assert_allclose(g.numpy(), n, rtol=1e-7, atol=1e-9)
    assert value == pytest.approx(S.maml_loss(weights, tasks, 0.3, 3, loss, layers), rel=1e-14)


def test_first_order_gradient_is_the_query_gradient_at_the_adapted_weights():
    """Shallow squared loss, by hand: W' = W − α(W S_s − C_s) per step; FOMAML grad = mean_t (W'_t S_q − C_q)."""
    rng = np.random.default_rng(1)
    fam = RegressionFamily(3, 2, task_mean=0.3, noise_std=0.1, n_support=5, n_query=6)
    tasks = fam.sample(4, seed=2)
    W = rng.standard_normal((2, 3))
    expected = np.zeros_like(W)
    for Xs, Ys, Xq, Yq in tasks:
        Wt = W.copy()
        for _ in range(2):
            Wt = Wt - 0.2 * (Wt @ Xs.T @ Xs - Ys.T @ Xs) / len(Xs)
        expected += (Wt @ Xq.T @ Xq - Yq.T @ Xq) / len(Xq) / len(tasks)
    (g,) = S.maml_grad([torch.as_tensor(W)], tasks, 0.2, 2, "squared", first_order=True)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("steps,layers", [(0, None), (2, ()), (3, (0, 2))])
def test_loss_and_grad_equal_the_closed_forms_also_without_adaptation(steps, layers):
    """0 steps or no adapted layer is the plain query loss; otherwise the hand-derived adjoint."""
    rng = np.random.default_rng(6)
    weights = [rng.standard_normal(s) / 2 for s in ((3, 2), (4, 3), (2, 4))]
    fam = RegressionFamily(2, 2, task_mean=0.4, noise_std=0.1, n_support=5, n_query=4)
    tasks = fam.sample(3, seed=4)
    value, grads = S.maml_value_and_grad(weights, tasks, [0.1] * steps, steps, "squared", layers)
    ref_value, ref_grads = cf.maml_value_and_grad(weights, tasks, [0.1] * steps, steps, "squared", layers)
    assert value == pytest.approx(ref_value, rel=1e-13)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-11, atol=1e-14)


def test_batched_adaptation_equals_one_task_at_a_time_and_the_path_is_stepwise():
    rng = np.random.default_rng(2)
    chain = S.deep(3, 2, (4,), adapt_layers=(0,))
    W = chain.init(0)
    Xs, Ys = rng.standard_normal((5, 6, 3)), rng.standard_normal((5, 6, 2))
    batched = S.adapt(W, Xs, Ys, [0.1, 0.2], 2, "squared", chain.adapt_layers)
    assert batched[0].shape == (5, 4, 3) and batched[1].shape == (2, 4)  # W2 not adapted: shared
    path = S.adapt(W, Xs, Ys, [0.1, 0.2], 2, "squared", chain.adapt_layers, return_path=True)
    assert len(path) == 3 and torch.equal(path[0][0], W[0])
    for t in range(5):
        reference = cf.adapt([w.numpy() for w in W], Xs[t], Ys[t], [0.1, 0.2], 2, "squared", (0,))
        np.testing.assert_allclose(batched[0][t].numpy(), reference[0], rtol=1e-13)
        np.testing.assert_allclose(path[2][0][t].numpy(), reference[0], rtol=1e-13)
        one = cf.adapt([w.numpy() for w in W], Xs[t], Ys[t], 0.1, 1, "squared", (0,))
        np.testing.assert_allclose(path[1][0][t].numpy(), one[0], rtol=1e-13)
        single = S.adapt(W, Xs[t], Ys[t], [0.1, 0.2], 2, "squared", chain.adapt_layers)
        np.testing.assert_allclose(single[0].numpy(), reference[0], rtol=1e-13)
    assert not batched[0].requires_grad


def test_per_task_weights_adapt_each_from_its_own_start():
    """Weights with a task axis (T, d_j, d_{j−1}): task t starts from its own weights."""
    rng = np.random.default_rng(3)
    W = [rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 1, 2))]
    Xs, Ys = rng.standard_normal((4, 5, 3)), rng.standard_normal((4, 5, 1))
    out = S.adapt(W, Xs, Ys, 0.2, 2)
    for t in range(4):
        reference = cf.adapt([W[0][t], W[1][t]], Xs[t], Ys[t], 0.2, 2)
        for ours, theirs in zip(out, reference):
            np.testing.assert_allclose(ours[t].numpy(), theirs, rtol=1e-13)


def test_create_graph_keeps_adapt_differentiable_to_second_order():
    """d/dW of the query loss after adapt(create_graph=True) = closed-form maml_grad (one task)."""
    rng = np.random.default_rng(7)
    W = [torch.as_tensor(rng.standard_normal((3, 2))).requires_grad_(), torch.as_tensor(rng.standard_normal((1, 3))).requires_grad_()]
    Xs, Ys, Xq, Yq = (rng.standard_normal(s) for s in ((5, 2), (5, 1), (4, 2), (4, 1)))
    adapted = S.adapt(W, Xs, Ys, 0.1, 2, create_graph=True)
    grads = torch.autograd.grad(S.task_loss(adapted, torch.as_tensor(Xq), torch.as_tensor(Yq), "squared"), W)
    reference = cf.maml_grad([w.detach().numpy() for w in W], [(Xs, Ys, Xq, Yq)], 0.1, 2)
    for g, r in zip(grads, reference):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-12)


@pytest.mark.parametrize("call,message", [
    (lambda: S.adapt([np.zeros((1, 2))], np.zeros((3, 2)), np.zeros((3, 1)), 0.1, -1), "steps"),
    (lambda: S.adapt([np.zeros((1, 2))], np.zeros((3, 2)), np.zeros((3, 1)), [0.1], 2), "lr"),
    (lambda: S.adapt([np.zeros((1, 2))], np.zeros((3, 2)), np.zeros((3, 1)), 0.1, 1, "hinge"), "loss"),
    (lambda: S.adapt([np.zeros((1, 2))], np.zeros((3, 2)), np.zeros((3, 1)), 0.1, 1, adapt_layers=(3,)), "adapt_layers"),
    (lambda: S.adapt([np.zeros((1, 2))], np.zeros((3, 2)), np.zeros((4, 1)), 0.1, 1), "Xs, Ys"),
    (lambda: S.adapt(np.zeros((1, 2)), np.zeros((3, 2)), np.zeros((3, 1)), 0.1, 1), "weights"),
    (lambda: S.maml_loss([np.zeros((1, 2))], (np.zeros((3, 2)),), 0.1, 1), "tasks"),
])
def test_bad_arguments_name_themselves(call, message):
    with pytest.raises((ValueError, TypeError), match="^" + message):
        call()
