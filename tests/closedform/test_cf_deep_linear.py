"""linmaml.closedform.deep_linear against independent computations: torch autograd (float64, through
the inner loop), explicit layer products, and direct loops over tasks."""
import numpy as np
import pytest
import torch

from linmaml.closedform import (
    adapt,
    end_to_end,
    end_to_end_grad,
    hessian_vector_product,
    layer_grads,
    maml_grad,
    maml_loss,
    maml_value_and_grad,
    task_loss,
)
from linmaml.tasks import ClassificationFamily, RegressionFamily

# --------------------------------------------------------------------------------------------------
# Random instances and the torch reference


def make_weights(rng, widths, scale=1.0):
    return [scale * rng.standard_normal((widths[j + 1], widths[j])) / np.sqrt(widths[j]) for j in range(len(widths) - 1)]


def make_data(rng, n, widths, loss):
    X = rng.standard_normal((n, widths[0]))
    Y = rng.standard_normal((n, widths[-1])) if loss == "squared" else (rng.random((n, 1)) < 0.5).astype(float)
    return X, Y


def make_tasks(rng, widths, loss, count=3, ragged=False):
    tasks = []
    for _ in range(count):
        ns, nq = (int(rng.integers(2, 7)), int(rng.integers(2, 7))) if ragged else (5, 4)
        tasks.append(make_data(rng, ns, widths, loss) + make_data(rng, nq, widths, loss))
    return tasks


def torch_loss(weights, X, Y, loss):
    F = X
    for W in weights:
        F = F @ W.T
    if loss == "squared":
        return 0.5 * ((F - Y) ** 2).sum() / X.shape[0]
    return torch.nn.functional.binary_cross_entropy_with_logits(F, Y, reduction="mean")


def torch_adapt(weights, X, Y, rates, loss, layers, create_graph):
    current = list(weights)
    if not layers:
        return current
    for rate in rates:
        value = torch_loss(current, X, Y, loss)
        grads = torch.autograd.grad(value, [current[j] for j in layers], create_graph=create_graph)
        for j, g in zip(layers, grads):
            current[j] = current[j] - rate * g
    return current


def torch_maml(weights, tasks, rates, loss, layers, first_order=False):
    """MAML objective and gradient by autograd through the inner loop (FOMAML: no graph through it)."""
    params = [torch.tensor(W, requires_grad=True) for W in weights]
    total, grads = 0.0, [torch.zeros_like(p) for p in params]
    for Xs, Ys, Xq, Yq in tasks:
        Xs, Ys, Xq, Yq = (torch.tensor(a) for a in (Xs, Ys, Xq, Yq))
        if first_order:
            start = [p.detach().clone().requires_grad_(True) for p in params]
            adapted = torch_adapt(start, Xs, Ys, rates, loss, layers, create_graph=False)
            adapted = [a.detach().requires_grad_(True) for a in adapted]
            value = torch_loss(adapted, Xq, Yq, loss)
            task_grads = torch.autograd.grad(value, adapted)
        else:
            adapted = torch_adapt(params, Xs, Ys, rates, loss, layers, create_graph=True)
            value = torch_loss(adapted, Xq, Yq, loss)
            task_grads = torch.autograd.grad(value, params)
        total += value.item()
        grads = [g + t for g, t in zip(grads, task_grads)]
    return total / len(tasks), [g.numpy() / len(tasks) for g in grads]


def rel(a, b):
    a, b = list(a), list(b)
    return np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b))) / np.sqrt(sum(np.sum(y**2) for y in b))


CASES = [
    # (widths, adapt_layers, steps, lr)
    ([3, 2], None, 1, 0.3),
    ([3, 4, 2], None, 3, 0.2),
    ([3, 4, 2], [0], 2, 0.2),
    ([3, 4, 2], [1], 2, [0.1, 0.3]),
    ([2, 3, 4, 3, 2], None, 5, 0.1),
    ([2, 3, 4, 3, 2], [1, 3], 4, [0.05, 0.1, 0.15, 0.2]),
    ([4, 2, 5, 3], [2], 3, 0.1),
    ([4, 2, 5, 3], [], 2, 0.1),
]


def setup_case(seed, loss, widths, layers, steps, lr):
    """One CASES row made concrete: (rng, widths, weights, per-step rates, adapted layer indices);
    the logistic loss gets one output. The rng has drawn the weights and nothing else."""
    rng = np.random.default_rng(seed)
    if loss == "logistic":
        widths = widths[:-1] + [1]
    weights = make_weights(rng, widths)
    rates = lr if isinstance(lr, list) else [lr] * steps
    chosen = list(range(len(weights))) if layers is None else layers
    return rng, widths, weights, rates, chosen


# --------------------------------------------------------------------------------------------------
# Forward map, loss, gradients, Hessian-vector products


def test_end_to_end_is_the_product_of_layers_last_first():
    rng = np.random.default_rng(0)
    weights = make_weights(rng, [3, 5, 4, 2])
    np.testing.assert_allclose(end_to_end(weights), np.linalg.multi_dot(weights[::-1]), rtol=1e-14)
    np.testing.assert_array_equal(end_to_end(weights[:1]), weights[0])


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_task_loss_and_gradients_match_autograd(loss):
    rng = np.random.default_rng(1)
    widths = [3, 4, 5, 2] if loss == "squared" else [3, 4, 5, 1]
    weights = make_weights(rng, widths)
    X, Y = make_data(rng, 7, widths, loss)
    params = [torch.tensor(W, requires_grad=True) for W in weights]
    value = torch_loss(params, torch.tensor(X), torch.tensor(Y), loss)
    expected = [g.numpy() for g in torch.autograd.grad(value, params)]
    assert task_loss(weights, X, Y, loss) == pytest.approx(value.item(), rel=1e-14)
    assert rel(layer_grads(weights, X, Y, loss), expected) < 1e-13
    # G = ∂L/∂W_e: by autograd on a one-layer net with the end-to-end map as its weight.
    W_e = torch.tensor(end_to_end(weights), requires_grad=True)
    (G,) = torch.autograd.grad(torch_loss([W_e], torch.tensor(X), torch.tensor(Y), loss), [W_e])
    np.testing.assert_allclose(end_to_end_grad(weights, X, Y, loss), G.numpy(), rtol=1e-12, atol=1e-15)


def test_layer_grads_of_frozen_layers_are_zero_and_the_others_unchanged():
    rng = np.random.default_rng(2)
    weights = make_weights(rng, [3, 4, 5, 2])
    X, Y = make_data(rng, 6, [3, 4, 5, 2], "squared")
    full = layer_grads(weights, X, Y)
    masked = layer_grads(weights, X, Y, adapt_layers=[1])
    assert np.all(masked[0] == 0) and np.all(masked[2] == 0)
    np.testing.assert_allclose(masked[1], full[1], rtol=1e-15)
    assert [g.shape for g in masked] == [W.shape for W in weights]


def test_logistic_loss_is_stable_for_large_logits():
    weights = [np.array([[1000.0]])]
    X = np.array([[1.0], [-1.0]])
    Y = np.array([[0.0], [1.0]])
    # Both samples are wrong by a margin of 1000: the loss is 1000 (log 2 ≈ 0 beside it).
    assert task_loss(weights, X, Y, "logistic") == pytest.approx(1000.0, rel=1e-12)
    assert np.all(np.isfinite(layer_grads(weights, X, Y, "logistic")[0]))


def explicit_hvp(weights, X, Y, V, loss):
    """(H V)_j = A_jᵀ dG B_jᵀ + dA_jᵀ G B_jᵀ + A_jᵀ G dB_jᵀ with explicit products (the docstring formula)."""
    L = len(weights)

    def prod(ms, size):
        out = np.eye(size)
        for M in ms:
            out = M @ out
        return out

    d0, dL = weights[0].shape[1], weights[-1].shape[0]
    above = [prod(weights[j + 1:], weights[j].shape[0]) for j in range(L)]  # W_L ⋯ W_{j+1}
    below = [prod(weights[:j], d0) for j in range(L)]  # W_{j−1} ⋯ W_1
    W_e = prod(weights, d0)
    F = X @ W_e.T
    n = X.shape[0]
    s = np.ones_like(F) if loss == "squared" else (1 / (1 + np.exp(-F))) * (1 - 1 / (1 + np.exp(-F)))
    r = F - Y if loss == "squared" else 1 / (1 + np.exp(-F)) - Y
    G = r.T @ X / n
    dW_e = sum(above[j] @ V[j] @ below[j] for j in range(L))
    dG = (s * (X @ dW_e.T)).T @ X / n
    out = []
    for j in range(L):
        dA = sum((prod(weights[m + 1:], weights[m].shape[0]) @ V[m] @ prod(weights[j + 1:m], weights[j].shape[0])
                  for m in range(j + 1, L)), np.zeros((dL, weights[j].shape[0])))
        dB = sum((prod(weights[m + 1:j], weights[m].shape[0]) @ V[m] @ below[m] for m in range(j)),
                 np.zeros((weights[j].shape[1], d0)))
        out.append(above[j].T @ dG @ below[j].T + dA.T @ G @ below[j].T + above[j].T @ G @ dB.T)
    return out


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("widths", [[3, 2], [3, 4, 2], [2, 3, 4, 3, 2], [4, 3, 2, 5, 3]])
def test_hessian_vector_product_matches_autograd_and_the_explicit_formula(loss, widths):
    rng = np.random.default_rng(3)
    if loss == "logistic":
        widths = widths[:-1] + [1]
    weights = make_weights(rng, widths)
    X, Y = make_data(rng, 6, widths, loss)
    V = [rng.standard_normal(W.shape) for W in weights]
    params = [torch.tensor(W, requires_grad=True) for W in weights]
    grads = torch.autograd.grad(torch_loss(params, torch.tensor(X), torch.tensor(Y), loss), params, create_graph=True)
    inner = sum((g * torch.tensor(v)).sum() for g, v in zip(grads, V))
    expected = [h.numpy() for h in torch.autograd.grad(inner, params)]
    ours = hessian_vector_product(weights, X, Y, V, loss)
    assert rel(ours, expected) < 1e-12
    assert rel(explicit_hvp(weights, X, Y, V, loss), expected) < 1e-12
    # A zero block (None) is the same as zeros.
    V[0] = np.zeros_like(V[0])
    with_none = hessian_vector_product(weights, X, Y, [None] + V[1:], loss)
    for a, b in zip(with_none, hessian_vector_product(weights, X, Y, V, loss)):
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-15)


# --------------------------------------------------------------------------------------------------
# Adaptation and the MAML objective


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("widths, layers, steps, lr", CASES)
def test_adapt_matches_autograd_gradient_descent(loss, widths, layers, steps, lr):
    rng, widths, weights, rates, chosen = setup_case(4, loss, widths, layers, steps, lr)
    X, Y = make_data(rng, 5, widths, loss)
    params = [torch.tensor(W, requires_grad=True) for W in weights]
    expected = torch_adapt(params, torch.tensor(X), torch.tensor(Y), rates, loss, chosen, create_graph=False)
    got = adapt(weights, X, Y, lr, steps, loss, layers)
    assert rel(got, [e.detach().numpy() for e in expected]) < 1e-13
    for j, (g, W) in enumerate(zip(got, weights)):
        if j not in chosen:
            np.testing.assert_array_equal(g, W)


def test_adapt_with_zero_steps_returns_copies_and_never_modifies_its_input():
    rng = np.random.default_rng(5)
    weights = make_weights(rng, [3, 4, 2])
    before = [W.copy() for W in weights]
    X, Y = make_data(rng, 5, [3, 4, 2], "squared")
    same = adapt(weights, X, Y, 0.1, 0)
    for s, W in zip(same, weights):
        np.testing.assert_array_equal(s, W)
        assert s is not W and not np.shares_memory(s, W)
    adapt(weights, X, Y, [0.1, 0.2], 2)
    for W, B in zip(weights, before):
        np.testing.assert_array_equal(W, B)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("widths, layers, steps, lr", CASES)
def test_maml_loss_and_grad_match_autograd_through_the_inner_loop(loss, widths, layers, steps, lr):
    rng, widths, weights, rates, chosen = setup_case(6, loss, widths, layers, steps, lr)
    tasks = make_tasks(rng, widths, loss, ragged=True)
    value, expected = torch_maml(weights, tasks, rates, loss, chosen)
    assert maml_loss(weights, tasks, lr, steps, loss, layers) == pytest.approx(value, rel=1e-13)
    assert rel(maml_grad(weights, tasks, lr, steps, loss, layers), expected) < 1e-12
    both = maml_value_and_grad(weights, tasks, lr, steps, loss, layers)
    assert both[0] == pytest.approx(value, rel=1e-13) and rel(both[1], expected) < 1e-12


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("widths, layers, steps, lr", CASES[1:6])
def test_first_order_maml_matches_autograd_with_the_inner_loop_detached(loss, widths, layers, steps, lr):
    rng, widths, weights, rates, chosen = setup_case(7, loss, widths, layers, steps, lr)
    tasks = make_tasks(rng, widths, loss)
    _, expected = torch_maml(weights, tasks, rates, loss, chosen, first_order=True)
    assert rel(maml_grad(weights, tasks, lr, steps, loss, layers, first_order=True), expected) < 1e-12
    # And it differs from the exact meta-gradient (the inner loop's curvature matters).
    assert rel(maml_grad(weights, tasks, lr, steps, loss, layers), expected) > 1e-6


def test_maml_without_steps_or_with_zero_rate_is_the_plain_query_gradient():
    rng = np.random.default_rng(8)
    widths = [3, 4, 2]
    weights = make_weights(rng, widths)
    tasks = make_tasks(rng, widths, "squared")
    direct = [sum(g) / len(tasks) for g in zip(*(layer_grads(weights, Xq, Yq) for _, _, Xq, Yq in tasks))]
    mean_query = np.mean([task_loss(weights, Xq, Yq) for _, _, Xq, Yq in tasks])
    for lr, steps in [(0.3, 0), (0.0, 3), ([0.0, 0.0], 2)]:
        assert maml_loss(weights, tasks, lr, steps) == pytest.approx(mean_query, rel=1e-14)
        assert rel(maml_grad(weights, tasks, lr, steps), direct) < 1e-14


def test_maml_accepts_a_task_batch_and_equals_the_mean_of_single_task_objectives():
    family = RegressionFamily(d_in=4, d_out=2, noise_std=0.1, n_support=6, n_query=5)
    batch = family.sample(7, seed=3)
    rng = np.random.default_rng(9)
    weights = make_weights(rng, [4, 3, 2])
    per_task = [maml_loss(weights, [task], 0.1, 2) for task in batch]
    assert maml_loss(weights, batch, 0.1, 2) == pytest.approx(np.mean(per_task), rel=1e-14)
    assert maml_loss(weights, batch.tasks(), 0.1, 2) == pytest.approx(np.mean(per_task), rel=1e-14)
    _, expected = torch_maml(weights, batch.tasks(), [0.1, 0.1], "squared", [0, 1])
    assert rel(maml_grad(weights, batch, 0.1, 2), expected) < 1e-12


def test_maml_logistic_on_a_classification_family_matches_autograd():
    family = ClassificationFamily(d_in=3, flip=0.1, n_support=8, n_query=6)
    batch = family.sample(5, seed=4)
    rng = np.random.default_rng(10)
    weights = make_weights(rng, [3, 4, 4, 1], scale=1.5)
    value, expected = torch_maml(weights, batch.tasks(), [0.5, 0.4, 0.3], "logistic", [0, 2])
    ours_value, ours = maml_value_and_grad(weights, batch, [0.5, 0.4, 0.3], 3, "logistic", [0, 2])
    assert ours_value == pytest.approx(value, rel=1e-13)
    assert rel(ours, expected) < 1e-12


# --------------------------------------------------------------------------------------------------
# Bad input: the error names the argument


@pytest.fixture
def good():
    rng = np.random.default_rng(11)
    weights = make_weights(rng, [3, 4, 2])
    X, Y = make_data(rng, 5, [3, 4, 2], "squared")
    return weights, X, Y, [(X, Y, X, Y)]


def bad_calls(good):
    weights, X, Y, tasks = good
    ones = np.ones((5, 1))
    logistic_net = [weights[0], np.ones((1, 4))]
    return [
        ("weights", ValueError, lambda: adapt([], X, Y, 0.1, 1)),
        ("weights", TypeError, lambda: adapt(weights[0], X, Y, 0.1, 1)),
        ("weights[1]", ValueError, lambda: adapt([weights[0], np.ones((2, 3))], X, Y, 0.1, 1)),
        ("weights[0]", ValueError, lambda: adapt([np.ones(3)], X, Y, 0.1, 1)),
        ("weights[0]", ValueError, lambda: end_to_end([np.full((2, 2), np.nan)])),
        ("X", ValueError, lambda: adapt(weights, X[:, :2], Y, 0.1, 1)),
        ("Y", ValueError, lambda: adapt(weights, X, Y[:4], 0.1, 1)),
        ("Y", ValueError, lambda: task_loss(weights, X, np.ones(5))),
        ("lr", ValueError, lambda: adapt(weights, X, Y, -0.1, 1)),
        ("lr", ValueError, lambda: adapt(weights, X, Y, float("nan"), 1)),
        ("lr", ValueError, lambda: adapt(weights, X, Y, float("inf"), 1)),
        ("lr", ValueError, lambda: adapt(weights, X, Y, [0.1], 2)),
        ("lr[1]", ValueError, lambda: adapt(weights, X, Y, [0.1, -0.2], 2)),
        ("lr", TypeError, lambda: adapt(weights, X, Y, "0.1", 1)),
        ("steps", ValueError, lambda: adapt(weights, X, Y, 0.1, -1)),
        ("steps", TypeError, lambda: adapt(weights, X, Y, 0.1, 1.5)),
        ("loss", ValueError, lambda: adapt(weights, X, Y, 0.1, 1, loss="hinge")),
        ("loss", ValueError, lambda: task_loss(weights, X, Y, loss="logistic")),  # d_L = 2
        ("Y", ValueError, lambda: task_loss(logistic_net, X, 0.5 * ones, loss="logistic")),
        ("adapt_layers", ValueError, lambda: adapt(weights, X, Y, 0.1, 1, adapt_layers=[2])),
        ("adapt_layers", TypeError, lambda: adapt(weights, X, Y, 0.1, 1, adapt_layers=1)),
        ("tasks", ValueError, lambda: maml_loss(weights, [], 0.1, 1)),
        ("tasks", TypeError, lambda: maml_loss(weights, X, 0.1, 1)),
        ("tasks[0]", ValueError, lambda: maml_loss(weights, [(X, Y, X)], 0.1, 1)),
        ("tasks[1].Xq", ValueError, lambda: maml_grad(weights, tasks + [(X, Y, X[:, :1], Y)], 0.1, 1)),
        ("tasks[0].Yq", ValueError,
         lambda: maml_grad(logistic_net, [(X, ones, X, 2 * ones)], 0.1, 1, loss="logistic")),
        ("first_order", TypeError, lambda: maml_grad(weights, tasks, 0.1, 1, first_order="yes")),
        ("direction", ValueError, lambda: hessian_vector_product(weights, X, Y, [None])),
        ("direction[1]", ValueError, lambda: hessian_vector_product(weights, X, Y, [None, np.ones((3, 3))])),
    ]


def test_bad_input_raises_an_error_naming_the_argument(good):
    for name, kind, call in bad_calls(good):
        with pytest.raises(kind) as info:
            call()
        message = str(info.value)
        assert message.startswith(name), (name, message)
