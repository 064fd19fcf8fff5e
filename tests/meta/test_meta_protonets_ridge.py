"""ProtoNets and the R2-D2 ridge head against hand-written references (class means and distances by
loops; the ridge solution in its primal form and in the written-out Woodbury form, float64), their
gradients by torch.autograd.gradcheck, and the engine's strategies against a per-task reference."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linmaml import meta
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.engine import Engine

DT = torch.float64


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def features(seed=0, d_in=3, d=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, d), nn.Tanh()).to(DT)


def episode(seed, ways=3, shots=2, queries=5, d_in=3):
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(ways).repeat_interleave(shots)[torch.randperm(ways * shots, generator=g)]
    return (torch.randn(ways * shots, d_in, generator=g, dtype=DT), ys,
            torch.randn(queries, d_in, generator=g, dtype=DT), torch.randint(0, ways, (queries,), generator=g))


def proto_reference(f, xs, ys, xq, ways):
    """Class means by a loop over the classes; distances by a loop over queries and prototypes."""
    zs, zq = f(xs), f(xq)
    prototypes = [zs[ys == k].mean(0) for k in range(ways)]
    return torch.stack([torch.stack([-((z - c) ** 2).sum() for c in prototypes]) for z in zq])


def ridge_reference(f, xs, ys, xq, ways, lam, scale, bias, form):
    X, Y = f(xs), F.one_hot(ys, ways).to(DT)
    if form == "primal":  # (XᵀX + λI_d)⁻¹ XᵀY: a d×d inverse, no Woodbury
        W = torch.linalg.inv(X.T @ X + lam * torch.eye(X.shape[1], dtype=DT)) @ X.T @ Y
    else:  # Xᵀ (XXᵀ + λI_n)⁻¹ Y written out with an explicit inverse
        W = X.T @ torch.linalg.inv(X @ X.T + lam * torch.eye(X.shape[0], dtype=DT)) @ Y
    return scale * f(xq) @ W + bias


def test_protonet_equals_class_means_and_squared_distances():
    f = features(1)
    learner = meta.ProtoNet(f, ways=3)
    xs, ys, xq, yq = episode(2)
    fast = learner.adapt(xs, ys, F.cross_entropy)
    assert list(fast) == ["prototypes"] and fast["prototypes"].shape == (3, 4)
    logits = learner(xq, params=fast)
    expected = proto_reference(f, xs, ys, xq, 3)
    assert rel(logits.detach(), expected.detach()) < 1e-14
    F.cross_entropy(logits, yq).backward()
    ours = [p.grad.clone() for p in f.parameters()]
    reference = torch.autograd.grad(F.cross_entropy(expected, yq), list(f.parameters()))
    for a, b in zip(ours, reference):
        assert rel(a, b) < 1e-13
    # ways inferred from the labels outside vmap: the same numbers
    inferred = meta.ProtoNet(f)(xq, params=meta.ProtoNet(f).adapt(xs, ys))
    assert rel(inferred.detach(), expected.detach()) < 1e-14


@pytest.mark.parametrize("form", ["primal", "woodbury"])
def test_r2d2_equals_the_ridge_solution(form):
    f = features(3, d=7)  # d = 7 > n = 6: the Woodbury form's case
    learner = meta.R2D2(f, ways=3, lam=0.7, scale=1.3, bias=0.2)
    xs, ys, xq, yq = episode(4)
    fast = learner.adapt(xs, ys)
    assert list(fast) == ["ridge_weight"] and fast["ridge_weight"].shape == (7, 3)
    logits = learner(xq, params=fast)
    lam = learner.log_lambda.exp()
    expected = ridge_reference(f, xs, ys, xq, 3, lam, learner.scale, learner.bias, form)
    assert rel(logits.detach(), expected.detach()) < 1e-12
    F.cross_entropy(logits, yq).backward()
    wanted = [*f.parameters(), learner.log_lambda, learner.scale]
    reference = torch.autograd.grad(F.cross_entropy(expected, yq), wanted)
    for p, b in zip(wanted, reference):
        assert rel(p.grad, b) < 1e-10
    assert abs(float(learner.bias.grad)) < 1e-14  # softmax is shift invariant: β gets no gradient there
    assert abs(float(learner.log_lambda.grad)) > 1e-6  # λ is learned through the solve


class Episode(nn.Module):
    """adapt then query as one forward, so torch.func.functional_call can set every parameter."""

    def __init__(self, learner):
        super().__init__()
        self.learner = learner

    def forward(self, xs, ys, xq):
        return self.learner(xq, params=self.learner.adapt(xs, ys))


@pytest.mark.parametrize("kind", ["protonet", "r2d2"])
def test_gradcheck_in_float64(kind):
    f = features(5)
    learner = meta.ProtoNet(f, ways=3) if kind == "protonet" else meta.R2D2(f, ways=3, lam=0.5, scale=0.8, bias=0.1)
    module = Episode(learner)
    names = [n for n, _ in module.named_parameters()]
    xs, ys, xq, _ = episode(6)

    def function(*tensors):
        params = dict(zip(names, tensors[:len(names)]))
        return torch.func.functional_call(module, params, (tensors[-2], ys, tensors[-1]))

    inputs = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    inputs += [xs.clone().requires_grad_(), xq.clone().requires_grad_()]
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kind", ["protonet", "r2d2"])
@pytest.mark.parametrize("strategy", ["loop", "split", "vmap"])
def test_engine_strategies_equal_the_per_task_reference(kind, strategy):
    f = features(7)
    learner = meta.ProtoNet(f, ways=3) if kind == "protonet" else meta.R2D2(f, ways=3, lam=0.5)
    tasks = [episode(10 + i) for i in range(4)]
    xs, ys, xq, yq = (torch.stack([t[j] for t in tasks]) for j in range(4))
    loss_sum, accuracy_sum = Engine(learner, F.cross_entropy, strategy=strategy, tasks_per_chunk=2).meta_gradient(
        xs, ys, xq, yq, scale=0.25)
    wanted = list(learner.parameters())
    total, correct = 0.0, 0.0
    for t in tasks:
        if kind == "protonet":
            logits = proto_reference(f, t[0], t[1], t[2], 3)
        else:
            logits = ridge_reference(f, t[0], t[1], t[2], 3, learner.log_lambda.exp(), learner.scale, learner.bias,
                                     "primal")
        total = total + F.cross_entropy(logits, t[3])
        correct += float((logits.argmax(-1) == t[3]).to(DT).mean())
    reference = torch.autograd.grad(0.25 * total, wanted, allow_unused=True, materialize_grads=True)
    assert abs(loss_sum - float(total)) < 1e-12 * float(total) and abs(accuracy_sum - correct) < 1e-12
    for p, b in zip(wanted, reference):
        assert rel(p.grad, b) < 1e-10 or float(b.norm()) < 1e-14 and float(p.grad.norm()) < 1e-14


def test_checks_name_the_argument():
    f = features()
    xs, ys, xq, _ = episode(0)
    with pytest.raises(ArgumentError, match="^y_support: class 2 has no support example"):
        meta.ProtoNet(f, ways=3).adapt(xs, ys.clamp_max(1))
    with pytest.raises(ArgumentError, match=r"^y_support: expected labels in \[0, 2\)"):
        meta.ProtoNet(f, ways=2).adapt(xs, ys)
    with pytest.raises(ArgumentTypeError, match="^y_support: expected integer class labels"):
        meta.R2D2(f).adapt(xs, ys.to(DT))
    with pytest.raises(ArgumentError, match="^ways: .*under vmap"):
        torch.func.vmap(lambda x, y: meta.ProtoNet(f).adapt(x, y))(xs[None], ys[None])
    with pytest.raises(ArgumentError, match="^closure: "):
        meta.ProtoNet(f).adapt(closure=lambda p: p)
    with pytest.raises(ArgumentError, match="^lam: "):
        meta.R2D2(f, lam=0.0)
    with pytest.raises(ArgumentError, match="^buffers: "):
        meta.R2D2(f, buffers="keep")
    with pytest.raises(ArgumentError, match="^params: "):
        meta.R2D2(f)(xq, params={"prototypes": torch.zeros(3, 4, dtype=DT)})
