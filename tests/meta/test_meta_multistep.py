"""MAML++'s multi-step loss (Antoniou, Edwards & Storkey 2019): ``Engine.meta_gradient(...,
step_weights=w)`` against a per-task loop written here (functional_call and torch.autograd.grad with
create_graph, no torch.func, no vmap, not the engine's code): each task's loss is
Σ_k w_k · CE(query | θ_k) over the parameters θ_k after each inner step, float64, every strategy."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from linmaml import meta
from linmaml.benchmarks.models import ConvNet
from linmaml.errors import ArgumentError
from linmaml.meta.engine import Engine

TASKS, WAYS, STEPS = 5, 3, 3
WEIGHTS = [0.2, 0.3, 0.5]
STRATEGIES = [("loop", 4), ("split", 2), ("split", None), ("vmap", 3)]


def _learner(kind):
    torch.manual_seed(0)
    if kind == "maml":
        return meta.MAML(ConvNet(1, WAYS, blocks=2, filters=3, image_size=8), lr=[0.3, 0.2, 0.1], steps=STEPS).double()
    features = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh())
    return meta.ANIL(features, nn.Linear(6, WAYS), lr=0.3, steps=STEPS).double()


def _batch():
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(TASKS, 2 * WAYS, 1, 8, 8, generator=g, dtype=torch.float64)
    xq = torch.randn(TASKS, 4 * WAYS, 1, 8, 8, generator=g, dtype=torch.float64)
    ys = torch.arange(WAYS).repeat(2).repeat(TASKS, 1)
    yq = torch.arange(WAYS).repeat(4).repeat(TASKS, 1)
    return xs, ys, xq, yq


def _written_out(learner, batch, weights, scale):
    """Σ_i Σ_k w_k CE(query_i | θ_k^i), backpropagated into .grad with ``scale``; returns (Σ loss, Σ
    last-step accuracy)."""
    xs, ys, xq, yq = batch
    anil = isinstance(learner, meta.ANIL)
    module = learner.head if anil else learner.model
    params = dict(module.named_parameters())
    names = list(params)
    loss_sum = accuracy_sum = 0.0
    for i in range(xs.shape[0]):
        x_s, x_q = (learner.features(xs[i]), learner.features(xq[i])) if anil else (xs[i], xq[i])
        fast = dict(params)
        total = 0.0
        for k, lr in enumerate(learner.lrs):
            support = F.cross_entropy(functional_call(module, fast, (x_s,)), ys[i])
            grads = torch.autograd.grad(support, [fast[n] for n in names], create_graph=True)
            fast = {n: fast[n] - lr * g for n, g in zip(names, grads)}
            out = functional_call(module, fast, (x_q,))
            total = total + weights[k] * F.cross_entropy(out, yq[i])
        (scale * total).backward()
        loss_sum += float(total.detach())
        accuracy_sum += float((out.argmax(-1) == yq[i]).double().mean())
    return loss_sum, accuracy_sum


@pytest.mark.parametrize("strategy, chunk", STRATEGIES)
@pytest.mark.parametrize("kind", ["maml", "anil"])
def test_multistep_meta_gradient_equals_the_written_out_loop(kind, strategy, chunk):
    batch = _batch()
    reference = _learner(kind)
    want_loss, want_accuracy = _written_out(reference, batch, WEIGHTS, 0.2)
    learner = _learner(kind)
    loss, accuracy = Engine(learner, strategy=strategy, tasks_per_chunk=chunk).meta_gradient(
        *batch, scale=0.2, step_weights=WEIGHTS)
    assert loss == pytest.approx(want_loss, rel=1e-12) and accuracy == pytest.approx(want_accuracy, abs=1e-12)
    wanted = dict(reference.named_parameters())
    total = float(torch.cat([p.grad.flatten() for p in wanted.values() if p.grad is not None]).norm())
    assert total > 0
    for name, p in learner.named_parameters():
        want = wanted[name].grad
        if want is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        scale = max(float(want.norm()), 1e-3 * total)  # conv biases before BatchNorm: ~0 gradient
        assert float((p.grad - want).norm()) / scale < 1e-10, name


def test_last_step_weight_alone_is_the_plain_meta_gradient_and_task_losses_agree():
    """w = (0, …, 0, 1) gives the plain MAML meta-gradient; task_losses sums to meta_gradient's loss."""
    batch = _batch()
    plain, weighted = _learner("maml"), _learner("maml")
    Engine(plain, strategy="loop").meta_gradient(*batch, scale=0.5)
    Engine(weighted, strategy="split", tasks_per_chunk=2).meta_gradient(*batch, scale=0.5, step_weights=[0, 0, 1])
    for (name, a), b in zip(plain.named_parameters(), weighted.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-13), name
    losses, _ = Engine(_learner("maml"), strategy="vmap").task_losses(*batch, step_weights=WEIGHTS)
    want, _ = _written_out(_learner("maml"), batch, WEIGHTS, 1.0)
    assert float(losses.detach().sum()) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("bad, match", [([0.5, 0.5], r"^step_weights: expected one weight per inner step \(3\)"),
                                        ([0.5, float("nan"), 0.5], r"^step_weights\[1\]"),
                                        (torch.ones(3), r"^step_weights: expected a sequence")])
def test_bad_step_weights_are_refused_naming_the_argument(bad, match):
    with pytest.raises((ArgumentError, TypeError, ValueError), match=match):
        Engine(_learner("maml")).meta_gradient(*_batch(), step_weights=bad)
