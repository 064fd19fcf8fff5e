"""meta_train: the recorded trajectory replayed independently (numpy closed-form meta-gradients and
hand-written optimizer updates), for deep linear chains and for linmaml.meta learners."""
import numpy as np
import pytest
import torch
from torch import nn

from linmaml import meta
from linmaml import simulator as S
from linmaml.closedform import deep_linear as cf
from linmaml.closedform.preconditioner import preconditioner
from linmaml.tasks import ClassificationFamily, RegressionFamily


def _task_rng(seed):
    """The documented seeding: tasks from the second child of SeedSequence(seed)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])


def test_trajectory_shapes_and_sgd_replay():
    """A short SGD run of LogR+LinNet: shapes, the start, each meta-loss and each update replayed with
    the closed-form MAML gradient, and the recorded preconditioner eigenvalues (Kronecker formula)."""
    chain = S.linnet(S.logr(3), (4,))
    fam = ClassificationFamily(3, task_mean=[1.0, 0, 0], n_support=5, n_query=7)
    init = chain.init(7)
    run = S.meta_train(chain, fam, lr=0.1, steps=2, meta_steps=5, meta_batch=3, meta_lr=0.05, optimizer="sgd",
                       init=init, seed=11)
    S_ = 5
    assert run.meta_steps == S_ and run.meta_loss.shape == (S_,) and run.chain is chain
    assert [W.shape for W in run.weights] == [(S_ + 1, *s) for s in chain.shapes()]
    assert run.names == ["0.weight", "1.weight", "2.weight"] and run.preconditioner_eigenvalues.shape == (S_ + 1, 3)
    for W, W0 in zip(run.weights, init):
        np.testing.assert_array_equal(W[0], W0.numpy())
    rng = _task_rng(11)
    for s in range(S_):
        batch = fam.sample(3, rng)
        value, grads = cf.maml_value_and_grad([W[s] for W in run.weights], batch, 0.1, 2, "logistic")
        assert run.meta_loss[s] == pytest.approx(value, rel=1e-12)
        for W, g in zip(run.weights, grads):
            np.testing.assert_allclose(W[s + 1], W[s] - 0.05 * g, rtol=1e-11, atol=1e-14)
        P = preconditioner([W[s] for W in run.weights])
        np.testing.assert_allclose(run.preconditioner_eigenvalues[s], np.linalg.eigvalsh(P), rtol=1e-10, atol=1e-13)
    for W, p in zip(run.weights, run.learner.parameters()):  # the learner holds the final weights
        np.testing.assert_array_equal(W[-1], p.detach().numpy())


def _adam_replay(weights, grads_of, steps, lr, betas=(0.9, 0.999), eps=1e-8):
    """Adam (Kingma & Ba, bias-corrected) written out in numpy; ``grads_of(weights, s)`` the gradient."""
    m = [np.zeros_like(W) for W in weights]
    v = [np.zeros_like(W) for W in weights]
    path = [weights]
    for s in range(steps):
        g = grads_of(weights, s)
        m = [betas[0] * a + (1 - betas[0]) * b for a, b in zip(m, g)]
        v = [betas[1] * a + (1 - betas[1]) * b * b for a, b in zip(v, g)]
        weights = [W - lr * (a / (1 - betas[0] ** (s + 1))) / (np.sqrt(b / (1 - betas[1] ** (s + 1))) + eps)
                   for W, a, b in zip(weights, m, v)]
        path.append(weights)
    return path


def test_adam_run_replays_with_numpy_adam_and_closed_form_gradients():
    fam = RegressionFamily(2, 1, task_mean=1.0, noise_std=0.1, n_support=4, n_query=4)
    chain = S.deep(2, 1, (3,))
    run = S.meta_train(chain, fam, lr=0.1, steps=1, meta_steps=4, meta_batch=2, meta_lr=0.01, seed=5)
    batches = [fam.sample(2, rng) for rng in [_task_rng(5)] for _ in range(4)]
    start = [W[0] for W in run.weights]
    path = _adam_replay(start, lambda ws, s: cf.maml_grad(ws, batches[s], 0.1, 1), 4, 0.01)
    for s, ws in enumerate(path):
        for W, expected in zip(run.weights, ws):
            np.testing.assert_allclose(W[s], expected, rtol=1e-9, atol=1e-12)


def _linear(W):
    linear = nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(W))
    return linear


def test_a_meta_learner_trains_in_place_and_replays_with_the_closed_form():
    """MAML(Linear) is the shallow model: its SGD trajectory is the closed form's, step by step."""
    fam = RegressionFamily(3, 2, task_mean=0.5, noise_std=0.1, n_support=6, n_query=5)
    W0 = np.random.default_rng(8).standard_normal((2, 3)) / 2
    learner = meta.MAML(_linear(W0), lr=0.2, steps=2)
    run = S.meta_train(learner, fam, meta_steps=3, meta_batch=4, meta_lr=0.1, optimizer="sgd", seed=2)
    assert run.chain is None and run.preconditioner_eigenvalues is None and run.learner is learner
    assert run.names == ["model.weight"] and run.settings["loss"] == "squared"
    rng = _task_rng(2)
    W = W0
    for s in range(3):
        value, (g,) = cf.maml_value_and_grad([W], fam.sample(4, rng), 0.2, 2)
        assert run.meta_loss[s] == pytest.approx(value, rel=1e-12)
        W = W - 0.1 * g
        np.testing.assert_allclose(run.weights[0][s + 1], W, rtol=1e-11)
    np.testing.assert_allclose(learner.model.weight.detach().numpy(), W, rtol=1e-11)


def test_kfo_and_linnet_learners_record_every_parameter_and_their_meta_loss():
    """Transform parameters are trained and recorded; the first meta-loss equals a per-task loop over
    the learner's own adapt (no vmap), and a logistic learner reports the logistic loss."""
    fam = RegressionFamily(3, 1, task_mean=1.0, noise_std=0.1, n_support=8, n_query=8)
    W0 = np.random.default_rng(9).standard_normal((1, 3))
    kfo = meta.MAML(_linear(W0), lr=0.05, steps=1, transform=meta.KFO(psd=True))
    names = [n for n, _ in kfo.named_parameters()]
    batch = fam.sample(5, _task_rng(0)).torch()
    first = np.mean([float(S.squared_loss(kfo(xq, params=kfo.adapt(xs, ys, S.squared_loss)), yq).detach())
                     for xs, ys, xq, yq in zip(batch.Xs, batch.Ys, batch.Xq, batch.Yq)])
    before = [p.detach().clone() for p in kfo.parameters()]
    run = S.meta_train(kfo, fam, meta_steps=2, meta_batch=5, meta_lr=0.01, seed=0)
    assert run.names == names and len(names) > 1 and len(run.weights) == len(names)
    assert run.meta_loss[0] == pytest.approx(first, rel=1e-12)
    for W, p0, p in zip(run.weights, before, kfo.parameters()):
        np.testing.assert_array_equal(W[0], p0.numpy())
        np.testing.assert_array_equal(W[-1], p.detach().numpy())
        assert not np.array_equal(W[-1], W[0])  # Adam moves every parameter
    cls = ClassificationFamily(3, task_mean=[1.0, 0, 0], n_support=6, n_query=6)
    linnet = meta.MAML(meta.LinNet(_linear(W0), layers=2), lr=0.1, steps=1)
    run = S.meta_train(linnet, cls, meta_steps=1, meta_batch=4, loss="logistic", seed=1)
    chain = [W0, np.eye(1), np.eye(1)]  # LinNet starts as the identity: the chain's own logistic loss
    assert run.meta_loss[0] == pytest.approx(cf.maml_loss(chain, cls.sample(4, _task_rng(1)), 0.1, 1, "logistic"),
                                             rel=1e-12)


def test_meta_training_is_seeded_and_validates():
    fam = RegressionFamily(2, 1, n_support=3, n_query=3)
    a = S.meta_train(S.shallow(2), fam, lr=0.1, meta_steps=3, meta_batch=2, seed=4)
    b = S.meta_train(S.shallow(2), fam, lr=0.1, meta_steps=3, meta_batch=2, seed=4)
    np.testing.assert_array_equal(a.weights[0], b.weights[0])
    learner = meta.MAML(_linear(np.zeros((1, 2))), lr=0.1, steps=1)
    for call, message in [
        (lambda: S.meta_train(S.shallow(3), fam, lr=0.1, meta_steps=1), "family"),
        (lambda: S.meta_train(S.shallow(2), fam, lr=0.1, meta_steps=1, optimizer="rmsprop"), "optimizer"),
        (lambda: S.meta_train(S.shallow(2), fam, meta_steps=1), "lr"),
        (lambda: S.meta_train(S.shallow(2), fam, lr=0.1, meta_steps=1, loss="logistic"), "loss"),
        (lambda: S.meta_train(learner, fam, lr=0.1, meta_steps=1), "lr"),
        (lambda: S.meta_train(learner, fam, steps=2, meta_steps=1), "steps"),
        (lambda: S.meta_train(learner, fam, meta_steps=1, loss="hinge"), "loss"),
        (lambda: S.meta_train(nn.Linear(2, 1), fam, meta_steps=1), "model"),
        (lambda: S.meta_train(S.shallow(2), fam, lr=0.1, meta_steps=-1), "meta_steps"),
    ]:
        with pytest.raises((ValueError, TypeError), match="^" + message):
            call()
