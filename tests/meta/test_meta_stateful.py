"""Learned per-step rates and inner-loop momentum against hand-written unrolled loops (float64, second
order), under every engine strategy; the stateful-transform protocol with adapt_transform."""
import pytest
import torch
from torch import nn

from linmaml import meta
from linmaml.meta.engine import Engine

DT = torch.float64
SQUARED = lambda out, y: 0.5 * ((out - y) ** 2).sum(-1).mean()  # noqa: E731


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)


def forward(params, x):
    """The :func:`mlp` written with torch functions; params = [W1, b1, W2, b2]."""
    W1, b1, W2, b2 = params
    return torch.tanh(x @ W1.T + b1) @ W2.T + b2


def tasks(count=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(count, 6, 3, generator=g, dtype=DT), torch.randn(count, 6, 2, generator=g, dtype=DT),
            torch.randn(count, 7, 3, generator=g, dtype=DT), torch.randn(count, 7, 2, generator=g, dtype=DT))


def randomise(transform, seed=2, low=0.3, high=1.7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in transform.parameters():
            p.copy_(low + (high - low) * torch.rand(p.shape, generator=g, dtype=DT))


def hand_loop(model, batch, rates, update, first_order=False):
    """Σ query losses of the hand-written unrolled loop and its gradients w.r.t. the model's parameters
    and ``extra`` leaves; ``update(k, grads, velocities) -> (updates, velocities)`` is written out by
    the caller; ``rates`` the learner's lr per step."""
    base = [p.detach().clone().requires_grad_() for p in model.parameters()]
    xs, ys, xq, yq = batch
    total = 0.0
    for i in range(xs.shape[0]):
        params, state = base, None
        for k, lr in enumerate(rates):
            loss = SQUARED(forward(params, xs[i]), ys[i])
            grads = torch.autograd.grad(loss, params, create_graph=not first_order)
            updates, state = update(k, grads, state)
            params = [p - lr * u for p, u in zip(params, updates)]
        total = total + SQUARED(forward(params, xq[i]), yq[i])
    return total, base


def ours(learner, batch, steps=None):
    xs, ys, xq, yq = batch
    total = 0.0
    for i in range(xs.shape[0]):
        fast = learner.adapt(xs[i], ys[i], SQUARED, steps=steps)
        total = total + SQUARED(learner(xq[i], params=fast), yq[i])
    return total


def close(a, b, tol=1e-12):
    a, b = torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in b])
    return float((a - b).norm() / b.norm()) <= tol


# --------------------------------------------------------------------------------------------------
# LearnedRates


def test_learned_rates_start_as_plain_maml_bit_for_bit():
    model = mlp()
    plain = meta.MAML(model, lr=[0.3, 0.2, 0.1], steps=3)
    rated = meta.MAML(model, lr=[0.3, 0.2, 0.1], steps=3, transform=meta.LearnedRates())
    xs, ys, _, _ = tasks(1)
    a, b = plain.adapt(xs[0], ys[0], SQUARED), rated.adapt(xs[0], ys[0], SQUARED)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert {n: tuple(p.shape) for n, p in rated.transform.named_parameters()} == {
        "rates.0/weight": (3,), "rates.0/bias": (3,), "rates.2/weight": (3,), "rates.2/bias": (3,)}


@pytest.mark.parametrize("first_order", [False, True])
def test_learned_rates_equal_a_hand_loop_with_those_rates_fixed(first_order):
    model = mlp()
    lrs = [0.4, 0.25, 0.1]
    transform = meta.LearnedRates()
    learner = meta.MAML(model, lr=lrs, steps=3, transform=transform, first_order=first_order)
    randomise(transform)
    batch = tasks()
    total = ours(learner, batch)
    got = torch.autograd.grad(total, list(model.parameters()) + list(transform.parameters()))

    names = [n for n, _ in model.named_parameters()]
    r = {n: transform.rates[meta.parameter_key(n)].detach().clone().requires_grad_() for n in names}

    def update(k, grads, state):
        return [r[n][k] * g for n, g in zip(names, grads)], state

    want_total, base = hand_loop(model, batch, lrs, update, first_order)
    want = torch.autograd.grad(want_total, base + [r[n] for n in names])
    assert abs(float(total.detach()) - float(want_total.detach())) <= 1e-12 * abs(float(want_total.detach()))
    assert close(got, want)


def test_learned_rates_beyond_the_trained_steps_repeat_the_last_rate_and_warn_once():
    model = mlp()
    transform = meta.LearnedRates()
    learner = meta.MAML(model, lr=0.3, steps=2, transform=transform)
    randomise(transform)
    names = [n for n, _ in model.named_parameters()]
    r = {n: transform.rates[meta.parameter_key(n)].detach() for n in names}
    batch = tasks(1)
    with pytest.warns(meta.StepsBeyondTrainingWarning, match="trained for 2"):
        total = ours(learner, batch, steps=4)
    want, _ = hand_loop(model, batch, [0.3] * 4, lambda k, grads, s: ([r[n][min(k, 1)] * g for n, g in
                                                                       zip(names, grads)], s))
    assert abs(float(total.detach()) - float(want.detach())) <= 1e-12 * abs(float(want.detach()))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(learner, batch, steps=5)  # once per learner
        meta.MAML(mlp(), lr=0.3, steps=2).adapt(batch[0][0], batch[1][0], SQUARED, steps=6)  # nothing learned
        meta.MAML(mlp(), lr=0.3, steps=2, transform=meta.KFO()).adapt(batch[0][0], batch[1][0], SQUARED, steps=2)


def test_learned_rates_need_steps_and_give_one_update_per_call():
    with pytest.raises(ValueError, match="^steps:"):
        meta.LearnedRates().build({"w": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="^steps:"):
        meta.LearnedRates(steps=0)
    t = meta.LearnedRates(steps=2).build({"w": torch.zeros(2, 2)})
    with torch.no_grad():
        t.rates["w"].copy_(torch.tensor([0.5, 3.0]))
    g = torch.arange(4.0).reshape(2, 2)
    # the one-call form: step k's update from the start state (the first step by default; the last
    # rate repeats beyond the steps it keeps)
    assert torch.equal(t({"w": g})["w"], 0.5 * g)
    assert torch.equal(t.update({"w": g}, k=1)["w"], 3.0 * g) and torch.equal(t.update({"w": g}, k=7)["w"], 3.0 * g)
    with pytest.raises(ValueError, match="^grads:"):
        t({"v": g})


# --------------------------------------------------------------------------------------------------
# Momentum


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("first_order", [False, True])
def test_momentum_equals_a_hand_unrolled_heavy_ball_loop(nesterov, first_order):
    model = mlp()
    lrs, beta = [0.3, 0.2, 0.15, 0.1], 0.7
    learner = meta.MAML(model, lr=lrs, steps=4, transform=meta.Momentum(beta, nesterov=nesterov),
                        first_order=first_order)
    batch = tasks()
    total = ours(learner, batch)
    got = torch.autograd.grad(total, list(model.parameters()))

    def update(k, grads, velocities):  # torch.optim.SGD(momentum=beta, dampening=0) written out
        velocities = list(grads) if velocities is None else [beta * v + g for v, g in zip(velocities, grads)]
        return ([g + beta * v for g, v in zip(grads, velocities)] if nesterov else velocities), velocities

    want_total, base = hand_loop(model, batch, lrs, update, first_order)
    want = torch.autograd.grad(want_total, base)
    assert abs(float(total.detach()) - float(want_total.detach())) <= 1e-12 * abs(float(want_total.detach()))
    assert close(got, want)


def test_momentum_matches_torch_sgd_with_momentum():
    """An independent implementation: torch.optim.SGD(momentum=β) stepping a copy of the model."""
    model = mlp()
    lrs, beta = 0.2, 0.9
    learner = meta.MAML(model, lr=lrs, steps=5, transform=meta.Momentum(beta))
    xs, ys, _, _ = tasks(1)
    fast = learner.adapt(xs[0], ys[0], SQUARED)
    copy = mlp()
    copy.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(copy.parameters(), lr=lrs, momentum=beta)
    for _ in range(5):
        opt.zero_grad()
        SQUARED(copy(xs[0]), ys[0]).backward()
        opt.step()
    assert close([fast[n] for n, _ in copy.named_parameters()], list(copy.parameters()), 1e-13)


def test_momentum_arguments():
    with pytest.raises(ValueError, match="^beta:"):
        meta.Momentum(1.0)
    with pytest.raises(TypeError, match="^nesterov:"):
        meta.Momentum(0.5, nesterov=1)


def test_chain_of_learned_rates_kfo_and_momentum_equals_the_hand_loop():
    model = mlp()
    lrs, beta = [0.3, 0.2, 0.1], 0.5
    rates, kfo = meta.LearnedRates(), meta.KFO()
    learner = meta.MAML(model, lr=lrs, steps=3, transform=meta.Chain(rates, kfo, meta.Momentum(beta)))
    randomise(rates)
    randomise(kfo, seed=3, low=-0.4, high=1.2)
    batch = tasks()
    total = ours(learner, batch)
    got = torch.autograd.grad(total, list(model.parameters()) + list(learner.transform.parameters()))

    names = [n for n, _ in model.named_parameters()]
    leaves = {n: p.detach().clone().requires_grad_() for n, p in learner.transform.named_parameters()}

    def update(k, grads, velocities):
        out = []
        for n, g in zip(names, grads):
            key = meta.parameter_key(n)
            L, R = leaves[f"transforms.1.factors.{key}.L0"], leaves[f"transforms.1.factors.{key}.R0"]
            G = leaves[f"transforms.0.rates.{key}"][k] * g
            G = (L.T @ L) @ G.reshape(G.shape[0], -1) @ (R.T @ R)  # bias: (n, 1), R 1×1
            out.append(G.reshape(g.shape))
        velocities = out if velocities is None else [beta * v + u for v, u in zip(velocities, out)]
        return velocities, velocities

    want_total, base = hand_loop(model, batch, lrs, update)
    want = torch.autograd.grad(want_total, base + list(leaves.values()))
    assert close(got, want)


def test_stateful_transform_adapted_in_the_inner_loop_equals_the_hand_loop():
    """Chain(MetaSGD, Momentum) with adapt_transform: s ← s + α_k α_{k−1} G_{k−1} ⊙ G_k before step k
    (the velocity held fixed in the vector-Jacobian product, as documented), then m ← β m + s ⊙ G_k."""
    model = mlp()
    lrs, beta = [0.3, 0.2, 0.1], 0.6
    sgd = meta.MetaSGD()
    learner = meta.MAML(model, lr=lrs, steps=3, transform=meta.Chain(sgd, meta.Momentum(beta)),
                        adapt_transform=True)
    randomise(sgd)
    batch = tasks(2)
    total = ours(learner, batch)
    got = torch.autograd.grad(total, list(model.parameters()) + list(sgd.parameters()))

    names = [n for n, _ in model.named_parameters()]
    s0 = [sgd.scales[meta.parameter_key(n)].detach().clone().requires_grad_() for n in names]
    base = [p.detach().clone().requires_grad_() for p in model.parameters()]
    xs, ys, xq, yq = batch
    want_total = 0.0
    for i in range(xs.shape[0]):
        params, s, m, previous = base, s0, None, None
        for k, lr in enumerate(lrs):
            grads = torch.autograd.grad(SQUARED(forward(params, xs[i]), ys[i]), params, create_graph=True)
            if previous is not None:
                s = [si + lr * lrs[k - 1] * gp * g for si, gp, g in zip(s, previous, grads)]
            u = [si * g for si, g in zip(s, grads)]
            m = u if m is None else [beta * mi + ui for mi, ui in zip(m, u)]
            params = [p - lr * mi for p, mi in zip(params, m)]
            previous = grads
        want_total = want_total + SQUARED(forward(params, xq[i]), yq[i])
    want = torch.autograd.grad(want_total, base + s0)
    assert close(got, want)


# --------------------------------------------------------------------------------------------------
# Under the engine's strategies (vmap: torch.func.grad path)


@pytest.mark.parametrize("strategy, chunk", [("loop", 1), ("split", 3), ("vmap", 3), ("vmap", 2)])
@pytest.mark.parametrize("kind", ["rates", "momentum"])
def test_stateful_transforms_under_every_engine_strategy(strategy, chunk, kind):
    model = mlp()
    lrs = [0.3, 0.2, 0.1]
    transform = meta.LearnedRates() if kind == "rates" else meta.Chain(meta.MetaSGD(), meta.Momentum(0.8))
    learner = meta.MAML(model, lr=lrs, steps=3, transform=transform)
    randomise(transform)
    batch = tasks(3)
    want_total = ours(learner, batch)
    params = list(learner.parameters())
    want = torch.autograd.grad(want_total, params)
    loss, _ = Engine(learner, SQUARED, strategy=strategy, tasks_per_chunk=chunk).meta_gradient(*batch)
    assert abs(loss - float(want_total)) <= 1e-12 * abs(float(want_total))
    assert close([p.grad for p in params], want, 1e-11)


def test_learner_rebuilt_around_a_trained_rates_transform_keeps_its_steps():
    transform = meta.LearnedRates()
    meta.MAML(mlp(), lr=0.1, steps=3, transform=transform)
    again = meta.MAML(mlp(), lr=0.1, steps=5, transform=transform)  # same shapes: reused as is
    assert transform.steps == 3 and again.transform.rates["0/weight"].shape == (3,)


def test_functional_inner_loop_accepts_a_stateful_transform():
    model = mlp()
    transform = meta.Momentum(0.5).build(dict(model.named_parameters()))
    params = dict(model.named_parameters())
    xs, ys, _, _ = tasks(1)

    def fwd(p, buffers, x):
        return torch.func.functional_call(model, p, (x,))

    fast, _ = meta.inner_loop(fwd, SQUARED, params, transform, {}, xs[0], ys[0], [0.2, 0.2])
    g1 = torch.autograd.grad(SQUARED(model(xs[0]), ys[0]), list(params.values()))
    step1 = [p - 0.2 * g for p, g in zip(params.values(), g1)]
    g2 = torch.autograd.grad(SQUARED(forward(step1, xs[0]), ys[0]), step1)
    want = [p - 0.2 * (0.5 * a + b) for p, a, b in zip(step1, g1, g2)]
    assert close(list(fast.values()), want, 1e-13)


def test_verify_row_catches_rates_taken_from_the_wrong_step(monkeypatch):
    import numpy as np

    from linmaml.checks import meta as rows
    assert rows.learned_rates_vs_hand_loop(np.random.default_rng(0), 3, "squared") <= 1e-12
    original = meta.LearnedRates.step
    monkeypatch.setattr(meta.LearnedRates, "step", lambda self, g, p, s, k: original(self, g, p, s, 0))
    assert rows.learned_rates_vs_hand_loop(np.random.default_rng(0), 3, "squared") > 1e-3


def test_momentum_test_catches_a_wrong_beta(monkeypatch):
    """The hand loop is sensitive to the velocity: momentum with β applied twice is caught."""
    original = meta.Momentum.step

    def wrong(self, grads, params, state, k):
        return original(self, grads, params, {n: self.beta * v for n, v in state.items()}, k)

    monkeypatch.setattr(meta.Momentum, "step", wrong)
    with pytest.raises(AssertionError):
        test_momentum_equals_a_hand_unrolled_heavy_ball_loop(False, False)
