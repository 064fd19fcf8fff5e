"""Simulator MAML: meta-gradients against finite differences, batching against per-task loops, and
the recorded trajectory against an independent replay of the same run."""
import numpy as np
import pytest
import torch

from linmaml.simulator import deep, linnet, logr, shallow
from linmaml.simulator import train as T
from linmaml.tasks import ClassificationFamily, RegressionFamily


def _kronecker_preconditioner(weights):
    """Σ_j (B_jᵀB_j) ⊗ (A_jA_jᵀ), A_j the product above layer j, B_j below (all layers adapt)."""
    d0, dL = weights[0].shape[1], weights[-1].shape[0]
    P = np.zeros((d0 * dL, d0 * dL))
    for j in range(len(weights)):
        below, above = np.eye(d0), np.eye(dL)
        for W in weights[:j]:
            below = W @ below
        for W in reversed(weights[j + 1:]):
            above = above @ W
        P += np.kron(below.T @ below, above @ above.T)
    return P


def _finite_difference_grad(weights, tasks, lr, steps, loss, layers, eps=1e-6):
    grads = []
    for j, W in enumerate(weights):
        g = np.zeros_like(W)
        for idx in np.ndindex(*W.shape):
            plus = [w.copy() for w in weights]
            minus = [w.copy() for w in weights]
            plus[j][idx] += eps
            minus[j][idx] -= eps
            f = lambda ws: float(T.maml_objective([torch.as_tensor(w) for w in ws], tasks, lr, steps, loss, layers).detach())  # noqa: E731
            g[idx] = (f(plus) - f(minus)) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("loss,layers", [("squared", None), ("logistic", None), ("squared", (1,))])
def test_second_order_meta_gradient_matches_finite_differences(loss, layers):
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3, 2)) / 1.5, rng.standard_normal((1, 3)) / 1.7]
    if loss == "squared":
        fam = RegressionFamily(2, 1, task_mean=0.5, noise_std=0.2, n_support=4, n_query=5)
    else:
        fam = ClassificationFamily(2, task_mean=[1.0, 0.0], n_support=4, n_query=5)
    tasks = fam.sample(3, seed=1)
    _, grads = T.maml_gradient([torch.as_tensor(w) for w in weights], tasks, 0.3, 3, loss, layers)
    numeric = _finite_difference_grad(weights, tasks, 0.3, 3, loss, layers)
    for g, n in zip(grads, numeric):
        np.testing.assert_allclose(g.numpy(), n, rtol=1e-6, atol=1e-8)


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
    _, (g,) = T.maml_gradient([torch.as_tensor(W)], tasks, 0.2, 2, "squared", first_order=True)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-12)


def test_batched_adaptation_equals_one_task_at_a_time():
    rng = np.random.default_rng(2)
    chain = deep(3, 2, (4,), adapt_layers=(0,))
    W = chain.init(0)
    Xs, Ys = rng.standard_normal((5, 6, 3)), rng.standard_normal((5, 6, 2))
    batched = T.adapt(W, Xs, Ys, [0.1, 0.2], 2, "squared", chain.adapt_layers, create_graph=False)
    assert batched[0].shape == (5, 4, 3) and batched[1].shape == (2, 4)  # W2 not adapted: shared
    for t in range(5):
        single = T.adapt(W, Xs[t], Ys[t], [0.1, 0.2], 2, "squared", chain.adapt_layers, create_graph=False)
        np.testing.assert_allclose(batched[0][t].numpy(), single[0].numpy(), rtol=1e-13)
        np.testing.assert_allclose(batched[1].numpy(), single[1].numpy())


def test_trajectory_shapes_and_replay():
    """Record of a short SGD run: shapes, the start, each meta-loss and each update, replayed
    independently from the documented seeding (tasks from SeedSequence(seed).spawn(2)[1])."""
    chain = linnet(logr(3), (4,))
    fam = ClassificationFamily(3, task_mean=[1.0, 0, 0], n_support=5, n_query=7)
    init = chain.init(7)
    run = T.meta_train(chain, fam, lr=0.1, steps=2, meta_steps=5, meta_batch=3, meta_lr=0.05, optimizer="sgd",
                       init=init, seed=11)
    S = 5
    assert run.meta_steps == S and run.meta_loss.shape == (S,)
    assert [W.shape for W in run.weights] == [(S + 1, *s) for s in chain.shapes()]
    assert run.preconditioner_eigenvalues.shape == (S + 1, 3)
    for W, W0 in zip(run.weights, init):
        np.testing.assert_array_equal(W[0], W0.numpy())
    task_rng = np.random.default_rng(np.random.SeedSequence(11).spawn(2)[1])
    for s in range(S):
        batch = fam.sample(3, task_rng)
        before = [torch.as_tensor(W[s]) for W in run.weights]
        value, grads = T.maml_gradient(before, batch, 0.1, 2, "logistic")
        assert run.meta_loss[s] == pytest.approx(value, rel=1e-12)
        for W, g in zip(run.weights, grads):
            np.testing.assert_allclose(W[s + 1], W[s] - 0.05 * g.numpy(), rtol=1e-12, atol=1e-15)
        P = _kronecker_preconditioner([W[s] for W in run.weights])
        np.testing.assert_allclose(run.preconditioner_eigenvalues[s], np.linalg.eigvalsh(P), rtol=1e-10, atol=1e-13)


def test_adam_first_step_moves_each_weight_by_the_learning_rate():
    """Bias-corrected Adam's first step is −lr·g/(|g| + ε): every entry moves by ≈ lr against its gradient."""
    fam = RegressionFamily(2, 1, task_mean=1.0, n_support=4, n_query=4)
    chain = shallow(2)
    init = chain.init(3)
    run = T.meta_train(chain, fam, lr=0.1, steps=1, meta_steps=1, meta_batch=2, meta_lr=0.01, init=init, seed=5)
    batch = fam.sample(2, np.random.default_rng(np.random.SeedSequence(5).spawn(2)[1]))
    _, (g,) = T.maml_gradient(init, batch, 0.1, 1, "squared")
    np.testing.assert_allclose(run.weights[0][1] - run.weights[0][0], -0.01 * np.sign(g.numpy()), rtol=1e-6)


def test_meta_training_is_seeded_and_validates():
    fam = RegressionFamily(2, 1, n_support=3, n_query=3)
    a = T.meta_train(shallow(2), fam, lr=0.1, meta_steps=3, meta_batch=2, seed=4)
    b = T.meta_train(shallow(2), fam, lr=0.1, meta_steps=3, meta_batch=2, seed=4)
    np.testing.assert_array_equal(a.weights[0], b.weights[0])
    with pytest.raises(ValueError, match="^family"):
        T.meta_train(shallow(3), fam, lr=0.1, meta_steps=1)
    with pytest.raises(ValueError, match="^steps"):
        T.adapt(shallow(2).init(0), np.zeros((3, 2)), np.zeros((3, 1)), 0.1, -1)
    with pytest.raises(ValueError, match="^optimizer"):
        T.meta_train(shallow(2), fam, lr=0.1, meta_steps=1, optimizer="rmsprop")
