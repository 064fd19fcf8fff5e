"""MAML++'s per-step BatchNorm weights and biases (BNWB; Antoniou, Edwards & Storkey 2019) on the
ConvNet: meta-gradients, multi-step losses and scores against a network and inner loop written out
here with F.conv2d / F.batch_norm / F.max_pool2d / F.linear and torch.autograd.grad (not the
ConvNet's blocks, its folded first-block norm, nor the engine), float64, every strategy."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from linmaml.benchmarks.config import TrainConfig, build_from_config
from linmaml.benchmarks.learners import build_learner
from linmaml.meta.engine import Engine

TASKS, WAYS, STEPS, FILTERS = 4, 3, 3, 9  # 9 filters: block 0 takes the folded-norm path, block 1 not
LRS = 0.3


def _learner():
    torch.manual_seed(0)
    learner = build_learner(image_shape=(1, 8, 8), ways=WAYS, layers=2, hidden=FILTERS, pool="max", inner_lr=LRS,
                            steps=STEPS, bn_per_step=True).double()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # sets that differ from step to step, so that choosing the wrong one shows
        for name, p in learner.named_parameters():
            if ".norm." in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return learner


def _forward(p, x, k):
    """The 2-block CNN by hand with BatchNorm set k (batch statistics)."""
    for b in range(2):
        pre = f"features.block{b}."
        x = F.conv2d(x, p[pre + "conv.weight"], p[pre + "conv.bias"], padding=1)
        x = F.batch_norm(x, None, None, p[pre + "norm.weight"][k], p[pre + "norm.bias"][k], training=True)
        x = torch.relu(F.max_pool2d(x, 2))
    return F.linear(x.flatten(1), p["head.weight"], p["head.bias"])


def _batch():
    g = torch.Generator().manual_seed(2)
    xs = torch.rand(TASKS, 2 * WAYS, 1, 8, 8, generator=g, dtype=torch.float64)
    xq = torch.rand(TASKS, 3 * WAYS, 1, 8, 8, generator=g, dtype=torch.float64)
    return xs, torch.arange(WAYS).repeat(2).repeat(TASKS, 1), xq, torch.arange(WAYS).repeat(3).repeat(TASKS, 1)


def _written_out(learner, batch, weights=None, steps=STEPS, backward=True):
    """Per task: inner step k (k = 0..steps−1) on the support loss with set min(k, S−1), the BatchNorm
    sets held fixed, every other parameter adapted; query loss after step k+1 with set min(k, S−1),
    weighted by ``weights`` (default: the last step alone). Returns the per-task losses."""
    params = dict(learner.model.named_parameters())
    adapted = [n for n in params if ".norm." not in n]
    weights = [0.0] * (steps - 1) + [1.0] if weights is None else weights
    losses = []
    xs, ys, xq, yq = batch
    for i in range(TASKS):
        fast, total = dict(params), 0.0
        for k in range(steps):
            s = min(k, STEPS - 1)
            support = F.cross_entropy(_forward(fast, xs[i], s), ys[i])
            grads = torch.autograd.grad(support, [fast[n] for n in adapted], create_graph=backward)
            fast = {**fast, **{n: fast[n] - LRS * g for n, g in zip(adapted, grads)}}
            if weights[k]:
                total = total + weights[k] * F.cross_entropy(_forward(fast, xq[i], s), yq[i])
        if backward:
            (total / TASKS).backward()
        losses.append(float(total.detach()))
    return losses


def _compare_grads(got, want):
    wanted = dict(want.named_parameters())
    total = float(torch.cat([p.grad.flatten() for p in wanted.values()]).norm())
    for name, p in got.named_parameters():
        scale = max(float(wanted[name].grad.norm()), 1e-3 * total)  # conv biases before BatchNorm: ~0
        assert float((p.grad - wanted[name].grad).norm()) / scale < 1e-10, name


@pytest.mark.parametrize("strategy, chunk", [("loop", 4), ("split", 2), ("vmap", 3)])
@pytest.mark.parametrize("weights", [None, [0.2, 0.3, 0.5]], ids=["last-step", "multi-step"])
def test_bn_per_step_meta_gradient_equals_the_written_out_network(strategy, chunk, weights):
    batch = _batch()
    reference = _learner()
    want = _written_out(reference, batch, weights)
    learner = _learner()
    loss, _ = Engine(learner, strategy=strategy, tasks_per_chunk=chunk).meta_gradient(
        *batch, scale=1 / TASKS, step_weights=weights)
    assert loss == pytest.approx(sum(want), rel=1e-12)
    _compare_grads(learner, reference)
    # the sets are meta-learned (they receive gradients) and not adapted (the learner's adapted names)
    assert not any(".norm." in n for n in learner.adapted_names)
    assert all(p.grad.abs().sum() > 0 for n, p in learner.named_parameters() if ".norm." in n)


def test_scores_beyond_the_trained_steps_repeat_the_last_set():
    """Validation with more inner steps than trained (test_steps > steps) uses the last set for the
    extra steps and for the query, written out."""
    batch = _batch()
    learner = _learner()
    losses, _ = Engine(learner, strategy="split", tasks_per_chunk=2).score(*batch, steps=STEPS + 2)
    want = _written_out(_learner(), batch, steps=STEPS + 2, backward=False)
    assert losses.tolist() == pytest.approx(want, rel=1e-10)


def test_the_option_is_off_by_default_and_refused_where_it_does_not_apply():
    plain = build_from_config(TrainConfig(steps=2), (1, 28, 28))
    assert plain.model.norm_steps == 0
    assert tuple(plain.model.features.block0.norm.weight.shape) == (64,)
    per_step = build_from_config(TrainConfig(steps=2, bn_per_step=True), (1, 28, 28))
    assert tuple(per_step.model.features.block0.norm.weight.shape) == (2, 64)
    for bad, match in ((dict(steps=1), "with steps 1"), (dict(steps=2, algo="anil"), "ConvNet with algo maml"),
                       (dict(steps=2, linnet=1), "ConvNet with algo maml"), (dict(steps=2, bn_per_step=1), "True or")):
        with pytest.raises((ValueError, TypeError), match=f"^bn_per_step: .*{match}"):
            TrainConfig(**{"bn_per_step": True, **bad})
