"""``linmaml.meta.inner_loop``'s per-step rates ``lrs``: what it accepts, what it computes with
them, and what it refuses (naming ``lrs``) before any gradient is taken.

Accepted: a list, tuple or 1-d NumPy array of finite real numbers (ints and NumPy scalars
included, negative rates included); an empty one is the 0-step adaptation. Refused: NaN, ±inf,
bools, strings, complex numbers, ``None``, torch tensors, a bare number, unordered or nested
containers. The accepted forms are checked against a hand-written loop (plain
``torch.autograd.grad``, Meta-SGD's update written out), not against the function itself.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from linmaml import meta

DT = torch.float64


def setup(seed=0):
    """A 3 → 2 linear model, Meta-SGD with non-trivial scales, and one support set (n = 5)."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 2).to(DT)
    transform = meta.MetaSGD().build(dict(model.named_parameters()))
    with torch.no_grad():
        for p in transform.parameters():
            p.copy_(0.5 + torch.rand_like(p))
    x, y = torch.randn(5, 3, dtype=DT), torch.randn(5, 2, dtype=DT)
    return model, transform, x, y


def mse(output, target):
    return ((output - target) ** 2).mean()


class CountingForward:
    """``forward(params, buffers, x)`` for ``inner_loop`` that counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, params, buffers, x):
        self.calls += 1
        return functional_call(self.model, (params, buffers), (x,))


def run(lrs, seed=0, **kwargs):
    model, transform, x, y = setup(seed)
    forward = CountingForward(model)
    fast, tparams = meta.inner_loop(forward, mse, dict(model.named_parameters()), transform,
                                    dict(transform.named_parameters()), x, y, lrs, **kwargs)
    return fast, tparams, forward.calls


def hand_loop(rates, seed=0):
    """θ ← θ − α_k s ⊙ ∇θ ℓ, written with torch.autograd.grad and the explicit forward x Wᵀ + b."""
    model, transform, x, y = setup(seed)
    weight, bias = model.weight, model.bias
    s_w, s_b = transform.scales["weight"], transform.scales["bias"]
    for lr in rates:
        loss = mse(x @ weight.T + bias, y)
        g_w, g_b = torch.autograd.grad(loss, [weight, bias], create_graph=True)
        weight, bias = weight - lr * s_w * g_w, bias - lr * s_b * g_b
    return {"weight": weight, "bias": bias}


@pytest.mark.parametrize("lrs", [
    [0.3, -0.1],
    (0.3, -0.1),
    np.array([0.3, -0.1]),
    [np.float32(0.25), 1],          # a NumPy scalar and an int
    [np.array(0.3), np.float64(-0.1)],  # a 0-d array
    [0.0, 0.0, 0.0],
    [2.5],
], ids=["list", "tuple", "ndarray", "float32-and-int", "0d-array", "zeros", "one-step"])
def test_accepted_rates_take_one_step_each_as_a_hand_written_loop_does(lrs):
    fast, _, calls = run(lrs)
    # float() of each rate, as the loop uses it (np.float32(0.25) is exact; 0.3 is a float64 already)
    expected = hand_loop([float(r) for r in lrs])
    assert calls == len(lrs)
    for name in ("weight", "bias"):
        torch.testing.assert_close(fast[name], expected[name], rtol=1e-13, atol=1e-14)


def test_a_rate_changes_the_result_so_the_comparison_above_can_fail():
    fast, _, _ = run([0.3, -0.1])
    other = hand_loop([0.3, -0.2])
    assert not torch.allclose(fast["weight"], other["weight"])


@pytest.mark.parametrize("empty", [[], (), np.array([])], ids=["list", "tuple", "ndarray"])
def test_no_rates_is_the_zero_step_adaptation(empty):
    model, transform, _, _ = setup()
    fast, tparams, calls = run(empty, adapt_transform=True)
    assert calls == 0
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p, rtol=0, atol=0)
    # the params tree, keyed by the model's names: MetaSGD's scale of "weight" is stored as scales.weight
    for name, p in transform.named_parameters():
        torch.testing.assert_close(tparams[name.removeprefix("scales.")], p, rtol=0, atol=0)


def test_rates_are_plain_floats_inside_the_loop():
    """The checked rates, not the caller's objects, drive the loop (NumPy scalars times tensors
    can change dtype or return NumPy arrays)."""
    from linmaml.meta.inner_loop import check_rates

    rates = check_rates([np.float32(0.5), 2, np.array(-1.0)])
    assert rates == [0.5, 2.0, -1.0] and all(type(r) is float for r in rates)


BAD = [
    ([math.nan], ValueError, "lrs[0]: expected a finite number"),
    ([0.1, math.inf], ValueError, "lrs[1]: expected a finite number"),
    ([-math.inf], ValueError, "lrs[0]: expected a finite number"),
    (np.array([0.1, np.nan]), ValueError, "lrs[1]: expected a finite number"),
    ([True], TypeError, "lrs[0]: expected a number"),
    ([0.1, np.True_], TypeError, "lrs[1]: expected a number"),
    (["0.1"], TypeError, "lrs[0]: expected a real number"),
    ([None], TypeError, "lrs[0]: expected a real number"),
    ([1 + 2j], TypeError, "lrs[0]: expected a real number"),
    ([np.complex128(1)], TypeError, "lrs[0]: expected a real number"),
    ([[0.1]], TypeError, "lrs[0]: expected a real number"),
    ([torch.tensor(0.1)], TypeError, "lrs[0]: expected a number, got a torch.Tensor"),
    (torch.tensor([0.1, 0.2]), TypeError, "lrs: expected a sequence of numbers, got a torch.Tensor"),
    (0.1, TypeError, "lrs: expected a sequence of per-step learning rates"),
    (np.float64(0.1), TypeError, "lrs: expected a sequence of per-step learning rates"),
    (np.array(0.1), ValueError, "lrs: expected a 1-d sequence"),
    (np.zeros((2, 1)), ValueError, "lrs: expected a 1-d sequence"),
    ("0.1", TypeError, "lrs: expected a sequence of per-step learning rates"),
    ({0.1, 0.2}, TypeError, "lrs: expected a sequence of per-step learning rates"),
    ({"step1": 0.1}, TypeError, "lrs: expected a sequence of per-step learning rates"),
    (None, TypeError, "lrs: expected a sequence of per-step learning rates"),
]


@pytest.mark.parametrize("lrs,kind,message", BAD, ids=[repr(row[0]).replace(" ", "") for row in BAD])
def test_bad_rates_are_refused_naming_lrs_before_any_gradient(lrs, kind, message):
    model, transform, x, y = setup()
    forward = CountingForward(model)
    with pytest.raises(kind) as caught:
        meta.inner_loop(forward, mse, dict(model.named_parameters()), transform,
                        dict(transform.named_parameters()), x, y, lrs)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)
    assert forward.calls == 0


def test_the_learners_pass_checked_rates_and_still_refuse_their_own_lr():
    """The learners validate ``lr`` themselves (naming ``lr``); a good one runs through the checked loop."""
    model = nn.Linear(3, 2).to(DT)
    with pytest.raises(ValueError, match=r"^lr: expected a finite number"):
        meta.MAML(model, lr=math.nan, steps=1)
    learner = meta.MAML(model, lr=[0.3, -0.1], steps=2, transform=meta.Identity())
    _, _, x, y = setup()
    fast = learner.adapt(x, y, mse)
    weight, bias = model.weight, model.bias
    for lr in (0.3, -0.1):
        g_w, g_b = torch.autograd.grad(mse(x @ weight.T + bias, y), [weight, bias], create_graph=True)
        weight, bias = weight - lr * g_w, bias - lr * g_b
    torch.testing.assert_close(fast["weight"], weight, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(fast["bias"], bias, rtol=1e-13, atol=1e-14)
