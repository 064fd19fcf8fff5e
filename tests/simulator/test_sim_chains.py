"""Simulator models: forward map, losses and the autograd preconditioner against direct numpy
computations and finite differences (never against the simulator itself)."""
import re

import numpy as np
import pytest
import torch

from linmaml.simulator import chains as M
from linmaml.simulator.maml import adapt


def _weights(rng, sizes):
    return [rng.standard_normal((sizes[j + 1], sizes[j])) / np.sqrt(sizes[j]) for j in range(len(sizes) - 1)]


def _t(arrays):
    return [torch.as_tensor(a) for a in arrays]


def test_end_to_end_is_the_product_applied_layer_by_layer():
    rng = np.random.default_rng(0)
    W = _weights(rng, [3, 5, 2, 4])
    x = rng.standard_normal(3)
    by_layers = W[2] @ (W[1] @ (W[0] @ x))  # W1 applied first
    np.testing.assert_allclose(M.end_to_end(_t(W)).numpy() @ x, by_layers, rtol=1e-13)


def test_losses_match_direct_per_sample_sums():
    rng = np.random.default_rng(1)
    W = _weights(rng, [4, 3, 2])
    X, Y = rng.standard_normal((7, 4)), rng.standard_normal((7, 2))
    We = W[1] @ W[0]
    squared = sum(0.5 * np.sum((We @ X[i] - Y[i]) ** 2) for i in range(7)) / 7
    assert float(M.task_loss(_t(W), torch.as_tensor(X), torch.as_tensor(Y), "squared")) == pytest.approx(squared, rel=1e-13)

    w = _weights(rng, [4, 1])
    y = (rng.random((7, 1)) < 0.5).astype(float)
    z = X @ w[0].T
    bce = np.mean(-(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z)))))
    assert float(M.task_loss(_t(w), torch.as_tensor(X), torch.as_tensor(y), "logistic")) == pytest.approx(bce, rel=1e-12)
    acc = np.mean((z > 0) == (y > 0.5))
    assert float(M.accuracy(_t(w), torch.as_tensor(X), torch.as_tensor(y))) == pytest.approx(acc)


def test_batched_loss_equals_per_task_losses():
    rng = np.random.default_rng(2)
    W = _weights(rng, [3, 2])
    X, Y = rng.standard_normal((4, 5, 3)), rng.standard_normal((4, 5, 2))
    batched = M.task_loss(_t(W), torch.as_tensor(X), torch.as_tensor(Y), "squared").numpy()
    for t in range(4):
        assert batched[t] == pytest.approx(0.5 * np.sum((X[t] @ W[0].T - Y[t]) ** 2) / 5, rel=1e-13)


@pytest.mark.parametrize("sizes,layers", [([3, 4, 2], None), ([2, 3, 3, 1], (0, 2)), ([4, 1], None), ([2, 5, 2, 3], (1,))])
def test_preconditioner_predicts_a_small_gradient_step(sizes, layers):
    """−(W_e(after one step of size α) − W_e)/α → unvec(P vec G) as α → 0, with error O(α)."""
    rng = np.random.default_rng(3)
    W = _weights(rng, sizes)
    X, Y = rng.standard_normal((6, sizes[0])), rng.standard_normal((6, sizes[-1]))
    We = M.end_to_end(_t(W)).numpy()
    G = ((X @ We.T - Y).T @ X) / 6  # ∂L/∂W_e of the squared loss, by hand
    P = M.implicit_preconditioner(_t(W), layers).numpy()
    predicted = (P @ G.reshape(-1, order="F")).reshape(G.shape, order="F")
    errors = []
    for lr in (1e-3, 1e-4):
        stepped = adapt(_t(W), X, Y, lr, 1, "squared", layers, create_graph=False)
        moved = -(M.end_to_end(stepped).numpy() - We) / lr
        errors.append(np.abs(moved - predicted).max() / np.abs(predicted).max())
    assert errors[1] < 1e-3
    # The error shrinks like α, unless W_e is linear in the adapted layers (then the step is exact).
    assert errors[1] < 0.2 * errors[0] or errors[0] < 1e-9


def test_preconditioner_is_symmetric_psd_and_stacks():
    rng = np.random.default_rng(4)
    W = _weights(rng, [3, 4, 2])
    P = M.implicit_preconditioner(_t(W)).numpy()
    np.testing.assert_allclose(P, P.T, atol=1e-14)
    assert np.linalg.eigvalsh(P).min() > -1e-12
    W2 = _weights(rng, [3, 4, 2])
    stacked = [torch.stack([torch.as_tensor(a), torch.as_tensor(b)]) for a, b in zip(W, W2)]
    both = M.implicit_preconditioner(stacked).numpy()
    np.testing.assert_allclose(both[0], P, atol=1e-14)
    np.testing.assert_allclose(both[1], M.implicit_preconditioner(_t(W2)).numpy(), atol=1e-14)


def test_model_constructors_and_shapes():
    assert M.shallow(4).sizes == (4, 1) and M.shallow(4).loss == "squared"
    assert M.deep(4, 2, (8, 3)).sizes == (4, 8, 3, 2) and M.deep(4, 2, (8, 3)).depth == 3
    net = M.linnet(M.logr(5), (8, 8))
    assert net.sizes == (5, 1, 8, 8, 1) and net.loss == "logistic" and net.adapt_layers == (0, 1, 2, 3)
    init = net.init(seed=0)
    assert [tuple(W.shape) for W in init] == net.shapes() and all(W.dtype == torch.float64 for W in init)
    assert all(torch.equal(a, b) for a, b in zip(init, net.init(seed=0)))


@pytest.mark.parametrize("call,message", [
    (lambda: M.LinearChain((3,)), "sizes"),
    (lambda: M.LinearChain((3, 2), "logistic"), "sizes"),
    (lambda: M.LinearChain((3, 1), "hinge"), "loss"),
    (lambda: M.deep(3, 1, ()), "widths"),
    (lambda: M.LinearChain((3, 2, 1), adapt_layers=(2,)), "adapt_layers"),
    (lambda: M.shallow(3).check_weights([np.zeros((2, 3))]), "weights[0]"),
])
def test_bad_arguments_name_themselves(call, message):
    with pytest.raises((ValueError, TypeError), match="^" + re.escape(message)):
        call()


def test_module_computes_the_end_to_end_map_and_the_learner_adapts_only_its_layers():
    """The chain's torch module is X W_eᵀ (numpy product), its parameters are copies of the weights;
    its learner moves exactly the adapted layers, by one plain gradient step written out in numpy."""
    rng = np.random.default_rng(5)
    chain = M.deep(3, 2, (4,), adapt_layers=(1,))
    W = [w.numpy() for w in chain.init(rng)]
    module = chain.module(W)
    X, Y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    np.testing.assert_allclose(module(torch.as_tensor(X)).detach().numpy(), X @ (W[1] @ W[0]).T, rtol=1e-13)
    assert [n for n, _ in module.named_parameters()] == chain.parameter_names() == ["0.weight", "1.weight"]
    assert all(p.dtype == torch.float64 for p in module.parameters())
    learner = chain.learner(W, 0.1, 1)
    fast = learner.adapt(torch.as_tensor(X), torch.as_tensor(Y), M.squared_loss)
    H = X @ W[0].T  # hidden activations; ∂L/∂W2 = (H W2ᵀ − Y)ᵀ H / n
    expected = W[1] - 0.1 * (H @ W[1].T - Y).T @ H / 6
    np.testing.assert_allclose(fast["1.weight"].detach().numpy(), expected, rtol=1e-13)
    np.testing.assert_array_equal(fast["0.weight"].detach().numpy(), W[0])
    with pytest.raises(ValueError, match=re.escape("weights[0]")):
        chain.module([torch.zeros(2, 4, 3), torch.zeros(2, 4)])
