"""meta.batched: the vmapped meta-batch against a plain loop over tasks written here with
torch.autograd.grad(create_graph=True) and functional_call (no torch.func, no vmap), in float64 to
~1e-12 and in float32 against the float64 value; the explicit normalisation formulas against torch's
own layers; the chunked training step against the same loop; bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from linmaml import meta
from linmaml.benchmarks.models import ConvNet
from linmaml.meta import batched

WAYS, SHOTS, QUERY, TASKS = 3, 2, 4, 3


def _episodes(dtype, tasks=TASKS, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, WAYS * SHOTS, 1, side, side, generator=g, dtype=dtype)
    xq = torch.randn(tasks, WAYS * QUERY, 1, side, side, generator=g, dtype=dtype)
    ys = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(tasks, 1)
    yq = torch.arange(WAYS).repeat_interleave(QUERY).repeat(tasks, 1)
    return xs, ys, xq, yq


def _convnet(dtype, seed=0):
    torch.manual_seed(seed)
    return ConvNet(in_channels=1, ways=WAYS, blocks=2, filters=4, image_size=8).to(dtype)


def _loop_meta_gradient(model, lr, steps, batch):
    """Second-order MAML written out: per task, `steps` plain gradient steps on every parameter with
    autograd.grad(create_graph=True), the query loss, the mean over tasks, one backward."""
    params = dict(model.named_parameters())
    xs, ys, xq, yq = batch
    losses = []
    for m in range(xs.shape[0]):
        fast = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (xs[m],)), ys[m])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
        losses.append(F.cross_entropy(functional_call(model, fast, (xq[m],)), yq[m]))
    value = torch.stack(losses).mean()
    return value, torch.autograd.grad(value, list(params.values()))


def _relative_error(reference, candidate):
    """max over tensors of ‖Δ‖ / max(‖g_t‖, 1e-3‖g‖): relative for every tensor that carries gradient,
    absolute against the whole for tensors whose gradient is (structurally) ~0, e.g. conv biases
    before BatchNorm."""
    total = torch.cat([r.flatten() for r in reference]).norm()
    return max(float((r - c).norm() / torch.maximum(r.norm(), 1e-3 * total)) for r, c in zip(reference, candidate))


def test_meta_batch_loss_equals_loop_float64():
    model = _convnet(torch.float64)
    learner = meta.MAML(model, lr=0.3, steps=2)
    batch = _episodes(torch.float64)
    ref_value, ref_grads = _loop_meta_gradient(model, 0.3, 2, batch)
    loss, accuracy = batched.meta_batch_loss(learner, *batch, F.cross_entropy)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert abs(float(loss.detach()) - float(ref_value.detach())) <= 1e-13 * abs(float(ref_value.detach()))
    assert _relative_error(ref_grads, grads) < 1e-11
    # accuracy: recomputed from the adapted models of the loop
    assert accuracy.dtype == torch.float64 and 0.0 <= float(accuracy) <= 1.0


def test_meta_batch_loss_float32_as_accurate_as_loop():
    model64 = _convnet(torch.float64)
    model32 = _convnet(torch.float32)
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    batch64 = _episodes(torch.float64)
    batch32 = tuple(t.float() if t.dtype.is_floating_point else t for t in batch64)
    _, exact = _loop_meta_gradient(model64, 0.3, 1, batch64)
    _, loop32 = _loop_meta_gradient(model32, 0.3, 1, batch32)
    loss, _ = batched.meta_batch_loss(meta.MAML(model32, lr=0.3, steps=1), *batch32, F.cross_entropy)
    grads32 = torch.autograd.grad(loss, list(model32.parameters()))
    vs_loop = _relative_error([g.double() for g in loop32], [g.double() for g in grads32])
    vs_exact = _relative_error(exact, [g.double() for g in grads32])
    loop_vs_exact = _relative_error(exact, [g.double() for g in loop32])
    # float32 rounding alone moves a second-order meta-gradient by ~5e-5 here (the loop's own error),
    # so "equal to 1e-5" is not a meaningful float32 criterion: the batched value must be as close
    # to the exact (float64) one as the loop is, and the two float32 values within their errors.
    assert vs_exact <= 2 * loop_vs_exact + 1e-6
    assert vs_loop <= 2 * (vs_exact + loop_vs_exact)
    assert loop_vs_exact < 1e-3


def test_task_losses_per_task_and_accuracy():
    model = _convnet(torch.float64, seed=1)
    learner = meta.MAML(model, lr=0.2, steps=1)
    batch = _episodes(torch.float64, seed=1)
    losses, accuracies = batched.task_losses(learner, *batch, F.cross_entropy)
    xs, ys, xq, yq = batch
    for m in range(xs.shape[0]):
        fast = learner.adapt(xs[m], ys[m], F.cross_entropy)
        logits = learner(xq[m], params=fast)
        assert float(losses[m].detach()) == pytest.approx(float(F.cross_entropy(logits, yq[m]).detach()), rel=1e-12)
        assert float(accuracies[m]) == pytest.approx(float((logits.argmax(1) == yq[m]).double().mean()), abs=1e-12)


def _learner(kind, model):
    if kind == "maml":
        return meta.MAML(model, lr=0.3, steps=2)
    if kind == "kfo":
        return meta.MAML(model, lr=0.3, steps=2, transform=meta.KFO())
    if kind == "metasgd":
        return meta.MAML(model, lr=0.3, steps=1, transform=meta.MetaSGD())
    if kind == "first_order":
        return meta.MAML(model, lr=0.3, steps=2, first_order=True)
    return meta.ANIL(model.features, model.head, lr=0.3, steps=2)


@pytest.mark.parametrize("kind", ["kfo", "anil", "first_order"])
def test_other_learners_equal_their_own_loop(kind):
    learner = _learner(kind, _convnet(torch.float64, seed=2))
    batch = _episodes(torch.float64, seed=2)
    xs, ys, xq, yq = batch
    params = [p for p in learner.parameters() if p.requires_grad]
    loop = torch.stack([F.cross_entropy(learner(xq[m], params=learner.adapt(xs[m], ys[m], F.cross_entropy)), yq[m])
                        for m in range(xs.shape[0])]).mean()
    ref = torch.autograd.grad(loop, params, allow_unused=True)
    loss, _ = batched.meta_batch_loss(learner, *batch, F.cross_entropy)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    pairs = [(r, g) for r, g in zip(ref, got) if r is not None or g is not None]
    assert all(r is not None and g is not None for r, g in pairs)
    assert _relative_error([r for r, _ in pairs], [g for _, g in pairs]) < 1e-11


@pytest.mark.parametrize("norm", ["layer", "instance"])
def test_other_normalisations_under_vmap(norm):
    torch.manual_seed(3)
    layer = nn.LayerNorm([4, 6, 6]) if norm == "layer" else nn.InstanceNorm2d(4, affine=True)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, WAYS)).double()
    batch = _episodes(torch.float64, seed=3)
    _, ref = _loop_meta_gradient(model, 0.3, 1, batch)
    loss, _ = batched.meta_batch_loss(meta.MAML(model, lr=0.3, steps=1), *batch, F.cross_entropy)
    assert _relative_error(ref, torch.autograd.grad(loss, list(model.parameters()))) < 1e-11


def test_explicit_normalization_matches_torch_layers():
    torch.manual_seed(4)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 3 + 1
    layers = [nn.BatchNorm2d(3, track_running_stats=False), nn.InstanceNorm2d(3, affine=True),
              nn.LayerNorm([3, 4, 4]), nn.LayerNorm(4)]
    for layer in layers:
        layer = layer.double()
        with torch.no_grad():
            for p in layer.parameters():
                p.uniform_(0.5, 1.5)
        expected = layer(x)
        with batched.explicit_normalization():
            got = layer(x)
        assert torch.allclose(got, expected, rtol=0, atol=1e-13), type(layer).__name__


def test_explicit_normalization_leaves_running_statistics_alone():
    layer = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    with batched.explicit_normalization():
        got = layer(x)
    assert torch.equal(got, layer(x))


@pytest.mark.parametrize("chunk", [1, 2, None])
def test_meta_gradient_step_accumulates_scaled_sum(chunk):
    model = _convnet(torch.float64, seed=5)
    learner = meta.MAML(model, lr=0.3, steps=1)
    batch = _episodes(torch.float64, seed=5)
    ref_value, ref = _loop_meta_gradient(model, 0.3, 1, batch)
    step = batched.MetaGradient(learner, F.cross_entropy, tasks_per_chunk=chunk)
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # accumulates onto what is there
    loss_sum, accuracy_sum = step(*batch, scale=0.5)
    got = [p.grad - 1 for p in model.parameters()]
    # 0.5·Σ_i ∇loss_i = 0.5·M·∇(mean)
    assert _relative_error([0.5 * TASKS * r for r in ref], got) < 1e-11
    assert loss_sum == pytest.approx(TASKS * float(ref_value.detach()), rel=1e-12)
    _, accuracies = batched.task_losses(learner, *batch, F.cross_entropy)
    assert accuracy_sum == pytest.approx(float(accuracies.sum()), abs=1e-12)


@pytest.mark.parametrize("kind", ["maml", "kfo", "metasgd", "anil", "first_order"])
@pytest.mark.parametrize("chunk", [2, None])
def test_query_per_task_equals_the_loop(kind, chunk):
    """Vmapped inner loops + one query at a time + one pull-back through the chunk's inner loops
    (the chain rule assembled by hand) against the loop of autograd.grad over whole tasks."""
    model = _convnet(torch.float64, seed=7)
    learner = _learner(kind, model)
    xs, ys, xq, yq = batch = _episodes(torch.float64, tasks=5, seed=7)  # 5 tasks: chunk 2 leaves a single one
    params = [p for p in learner.parameters() if p.requires_grad]
    losses, accuracies = [], []
    for m in range(xs.shape[0]):
        logits = learner(xq[m], params=learner.adapt(xs[m], ys[m], F.cross_entropy))
        losses.append(F.cross_entropy(logits, yq[m]))
        accuracies.append(float((logits.argmax(1) == yq[m]).double().mean()))
    ref = torch.autograd.grad(0.25 * torch.stack(losses).sum(), params, allow_unused=True)
    step = batched.MetaGradient(learner, F.cross_entropy, tasks_per_chunk=chunk, query_per_task=True)
    loss_sum, accuracy_sum = step(*batch, scale=0.25)
    pairs = [(r, p.grad) for r, p in zip(ref, params) if r is not None or p.grad is not None]
    assert pairs and all(r is not None and g is not None for r, g in pairs)
    assert _relative_error([r for r, _ in pairs], [g for _, g in pairs]) < 1e-11
    assert loss_sum == pytest.approx(float(torch.stack(losses).sum().detach()), rel=1e-12)
    assert accuracy_sum == pytest.approx(sum(accuracies), abs=1e-12)


def test_query_per_task_regression_and_channels_last_images():
    """Real-valued targets (no accuracy) and channels-last episodes give the loop's gradient too."""
    from linmaml.benchmarks.models import to_channels_last

    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    xs, xq = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 7, 3, dtype=torch.float64)
    ys, yq = xs.sum(-1, keepdim=True), xq.sum(-1, keepdim=True)
    learner = meta.MAML(model, lr=0.1, steps=3)
    loop = torch.stack([F.mse_loss(learner(xq[m], params=learner.adapt(xs[m], ys[m], F.mse_loss)), yq[m])
                        for m in range(4)]).sum()
    ref = torch.autograd.grad(loop, list(model.parameters()))
    loss_sum, accuracy_sum = batched.MetaGradient(learner, F.mse_loss, tasks_per_chunk=4, query_per_task=True)(
        xs, ys, xq, yq)
    assert _relative_error(ref, [p.grad for p in model.parameters()]) < 1e-11
    assert loss_sum == pytest.approx(float(loop.detach()), rel=1e-12) and accuracy_sum == 0.0

    net = _convnet(torch.float64, seed=9)
    learner = meta.MAML(net, lr=0.3, steps=1)
    xs, ys, xq, yq = _episodes(torch.float64, seed=9)
    _, ref = _loop_meta_gradient(net, 0.3, 1, (xs, ys, xq, yq))
    step = batched.MetaGradient(learner, F.cross_entropy, tasks_per_chunk=None, query_per_task=True)
    step(to_channels_last(xs), ys, to_channels_last(xq), yq, scale=1.0 / TASKS)
    assert _relative_error(ref, [p.grad for p in net.parameters()]) < 1e-11


def test_regression_targets_have_no_accuracy():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    xs, xq = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 7, 3, dtype=torch.float64)
    ys, yq = xs.sum(-1, keepdim=True), xq.sum(-1, keepdim=True)
    learner = meta.MAML(model, lr=0.1, steps=3)
    loss, accuracy = batched.meta_batch_loss(learner, xs, ys, xq, yq, F.mse_loss)
    assert accuracy is None
    loop = torch.stack([F.mse_loss(learner(xq[m], params=learner.adapt(xs[m], ys[m], F.mse_loss)), yq[m])
                        for m in range(4)]).mean()
    ref = torch.autograd.grad(loop, list(model.parameters()))
    assert _relative_error(ref, torch.autograd.grad(loss, list(model.parameters()))) < 1e-11
    step = batched.MetaGradient(learner, F.mse_loss, tasks_per_chunk=3)
    loss_sum, accuracy_sum = step(xs, ys, xq, yq)
    assert loss_sum == pytest.approx(4 * float(loop.detach()), rel=1e-12) and accuracy_sum == 0.0


def test_bad_input():
    model = _convnet(torch.float32)
    learner = meta.MAML(model, lr=0.3, steps=1)
    xs, ys, xq, yq = _episodes(torch.float32)
    with pytest.raises(ValueError, match="^y_query: expected 3 tasks"):
        batched.meta_batch_loss(learner, xs, ys, xq, yq[:2], F.cross_entropy)
    with pytest.raises(TypeError, match="^x_support"):
        batched.task_losses(learner, xs.numpy(), ys, xq, yq, F.cross_entropy)
    with pytest.raises(ValueError, match="^y_support"):
        batched.task_losses(learner, xs, ys[:, :1], xq, yq, F.cross_entropy)
    with pytest.raises(TypeError, match="^loss_fn"):
        batched.task_losses(learner, xs, ys, xq, yq, "cross_entropy")
    with pytest.raises(ValueError, match="^tasks_per_chunk"):
        batched.MetaGradient(learner, tasks_per_chunk=0)
    with pytest.raises(TypeError, match="^compile"):
        batched.MetaGradient(learner, compile="yes")
    with pytest.raises(TypeError, match="^query_per_task"):
        batched.MetaGradient(learner, query_per_task=1)
    with pytest.raises(TypeError, match="^learner: strategy 'split'"):
        batched.MetaGradient(object(), tasks_per_chunk=2, query_per_task=True)
    with pytest.raises(ValueError, match="^scale"):
        batched.MetaGradient(learner)(xs, ys, xq, yq, scale=float("nan"))
