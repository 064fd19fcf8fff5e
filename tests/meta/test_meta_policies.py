"""The learners' module-state policy (buffers="update"|"frozen"), Dropout under the vmapped engine,
and the clear errors: dtype mismatches, tensor rates, non-finite support sets (check_finite)."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linmaml import meta
from linmaml.errors import ArgumentError
from linmaml.meta.engine import Engine

DT = torch.float64


def bn_net(track=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=track), nn.ReLU(),
                         nn.Linear(6, 3)).to(DT)


def batch(tasks=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tasks, 6, 4, generator=g, dtype=DT), torch.arange(3).repeat(2).repeat(tasks, 1),
            torch.randn(tasks, 9, 4, generator=g, dtype=DT), torch.arange(3).repeat(3).repeat(tasks, 1))


def buffers_of(module):
    return {n: b.clone() for n, b in module.named_buffers()}


# --------------------------------------------------------------------------------------------------
# buffers policy


def test_update_policy_updates_running_statistics_like_any_forward():
    model = bn_net()
    before = buffers_of(model)
    learner = meta.MAML(model, lr=0.1, steps=2)
    xs, ys, xq, _ = batch(1)
    fast = learner.adapt(xs[0], ys[0], F.cross_entropy)
    learner(xq[0], params=fast)
    after = dict(model.named_buffers())
    assert int(after["1.num_batches_tracked"]) == 3  # two inner steps and one query pass
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])


@pytest.mark.parametrize("strategy, chunk", [("loop", 1), ("split", 3), ("vmap", 3)])
def test_frozen_policy_leaves_buffers_and_equals_a_model_without_running_statistics(strategy, chunk):
    """Reference: the same weights in a model built with track_running_stats=False (batch statistics,
    no buffers), meta-gradients by the per-task loop."""
    model, reference = bn_net(True), bn_net(False)
    reference.load_state_dict({n: v for n, v in model.state_dict().items() if "running" not in n
                               and "num_batches" not in n})
    before = buffers_of(model)
    learner = meta.MAML(model, lr=0.2, steps=2, buffers="frozen")
    ref_learner = meta.MAML(reference, lr=0.2, steps=2)
    data = batch()
    loss, _ = Engine(learner, F.cross_entropy, strategy=strategy, tasks_per_chunk=chunk).meta_gradient(*data)
    ref_loss, _ = Engine(ref_learner, F.cross_entropy, strategy="loop").meta_gradient(*data)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-13)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    assert model[1].track_running_stats  # put back


def test_update_policy_under_vmap_names_the_module():
    learner = meta.MAML(bn_net(), lr=0.1, steps=1)
    with pytest.raises(ArgumentError, match=r"^buffers: module 'model.1' \(BatchNorm1d\)"):
        Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=3).meta_gradient(*batch())
    learner.eval()  # eval mode reads the running statistics and updates nothing: allowed
    Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=3).score(*batch())


class Counter(nn.Module):
    """A model that reassigns a buffer in forward (counts its calls)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3).to(DT)
        self.register_buffer("calls", torch.zeros((), dtype=DT))

    def forward(self, x):
        self.calls = self.calls + 1
        return self.linear(x)


def test_buffer_reassigned_in_forward_kept_by_update_dropped_by_frozen():
    xs, ys, xq, _ = batch(1)
    model = Counter()
    learner = meta.MAML(model, lr=0.1, steps=3)
    learner(xq[0], params=learner.adapt(xs[0], ys[0], F.cross_entropy))
    assert float(model.calls) == 4
    frozen = meta.MAML(model, lr=0.1, steps=3, buffers="frozen")
    frozen(xq[0], params=frozen.adapt(xs[0], ys[0], F.cross_entropy))
    assert float(model.calls) == 4
    with pytest.raises(ValueError, match="^buffers:"):
        meta.MAML(model, buffers="keep")


def test_anil_frozen_policy_covers_the_features():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU()).to(DT)
    learner = meta.ANIL(features, nn.Linear(6, 3).to(DT), lr=0.1, steps=2, buffers="frozen")
    before = buffers_of(features)
    xs, ys, xq, _ = batch(1)
    learner(xq[0], params=learner.adapt(xs[0], ys[0], F.cross_entropy))
    assert all(torch.equal(before[n], b) for n, b in features.named_buffers())


# --------------------------------------------------------------------------------------------------
# Dropout under vmap


def test_dropout_under_vmap_needs_randomness_and_different_matches_the_loop_in_distribution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).to(DT)
    learner = meta.MAML(model, lr=0.1, steps=1)
    data = batch(4)
    with pytest.raises(ArgumentError, match="^randomness:"):
        Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=4).task_losses(*data)
    with pytest.raises(ArgumentError, match="^randomness:"):
        Engine(learner, F.cross_entropy, randomness="sometimes")
    # "different": each task its own mask, so the tasks' losses differ from those of one shared mask.
    torch.manual_seed(1)
    different, _ = Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=4,
                          randomness="different").task_losses(*(t[:1].expand(4, *t.shape[1:]) for t in data))
    torch.manual_seed(1)
    same, _ = Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=4,
                     randomness="same").task_losses(*(t[:1].expand(4, *t.shape[1:]) for t in data))
    assert len(set(different.tolist())) == 4 and len(set(same.tolist())) == 1
    learner.eval()  # no dropout: the default works
    Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=4).task_losses(*data)


# --------------------------------------------------------------------------------------------------
# Clear errors


def test_float32_data_into_a_float64_learner():
    learner = meta.MAML(bn_net(track=False), lr=0.1, steps=1)
    xs, ys, _, _ = batch(1)
    with pytest.raises(TypeError, match=r"^x_support: dtype torch.float32 differs .*torch.float64"):
        learner.adapt(xs[0].float(), ys[0], F.cross_entropy)
    reg = meta.MAML(nn.Linear(4, 2).to(DT), lr=0.1, steps=1)
    with pytest.raises(TypeError, match="^y_support: dtype torch.float32"):
        reg.adapt(xs[0], torch.zeros(6, 2), F.mse_loss)


def test_model_converted_after_wrapping_leaves_the_transform_behind():
    model = nn.Linear(4, 3)
    learner = meta.MAML(model, lr=0.1, steps=1, transform=meta.KFO())
    model.double()
    xs, ys, _, _ = batch(1)
    with pytest.raises(TypeError, match=r"^transform: parameter .* is torch.float32 .* learner.double\(\)"):
        learner.adapt(xs[0], ys[0], F.cross_entropy)
    learner.double()  # the advice works
    learner.adapt(xs[0], ys[0], F.cross_entropy)


@pytest.mark.parametrize("lr", [torch.tensor(0.1), nn.Parameter(torch.tensor(0.1)), [0.1, torch.tensor(0.2)]])
def test_tensor_rates_are_refused_pointing_to_learned_rates(lr):
    with pytest.raises(TypeError, match="^lr: .*LearnedRates"):
        meta.MAML(nn.Linear(2, 2), lr=lr, steps=2)
    with pytest.raises(TypeError, match="^lr: .*LearnedRates"):
        meta.ANIL(nn.Identity(), nn.Linear(2, 2), lr=lr, steps=2)


def test_check_finite_refuses_nan_support_and_divergence():
    model = nn.Linear(4, 3).to(DT)
    xs, ys, _, _ = batch(2)
    bad = xs.clone()
    bad[0, 1, 2] = float("nan")
    silent = meta.MAML(model, lr=0.1, steps=1)
    assert torch.isnan(silent.adapt(bad[0], ys[0], F.cross_entropy)["weight"]).any()  # the default: no check
    learner = meta.MAML(model, lr=0.1, steps=1, check_finite=True)
    with pytest.raises(ValueError, match="^x_support: contains NaN"):
        learner.adapt(bad[0], ys[0], F.cross_entropy)
    with pytest.raises(ValueError, match="^x_support: contains NaN"):  # before vmap, in the engine
        Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=2).score(bad, ys, xs, ys)
    reg = meta.MAML(nn.Linear(4, 1).to(DT), lr=1e6, steps=30, check_finite=True)
    with pytest.raises(ValueError, match="^lr: the inner loop diverged"):
        reg.adapt(xs[0] * 100, torch.ones(6, 1, dtype=DT), F.mse_loss)
    with pytest.raises(TypeError, match="^check_finite:"):
        meta.MAML(model, check_finite=1)


def test_steps_warning_is_not_raised_within_the_trained_steps():
    learner = meta.MAML(nn.Linear(4, 3).to(DT), lr=0.1, steps=3, transform=meta.MetaSGD())
    with torch.no_grad():  # a learned transform: its rates moved away from their start
        for p in learner.transform.parameters():
            p.mul_(1.5)
    xs, ys, _, _ = batch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner.adapt(xs[0], ys[0], F.cross_entropy, steps=3)
    with pytest.warns(meta.StepsBeyondTrainingWarning, match="MetaSGD"):
        learner.adapt(xs[0], ys[0], F.cross_entropy, steps=4)


@pytest.mark.parametrize("transform", [meta.MetaSGD, meta.KFO, meta.MetaCurvature, meta.LearnedRates])
def test_a_transform_still_at_its_initialisation_adapts_beyond_the_trained_steps_without_a_warning(transform):
    """At initialisation every built-in transform is the identity (plain MAML), which has no trained
    step count to overshoot; the adapted weights equal a hand-written plain SGD loop of 5 steps."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(DT)
    learner = meta.MAML(model, lr=0.1, steps=2, transform=transform())
    xs, ys, _, _ = batch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = learner.adapt(xs[0], ys[0], F.cross_entropy, steps=5)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    for _ in range(5):
        w.requires_grad_(True), b.requires_grad_(True)
        gw, gb = torch.autograd.grad(F.cross_entropy(xs[0] @ w.T + b, ys[0]), (w, b))
        w, b = (w - 0.1 * gw).detach(), (b - 0.1 * gb).detach()
    assert torch.allclose(fast["weight"], w, rtol=0, atol=1e-13)
    assert torch.allclose(fast["bias"], b, rtol=0, atol=1e-13)
