"""``learner.adapt`` with any inputs and with a loss closure, against hand-written inner loops
(torch.autograd.grad with create_graph, float64, second-order meta-gradients included); the buffers
policy no longer hides ``nn.Module.buffers()`` (SWA/EMA wrappers work on a learner)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linmaml import meta
from linmaml.errors import ArgumentError, ArgumentTypeError

DT = torch.float64
TOL = 1e-12


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class DictNet(nn.Module):
    """A model whose input is a dict: {"image": (n, 3), "meta": (n, 2)} -> (n, 2)."""

    def __init__(self):
        super().__init__()
        self.image = nn.Linear(3, 4)
        self.meta = nn.Linear(2, 4, bias=False)
        self.out = nn.Linear(4, 2)

    def forward(self, batch):
        return self.out(torch.tanh(self.image(batch["image"]) + self.meta(batch["meta"])))


def dict_forward(params, batch):
    """DictNet written with torch functions; params in ``named_parameters()`` order."""
    Wi, bi, Wm, Wo, bo = params
    return torch.tanh(batch["image"] @ Wi.T + bi + batch["meta"] @ Wm.T) @ Wo.T + bo


def squared(out, y):
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


def dict_task(seed):
    g = torch.Generator().manual_seed(seed)
    batch = lambda n: {"image": torch.randn(n, 3, generator=g, dtype=DT),  # noqa: E731
                       "meta": torch.randn(n, 2, generator=g, dtype=DT)}
    return batch(6), torch.randn(6, 2, generator=g, dtype=DT), batch(7), torch.randn(7, 2, generator=g, dtype=DT)


def hand_loop(model, forward, support_loss, query_loss, lr, steps, first_order=False):
    """The adapted parameters (list) and the meta-gradient of the query loss, written out."""
    base = [p.detach().clone().requires_grad_() for p in model.parameters()]
    params = base
    for _ in range(steps):
        grads = torch.autograd.grad(support_loss(params), params, create_graph=not first_order)
        params = [p - lr * g for p, g in zip(params, grads)]
    meta_grads = torch.autograd.grad(query_loss(params), base)
    return [p.detach() for p in params], meta_grads


def ours(learner, adapt, query_loss):
    learner.zero_grad()
    fast = adapt()
    query_loss(fast).backward()
    return fast, [p.grad for p in learner.model.parameters()]


@pytest.mark.parametrize("form", ["inputs", "closure"])
@pytest.mark.parametrize("first_order", [False, True])
def test_dict_input_model_equals_a_hand_written_loop(form, first_order):
    torch.manual_seed(0)
    model = DictNet().to(DT)
    learner = meta.MAML(model, lr=0.3, steps=3, first_order=first_order)
    xs, ys, xq, yq = dict_task(1)
    expected, expected_grads = hand_loop(
        model, dict_forward, lambda p: squared(dict_forward(p, xs), ys),
        lambda p: squared(dict_forward(p, xq), yq), 0.3, 3, first_order)
    if form == "inputs":
        adapt = lambda: learner.adapt(xs, ys, squared)  # noqa: E731
    else:
        adapt = lambda: learner.adapt(closure=lambda p: squared(learner(xs, params=p), ys))  # noqa: E731
    fast, grads = ours(learner, adapt, lambda p: squared(learner(xq, params=p), yq))
    assert list(fast) == [n for n, _ in model.named_parameters()]
    for a, b in zip(fast.values(), expected):
        assert rel(a.detach(), b) < TOL
    for a, b in zip(grads, expected_grads):
        assert rel(a, b) < TOL


class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, states):
        return self.net(states)


def policy_forward(params, states):
    W1, b1, W2, b2 = params
    return torch.tanh(states @ W1.T + b1) @ W2.T + b2


def rollouts(model, seed, n=12):
    """States, actions sampled from the policy, and returns: a batch of one-step episodes."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, 4, generator=g, dtype=DT)
    with torch.no_grad():
        probs = F.softmax(model(states), -1)
    actions = torch.multinomial(probs, 1, generator=g).squeeze(1)
    returns = torch.randn(n, generator=g, dtype=DT) + (actions == 1).to(DT)
    return states, actions, returns


def reinforce(logits, actions, returns):
    """The REINFORCE surrogate: −mean(log π(a|s) · R); its gradient is the policy-gradient estimate."""
    return -(F.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1) * returns).mean()


@pytest.mark.parametrize("form", ["closure", "targets"])
def test_policy_gradient_inner_loss_equals_a_hand_written_loop(form):
    torch.manual_seed(3)
    model = Policy().to(DT)
    learner = meta.MAML(model, lr=0.5, steps=2)
    s, a, R = rollouts(model, 4)
    sq, aq, Rq = rollouts(model, 5)
    expected, expected_grads = hand_loop(
        model, policy_forward, lambda p: reinforce(policy_forward(p, s), a, R),
        lambda p: reinforce(policy_forward(p, sq), aq, Rq), 0.5, 2)
    if form == "closure":
        adapt = lambda: learner.adapt(closure=lambda p: reinforce(learner(s, params=p), a, R))  # noqa: E731
    else:  # targets of any structure: a tuple (actions, returns)
        adapt = lambda: learner.adapt(s, (a, R), lambda out, y: reinforce(out, *y))  # noqa: E731
    fast, grads = ours(learner, adapt, lambda p: reinforce(learner(sq, params=p), aq, Rq))
    for a_, b in zip(fast.values(), expected):
        assert rel(a_.detach(), b) < TOL
    for a_, b in zip(grads, expected_grads):
        assert rel(a_, b) < TOL
    assert rel(expected[0], next(model.parameters()).detach()) > 1e-3  # the inner loop moved


def test_y_none_and_the_closure_under_vmap_equal_the_per_task_loop():
    torch.manual_seed(0)
    model = DictNet().to(DT)
    learner = meta.MAML(model, lr=0.3, steps=2)
    tasks = [dict_task(seed) for seed in range(3)]
    # y=None: the loss reads its targets elsewhere
    xs, ys, _, _ = tasks[0]
    a = learner.adapt(xs, None, lambda out, y: squared(out, ys))
    b = learner.adapt(xs, ys, squared)
    assert all(rel(a[n].detach(), b[n].detach()) < TOL for n in a)
    # the closure inside torch.func.vmap (the torch.func.grad path of the inner loop)
    images = torch.stack([t[0]["image"] for t in tasks])
    metas = torch.stack([t[0]["meta"] for t in tasks])
    targets = torch.stack([t[1] for t in tasks])

    def one(image, meta_, y):
        batch = {"image": image, "meta": meta_}
        return learner.adapt(closure=lambda p: squared(learner(batch, params=p), y))

    stacked = torch.func.vmap(one)(images, metas, targets)
    for i, (xs, ys, _, _) in enumerate(tasks):
        single = learner.adapt(xs, ys, squared)
        assert all(rel(stacked[n][i].detach(), single[n].detach()) < TOL for n in single)


def test_anil_closure_equals_its_inputs_form():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(3, 5), nn.Tanh()).to(DT)
    head = nn.Linear(5, 2).to(DT)
    learner = meta.ANIL(features, head, lr=0.2, steps=3)
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(6, 3, generator=g, dtype=DT), torch.randn(6, 2, generator=g, dtype=DT)
    a = learner.adapt(xs, ys, squared)
    b = learner.adapt(closure=lambda p: squared(learner(xs, params=p), ys))
    assert list(a) == list(b) == ["weight", "bias"]
    assert all(rel(a[n].detach(), b[n].detach()) < TOL for n in a)


def test_the_two_forms_are_checked_naming_the_argument():
    learner = meta.MAML(nn.Linear(3, 2).to(DT))
    x, y = torch.randn(4, 3, dtype=DT), torch.randn(4, 2, dtype=DT)
    with pytest.raises(ArgumentError, match="^closure: pass either"):
        learner.adapt(x, y, squared, closure=lambda p: p["weight"].sum())
    with pytest.raises(ArgumentTypeError, match="^closure: "):
        learner.adapt(closure="loss")
    with pytest.raises(ArgumentError, match="^x_support: missing.*closure="):
        learner.adapt(loss_fn=lambda p: p["weight"].sum())
    with pytest.raises(ValueError, match="^closure: expected a scalar"):
        learner.adapt(closure=lambda p: p["weight"])
    with pytest.raises(TypeError, match=r"^x_support: dtype torch.float32"):
        learner.adapt({"a": x.float()}, y, lambda out, y: out.sum())


def test_learner_buffers_is_the_module_method_and_swa_averages_a_learner():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).to(DT)
    learner = meta.MAML(model, lr=0.1, steps=1, buffers="frozen")
    assert learner.buffers_policy == "frozen"
    names = [n for n, _ in learner.named_buffers()]
    assert [b for b in learner.buffers()] and len(list(learner.buffers())) == len(names)
    assert "model.1.running_mean" in names
    swa = torch.optim.swa_utils.AveragedModel(learner)
    first = [p.detach().clone() for p in learner.parameters()]
    for _ in range(2):  # the first update copies, the second averages: the mean of first + 1 and first + 2
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(1.0)
        swa.update_parameters(learner)
    for avg, p0 in zip(swa.module.parameters(), first):
        assert rel(avg.detach(), p0 + 1.5) < TOL
    assert swa.module.buffers_policy == "frozen"
    x, y = torch.randn(5, 3, dtype=DT), torch.randn(5, 2, dtype=DT)
    fast = swa.module.adapt(x, y, squared)  # the averaged learner adapts as a learner
    assert set(fast) == {n for n, _ in model.named_parameters()}


def test_a_learner_pickled_with_the_old_attribute_loads():
    learner = meta.MAML(nn.Linear(3, 2).to(DT), buffers="frozen")
    state = learner.__dict__.copy()
    state["buffers"] = state.pop("buffers_policy")  # as pickled before the rename
    clone = copy.copy(learner)
    clone.__dict__.clear()
    clone.__setstate__(state)
    assert clone.buffers_policy == "frozen" and callable(clone.buffers) and "buffers" not in clone.__dict__
