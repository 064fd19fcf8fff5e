"""LinNet: identity initialisation, unchanged function class, the implicit preconditioner, errors."""
import numpy as np
import pytest
import torch
from torch import nn

from linmaml import meta
from linmaml.checks.meta import random_mlp

DT = torch.float64


@pytest.mark.parametrize("layers,width", [(1, None), (2, None), (3, 5), (2, 2)])
def test_fresh_linnet_computes_exactly_the_inner_model(layers, width):
    model = random_mlp(np.random.default_rng(0), 3, 4, 2)
    net = meta.LinNet(model, layers=layers, width=width)
    x = torch.randn(7, 3, dtype=DT)
    assert torch.equal(net(x), model(x))
    hidden = 2 if width is None else width
    shapes = [tuple(p.shape) for n, p in net.named_parameters() if n.startswith("linear.")]
    expected = [(2, 2)] if layers == 1 else [(hidden, 2)] + [(hidden, hidden)] * (layers - 2) + [(2, hidden)]
    assert shapes == expected
    assert all(p.dtype == DT for p in net.parameters())


def test_linnet_output_is_a_linear_map_of_the_model_output():
    """Same function class: after any change of the appended maps, LinNet(x) = M · model(x) with M
    the product of the maps (an out × out matrix), computed here by hand."""
    model = random_mlp(np.random.default_rng(1), 3, 4, 2)
    net = meta.LinNet(model, layers=3, width=4)
    with torch.no_grad():
        for p in net.linear.parameters():
            p.add_(0.3 * torch.randn_like(p))
    A1, A2, A3 = (layer.weight for layer in net.linear)
    x = torch.randn(5, 3, dtype=DT)
    torch.testing.assert_close(net(x), model(x) @ (A3 @ A2 @ A1).T, rtol=1e-13, atol=1e-14)


def test_one_maml_step_on_linnet_is_the_depth_two_preconditioned_step():
    """DESIGN.md: for W_e = W2 W1, one step moves W_e by −α(W2W2ᵀG + GW1ᵀW1) + α²GW1ᵀW2ᵀG, exactly."""
    rng = np.random.default_rng(2)
    inner = nn.Linear(3, 2, bias=False, dtype=DT)
    with torch.no_grad():
        inner.weight.copy_(torch.as_tensor(rng.standard_normal((2, 3)), dtype=DT))
    net = meta.LinNet(inner, layers=1)
    with torch.no_grad():
        net.linear[0].weight.add_(torch.as_tensor(0.5 * rng.standard_normal((2, 2)), dtype=DT))
    W1, W2 = inner.weight.detach().clone(), net.linear[0].weight.detach().clone()
    X = torch.as_tensor(rng.standard_normal((6, 3)), dtype=DT)
    Y = torch.as_tensor(rng.standard_normal((6, 2)), dtype=DT)
    alpha = 0.2
    fast = meta.MAML(net, lr=alpha, steps=1).adapt(X, Y, lambda F, T: ((F - T) ** 2).sum() / (2 * F.shape[0]))
    We = W2 @ W1
    G = (X @ We.T - Y).T @ X / X.shape[0]
    expected = We - alpha * (W2 @ W2.T @ G + G @ W1.T @ W1) + alpha**2 * G @ W1.T @ W2.T @ G
    torch.testing.assert_close(fast["linear.0.weight"] @ fast["model.weight"], expected, rtol=1e-13, atol=1e-14)


def test_linnet_errors():
    model = random_mlp(np.random.default_rng(3), 3, 4, 2)
    with pytest.raises(ValueError, match="^width: expected an integer >= 2"):
        meta.LinNet(model, width=1)
    with pytest.raises(ValueError, match="^layers: "):
        meta.LinNet(model, layers=0)
    with pytest.raises(ValueError, match="^model: .*no"):
        meta.LinNet(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(TypeError, match="^model: "):
        meta.LinNet(lambda x: x)
