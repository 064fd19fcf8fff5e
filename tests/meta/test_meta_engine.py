"""meta.engine: every strategy against a per-task loop written here with torch.autograd.grad
(create_graph=True) and functional_call (no torch.func, no vmap, not the engine's own code), float64.

The transform (KFO, Meta-SGD) is applied through its public ``update`` — its own correctness is
tests/meta/test_meta_transforms.py's business; here the inner loop, the per-task query scoring and
the assembly of the meta-gradient are written out independently.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from linmaml import meta
from linmaml.benchmarks.models import ConvNet
from linmaml.meta.engine import Engine

TASKS, WAYS = 5, 3
STRATEGIES = [("loop", 4), ("split", 2), ("split", None), ("vmap", 3), ("vmap", None)]


def _randomize_transform(learner, seed):
    """Move the transform off the identity so that its parameters matter in the check."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.transform.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _mlp(out=WAYS):
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, out))


CASES = {
    # name: (make learner, loss, regression targets?)
    "maml-2-steps-convnet": (lambda: meta.MAML(ConvNet(1, WAYS, blocks=2, filters=3, image_size=8), lr=0.3, steps=2),
                             F.cross_entropy, False),
    "kfo": (lambda: meta.MAML(_mlp(), lr=0.2, steps=2, transform=meta.KFO()), F.cross_entropy, False),
    "metasgd": (lambda: meta.MAML(_mlp(), lr=0.2, steps=2, transform=meta.MetaSGD()), F.cross_entropy, False),
    "anil": (lambda: meta.ANIL(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), nn.Linear(6, WAYS), lr=0.3, steps=2),
             F.cross_entropy, False),
    "first-order": (lambda: meta.MAML(_mlp(), lr=0.3, steps=2, first_order=True), F.cross_entropy, False),
    "regression": (lambda: meta.MAML(_mlp(out=2), lr=0.1, steps=2), F.mse_loss, True),
}


def _make(case):
    make, loss_fn, regression = CASES[case]
    torch.manual_seed(0)
    learner = make().double()
    if hasattr(learner, "transform"):
        _randomize_transform(learner, 1)
    g = torch.Generator().manual_seed(2)
    shape = (1, 8, 8) if case.endswith("convnet") else (4,)
    xs = torch.randn(TASKS, 2 * WAYS, *shape, generator=g, dtype=torch.float64)
    xq = torch.randn(TASKS, 4 * WAYS, *shape, generator=g, dtype=torch.float64)
    if regression:
        ys = torch.randn(TASKS, 2 * WAYS, 2, generator=g, dtype=torch.float64)
        yq = torch.randn(TASKS, 4 * WAYS, 2, generator=g, dtype=torch.float64)
    else:
        ys = torch.arange(WAYS).repeat(2).repeat(TASKS, 1)
        yq = torch.arange(WAYS).repeat(4).repeat(TASKS, 1)
    return learner, loss_fn, (xs, ys, xq, yq)


def _reference(learner, loss_fn, batch, scale):
    """Per task: the learner's steps written out with autograd.grad, the query loss; returns
    (Σ losses, Σ accuracies, per-task losses, gradients of scale·Σ losses w.r.t. learner.parameters())."""
    xs, ys, xq, yq = batch
    anil = isinstance(learner, meta.ANIL)
    module = learner.head if anil else learner.model
    base = dict(module.named_parameters())
    names = list(learner.adapted_names)
    tparams = dict(learner.transform.named_parameters())
    losses, accuracies = [], []
    for i in range(xs.shape[0]):
        x_s = learner.features(xs[i]) if anil else xs[i]
        x_q = learner.features(xq[i]) if anil else xq[i]
        fast = {n: base[n] for n in names}
        for lr in learner.lrs:
            loss = loss_fn(functional_call(module, {**base, **fast}, (x_s,)), ys[i])
            grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not learner.first_order)
            grads = {n: g for n, g in zip(names, grads)}
            updates = learner.transform.update(grads, tparams)
            fast = {n: fast[n] - lr * updates[n] for n in names}
        out = functional_call(module, {**base, **fast}, (x_q,))
        losses.append(loss_fn(out, yq[i]))
        if not yq.dtype.is_floating_point:
            accuracies.append(float((out.argmax(-1) == yq[i]).double().mean()))
    total = torch.stack(losses).sum()
    params = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad(scale * total, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return float(total.detach()), sum(accuracies), torch.stack(losses).detach(), grads


def _relative_error(reference, candidate):
    """max over tensors of ‖Δ‖ / max(‖g_t‖, 1e-3‖g‖) (conv biases before BatchNorm have ~0 gradient)."""
    total = torch.cat([r.flatten() for r in reference]).norm()
    return max(float((r - c).norm() / torch.maximum(r.norm(), 1e-3 * total)) for r, c in zip(reference, candidate))


@pytest.mark.parametrize("strategy, chunk", STRATEGIES)
@pytest.mark.parametrize("case", list(CASES))
def test_meta_gradient_of_every_strategy_equals_the_written_out_loop(case, strategy, chunk):
    learner, loss_fn, batch = _make(case)
    want_loss, want_accuracy, _, want = _reference(learner, loss_fn, batch, 0.2)
    engine = Engine(learner, loss_fn, strategy=strategy, tasks_per_chunk=chunk)
    loss, accuracy = engine.meta_gradient(*batch, scale=0.2)
    got = [torch.zeros_like(p) if p.grad is None else p.grad for p in learner.parameters() if p.requires_grad]
    assert abs(loss - want_loss) <= 1e-10 * max(1.0, abs(want_loss))
    assert abs(accuracy - want_accuracy) <= 1e-12
    assert _relative_error(want, got) <= 1e-10


@pytest.mark.parametrize("strategy, chunk", STRATEGIES)
@pytest.mark.parametrize("case", ["maml-2-steps-convnet", "anil", "regression"])
def test_task_losses_are_differentiable_and_score_builds_no_graph(case, strategy, chunk):
    learner, loss_fn, batch = _make(case)
    _, _, want_losses, want = _reference(learner, loss_fn, batch, 1.0)
    engine = Engine(learner, loss_fn, strategy=strategy, tasks_per_chunk=chunk)
    losses, _ = engine.task_losses(*batch)
    assert torch.allclose(losses.detach(), want_losses, rtol=1e-12, atol=0)
    params = [p for p in learner.parameters() if p.requires_grad]
    got = torch.autograd.grad(losses.sum(), params, allow_unused=True)
    assert _relative_error(want, [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]) <= 1e-10
    # score: same values, detached, the learner untouched (second order stays second order).
    first_order = learner.first_order
    scored, accuracies = engine.score(*batch)
    assert not scored.requires_grad and learner.first_order == first_order
    assert torch.allclose(scored, want_losses, rtol=1e-12, atol=0)
    assert (accuracies is None) == (case == "regression")


def test_score_with_more_steps_equals_the_loop_with_more_steps():
    learner, loss_fn, batch = _make("kfo")
    # Test-time steps: the loop's last rate repeats (MAML.step_rates), here 2 -> 4 steps of 0.2.
    learner.lrs = [0.2] * 4
    _, want_accuracy, want_losses, _ = _reference(learner, loss_fn, batch, 1.0)
    learner.lrs = [0.2, 0.2]
    for strategy, chunk in STRATEGIES:
        losses, accuracies = Engine(learner, loss_fn, strategy=strategy, tasks_per_chunk=chunk).score(*batch, steps=4)
        assert torch.allclose(losses, want_losses, rtol=1e-12, atol=0), strategy
        assert abs(float(accuracies.sum()) - want_accuracy) <= 1e-12


@pytest.mark.parametrize("case", ["maml-2-steps-convnet", "kfo", "anil", "regression"])
def test_score_with_zero_steps_is_the_unadapted_models_query_loss(case):
    """``score(..., steps=0)``: the query loss before adaptation, computed here by calling the plain
    model on each query set (no learner, no engine), for every strategy."""
    learner, loss_fn, (xs, ys, xq, yq) = _make(case)
    plain = learner.model if isinstance(learner, meta.MAML) else (lambda x: learner.head(learner.features(x)))
    with torch.no_grad():
        want = torch.stack([loss_fn(plain(xq[i]), yq[i]) for i in range(TASKS)])
        correct = [(plain(xq[i]).argmax(-1) == yq[i]).double().mean() for i in range(TASKS)] \
            if case != "regression" else None
    for strategy, chunk in STRATEGIES:
        losses, accuracies = Engine(learner, loss_fn, strategy=strategy, tasks_per_chunk=chunk).score(
            xs, ys, xq, yq, steps=0)
        assert torch.allclose(losses, want, rtol=1e-12, atol=0), strategy
        if correct is not None:
            assert torch.equal(accuracies, torch.stack(correct))
    # adaptation changes the loss: steps=0 is not what the default steps give
    assert not torch.allclose(Engine(learner, loss_fn).score(xs, ys, xq, yq)[0], want)
    with pytest.raises(ValueError, match="^steps"):
        Engine(learner, loss_fn).score(xs, ys, xq, yq, steps=-1)
    with pytest.raises(ValueError, match="^steps"):
        Engine(learner, loss_fn).task_losses(xs, ys, xq, yq, steps=0)  # training needs at least one step


def test_bad_input_names_the_argument():
    learner, loss_fn, (xs, ys, xq, yq) = _make("kfo")
    with pytest.raises(ValueError, match="^strategy"):
        Engine(learner, strategy="chunks")
    with pytest.raises(ValueError, match="^tasks_per_chunk"):
        Engine(learner, tasks_per_chunk=0)
    with pytest.raises(TypeError, match="^compile"):
        Engine(learner, compile=1)
    with pytest.raises(TypeError, match="^loss_fn"):
        Engine(learner, "mse")
    with pytest.raises(TypeError, match="^learner"):
        Engine(object(), strategy="split")
    engine = Engine(learner, loss_fn)
    with pytest.raises(ValueError, match="^y_query"):
        engine.score(xs, ys, xq, yq[:2])
    with pytest.raises(ValueError, match="^steps"):
        engine.score(xs, ys, xq, yq, steps=-1)  # 0 is allowed: before adaptation
    with pytest.raises(ValueError, match="^scale"):
        engine.meta_gradient(xs, ys, xq, yq, scale=float("inf"))


def test_explicit_normalization_only_for_models_with_norm_layers():
    """The function mode is entered only where a norm layer needs it, and skipping it on a norm-free
    model changes nothing: the vmapped meta-gradient equals the written-out loop either way."""
    from linmaml.meta.engine import has_norm_layers

    assert has_norm_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)))
    assert has_norm_layers(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))
    assert has_norm_layers(nn.InstanceNorm1d(3))
    assert not has_norm_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    learner = meta.MAML(model, lr=0.3, steps=2)
    xs, xq = torch.randn(4, 6, 3, dtype=torch.float64), torch.randn(4, 7, 3, dtype=torch.float64)
    ys, yq = torch.randint(0, 2, (4, 6)), torch.randint(0, 2, (4, 7))
    grads = {}
    for norms in (None, True):
        engine = Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=None, explicit_norms=norms)
        assert engine.explicit_norms is (norms is True)
        learner.zero_grad()
        engine.meta_gradient(xs, ys, xq, yq, scale=0.25)
        grads[norms] = [p.grad.clone() for p in learner.parameters()]
    learner.zero_grad()
    for i in range(4):  # the written-out per-task loop
        params = dict(model.named_parameters())
        fast = params
        for _ in range(2):
            loss = F.cross_entropy(functional_call(model, fast, (xs[i],)), ys[i])
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: p - 0.3 * gi for (n, p), gi in zip(fast.items(), g)}
        (0.25 * F.cross_entropy(functional_call(model, fast, (xq[i],)), yq[i])).backward()
    for a, b, c in zip(grads[None], grads[True], [p.grad for p in learner.parameters()]):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b, c, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="explicit_norms"):
        Engine(learner, explicit_norms="yes")


# --------------------------------------------------------------------------------------------------
# Beyond the strategies: float32 accuracy, other normalisation layers under vmap, the formulas of
# explicit_normalization, accumulation onto existing gradients, channels-last images.


def _conv_episodes(dtype, tasks=3, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, 2 * WAYS, 1, side, side, generator=g, dtype=dtype)
    xq = torch.randn(tasks, 4 * WAYS, 1, side, side, generator=g, dtype=dtype)
    ys = torch.arange(WAYS).repeat_interleave(2).repeat(tasks, 1)
    yq = torch.arange(WAYS).repeat_interleave(4).repeat(tasks, 1)
    return xs, ys, xq, yq


def _loop_meta_gradient(model, lr, steps, batch):
    """Second-order MAML on every parameter of ``model`` written out: per task, ``steps`` gradient
    steps with autograd.grad(create_graph=True), the query loss; the mean over tasks and its gradient."""
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


def _vmapped_mean_loss(learner, batch):
    losses, _ = Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=None).task_losses(*batch)
    return losses.mean()


def test_float32_meta_gradient_is_as_accurate_as_a_float32_loop():
    torch.manual_seed(0)
    model64 = ConvNet(1, WAYS, blocks=2, filters=4, image_size=8).double()
    model32 = ConvNet(1, WAYS, blocks=2, filters=4, image_size=8)
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    batch64 = _conv_episodes(torch.float64)
    batch32 = tuple(t.float() if t.dtype.is_floating_point else t for t in batch64)
    _, exact = _loop_meta_gradient(model64, 0.3, 1, batch64)
    _, loop32 = _loop_meta_gradient(model32, 0.3, 1, batch32)
    loss = _vmapped_mean_loss(meta.MAML(model32, lr=0.3, steps=1), batch32)
    grads32 = [g.double() for g in torch.autograd.grad(loss, list(model32.parameters()))]
    vs_loop = _relative_error([g.double() for g in loop32], grads32)
    vs_exact = _relative_error(exact, grads32)
    loop_vs_exact = _relative_error(exact, [g.double() for g in loop32])
    # float32 rounding alone moves a second-order meta-gradient by ~5e-5 here (the loop's own error),
    # so the engine's value must be as close to the exact (float64) one as the loop is.
    assert vs_exact <= 2 * loop_vs_exact + 1e-6
    assert vs_loop <= 2 * (vs_exact + loop_vs_exact)
    assert loop_vs_exact < 1e-3


@pytest.mark.parametrize("norm", ["layer", "instance"])
def test_layer_and_instance_norm_under_vmap_equal_the_loop(norm):
    torch.manual_seed(3)
    layer = nn.LayerNorm([4, 6, 6]) if norm == "layer" else nn.InstanceNorm2d(4, affine=True)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, WAYS)).double()
    batch = _conv_episodes(torch.float64, seed=3)
    _, want = _loop_meta_gradient(model, 0.3, 1, batch)
    loss = _vmapped_mean_loss(meta.MAML(model, lr=0.3, steps=1), batch)
    assert _relative_error(want, torch.autograd.grad(loss, list(model.parameters()))) < 1e-11


def test_explicit_normalization_matches_torch_layers():
    from linmaml.meta.engine import explicit_normalization

    torch.manual_seed(4)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 3 + 1
    for layer in [nn.BatchNorm2d(3, track_running_stats=False), nn.InstanceNorm2d(3, affine=True),
                  nn.LayerNorm([3, 4, 4]), nn.LayerNorm(4)]:
        layer = layer.double()
        with torch.no_grad():
            for p in layer.parameters():
                p.uniform_(0.5, 1.5)
        expected = layer(x)
        with explicit_normalization():
            got = layer(x)
        assert torch.allclose(got, expected, rtol=0, atol=1e-13), type(layer).__name__
    running = nn.BatchNorm2d(3).double().eval()  # running statistics: left to torch
    with torch.no_grad():
        running.running_mean.uniform_(-1, 1)
    with explicit_normalization():
        got = running(x)
    assert torch.equal(got, running(x))


@pytest.mark.parametrize("strategy, chunk", [("loop", 1), ("vmap", 2), ("split", None)])
def test_meta_gradient_accumulates_onto_existing_gradients_on_channels_last_images(strategy, chunk):
    from linmaml.benchmarks.models import to_channels_last

    torch.manual_seed(5)
    net = ConvNet(1, WAYS, blocks=2, filters=4, image_size=8).double()
    xs, ys, xq, yq = batch = _conv_episodes(torch.float64, seed=5)
    value, want = _loop_meta_gradient(net, 0.3, 1, batch)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    loss_sum, _ = Engine(meta.MAML(net, lr=0.3, steps=1), strategy=strategy, tasks_per_chunk=chunk).meta_gradient(
        to_channels_last(xs), ys, to_channels_last(xq), yq, scale=0.5)
    tasks = xs.shape[0]  # 0.5·Σ_i ∇loss_i = 0.5·M·∇(mean), on top of the ones already there
    assert _relative_error([0.5 * tasks * w for w in want], [p.grad - 1 for p in net.parameters()]) < 1e-11
    assert loss_sum == pytest.approx(tasks * float(value.detach()), rel=1e-12)


@pytest.mark.parametrize("strategy, chunk", STRATEGIES)
def test_binary_accuracy_of_one_logit_with_float_labels_equals_a_hand_loop(strategy, chunk):
    """Binary logistic regression (one logit, float 0/1 labels): the engine scores the accuracy of
    the logit's sign; against a loop written here (plain gradient steps, autograd.grad)."""
    torch.manual_seed(7)
    model = nn.Linear(4, 1).double()
    learner = meta.MAML(model, lr=0.5, steps=2)
    g = torch.Generator().manual_seed(7)
    xs, xq = torch.randn(TASKS, 6, 4, generator=g, dtype=torch.float64), torch.randn(TASKS, 9, 4, generator=g,
                                                                                    dtype=torch.float64)
    w = torch.randn(TASKS, 4, 1, generator=g, dtype=torch.float64)
    ys, yq = (xs @ w > 0).double(), (xq @ w > 0).double()
    loss_fn = F.binary_cross_entropy_with_logits
    want_losses, want_accuracies = [], []
    for i in range(TASKS):
        fast = dict(model.named_parameters())
        for _ in range(2):
            grads = torch.autograd.grad(loss_fn(functional_call(model, fast, (xs[i],)), ys[i]), list(fast.values()))
            fast = {n: p - 0.5 * gi for (n, p), gi in zip(fast.items(), grads)}
        out = functional_call(model, fast, (xq[i],)).detach()
        want_losses.append(float(loss_fn(out, yq[i])))
        predicted = [1.0 if float(out[j, 0]) > 0 else 0.0 for j in range(9)]
        want_accuracies.append(sum(p == float(yq[i, j, 0]) for j, p in enumerate(predicted)) / 9)
    engine = Engine(learner, loss_fn, strategy=strategy, tasks_per_chunk=chunk)
    losses, accuracies = engine.score(xs, ys, xq, yq)
    assert torch.allclose(losses, torch.tensor(want_losses, dtype=torch.float64), rtol=1e-12, atol=0)
    assert accuracies.tolist() == pytest.approx(want_accuracies, abs=1e-15)
    assert 0 < sum(want_accuracies) < TASKS  # neither all right nor all wrong: the check can fail
    _, differentiable = engine.task_losses(xs, ys, xq, yq)
    assert differentiable.tolist() == pytest.approx(want_accuracies, abs=1e-15)
    _, accuracy_sum = engine.meta_gradient(xs, ys, xq, yq)
    assert accuracy_sum == pytest.approx(sum(want_accuracies), abs=1e-12)
    # float targets that are not 0/1 stay regression: no accuracy
    assert engine.score(xs, ys + 0.5, xq, yq + 0.5)[1] is None


@pytest.mark.parametrize("strategy, chunk", STRATEGIES)
def test_adapted_parameters_equal_the_written_out_inner_loop(strategy, chunk):
    learner, loss_fn, (xs, ys, _, _) = _make("metasgd")
    base = dict(learner.model.named_parameters())
    tparams = dict(learner.transform.named_parameters())
    fast = Engine(learner, loss_fn, strategy=strategy, tasks_per_chunk=chunk).adapted(xs, ys)
    assert sorted(fast) == sorted(learner.adapted_names) and not any(v.requires_grad for v in fast.values())
    for i in range(TASKS):
        want = dict(base)
        for lr in learner.lrs:
            loss = loss_fn(functional_call(learner.model, want, (xs[i],)), ys[i])
            grads = dict(zip(want, torch.autograd.grad(loss, list(want.values()))))
            updates = learner.transform.update(grads, tparams)
            want = {n: want[n] - lr * updates[n] for n in want}
        for n in want:
            torch.testing.assert_close(fast[n][i], want[n].detach(), rtol=1e-12, atol=1e-14)
