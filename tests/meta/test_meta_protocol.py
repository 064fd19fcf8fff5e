"""The transform protocol: ``init(named_params) -> (params, state)``, ``step(grads, params, state, k)
-> (updates, state)`` with trees keyed by the model's own parameter names.

* DESIGN.md's ten-line example, read from DESIGN.md and executed, against a hand-written loop.
* The inner loop calls ``step`` once per inner step, k = 0, 1, …, threading the state it returns.
* Checkpoints written by the code before this protocol (tests/meta/data/old_format_learners.pt, made
  by :func:`make_old_format_fixture` at linmaml main ba27142) load unchanged, with the parameters in
  the same order (optimiser state follows), and adapt to the very numbers that code computed.
"""
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from linmaml import meta

DT = torch.float64
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "data" / "old_format_learners.pt"
SQUARED = lambda out, y: ((out - y) ** 2).mean()  # noqa: E731


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)


def mlp_forward(params, x):
    """:func:`mlp` written with torch functions; params = [W1, b1, W2, b2]."""
    W1, b1, W2, b2 = params
    return torch.tanh(x @ W1.T + b1) @ W2.T + b2


def data(seed=1, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=DT), torch.randn(n, 2, generator=g, dtype=DT)


def design_example() -> dict:
    """The namespace of DESIGN.md's "Writing a transform" code block, executed."""
    text = (ROOT / "DESIGN.md").read_text(encoding="utf-8")
    section = text[text.index("## Writing a transform"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12, "DESIGN.md promises a transform in about ten lines"
    namespace = {}
    exec(compile(code, "DESIGN.md", "exec"), namespace)  # noqa: S102 -- our own documentation
    return namespace


def test_design_example_transform_equals_a_hand_written_loop_and_trains():
    TensorScale = design_example()["TensorScale"]
    model = mlp()
    learner = meta.MAML(model, lr=[0.3, 0.2], steps=2, transform=TensorScale())
    scales = [0.5, 1.5, 2.0, 0.25]
    with torch.no_grad():  # off the identity, one value per tensor
        for p, c in zip(learner.transform.parameters(), scales):
            p.fill_(c)
    assert [n for n, _ in learner.transform.named_parameters()] == ["learned.0/weight", "learned.0/bias",
                                                                       "learned.2/weight", "learned.2/bias"]
    x, y = data()
    xq, yq = data(seed=2)
    fast = learner.adapt(x, y, SQUARED)
    query = SQUARED(learner(xq, params=fast), yq)
    leaves = list(learner.transform.parameters())
    got = torch.autograd.grad(query, leaves)

    # by hand: θ ← θ − α_k c ∇θ, c a leaf of its own per tensor
    c = [torch.tensor(v, dtype=DT, requires_grad=True) for v in scales]
    params = [p.detach().requires_grad_() for p in model.parameters()]
    for lr in (0.3, 0.2):
        grads = torch.autograd.grad(SQUARED(mlp_forward(params, x), y), params, create_graph=True)
        params = [p - lr * ci * g for p, ci, g in zip(params, c, grads)]
    want = torch.autograd.grad(SQUARED(mlp_forward(params, xq), yq), c)
    for name, p in zip(["0.weight", "0.bias", "2.weight", "2.bias"], params):
        torch.testing.assert_close(fast[name], p, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(torch.stack(list(got)), torch.stack(list(want)), rtol=1e-12, atol=1e-14)

    # Adam reaches the scales through learner.parameters() and moves them
    opt = torch.optim.Adam(learner.parameters(), lr=0.01)
    opt.zero_grad()
    SQUARED(learner(xq, params=learner.adapt(x, y, SQUARED)), yq).backward()
    opt.step()
    assert all(abs(float(p) - v) > 1e-4 for p, v in zip(learner.transform.parameters(), scales))


class Recorder(meta.Transform):
    """U_k = (k + 1) · G, state = the number of steps taken so far (a tensor), recording each call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def init(self, named_params):
        return {}, torch.zeros((), dtype=DT)

    def step(self, grads, params, state, k):
        self.calls.append((k, float(state)))
        return {n: (k + 1) * g for n, g in grads.items()}, state + 1


def test_inner_loop_calls_step_once_per_step_threading_the_state():
    model = mlp()
    transform = Recorder()
    learner = meta.MAML(model, lr=[0.1, 0.2, 0.05], steps=3, transform=transform)
    x, y = data()
    fast = learner.adapt(x, y, SQUARED)
    assert transform.calls == [(0, 0.0), (1, 1.0), (2, 2.0)]
    learner.adapt(x, y, SQUARED)  # each adaptation starts from init's state again
    assert transform.calls[3:] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    params = [p.detach().requires_grad_() for p in model.parameters()]
    for k, lr in enumerate((0.1, 0.2, 0.05)):
        grads = torch.autograd.grad(SQUARED(mlp_forward(params, x), y), params, create_graph=True)
        params = [p - lr * (k + 1) * g for p, g in zip(params, grads)]
    for name, p in zip(["0.weight", "0.bias", "2.weight", "2.bias"], params):
        torch.testing.assert_close(fast[name], p, rtol=1e-13, atol=1e-14)


def test_init_is_pure_and_build_keeps_its_params():
    named = {"a.w": torch.zeros(3, 2, dtype=DT), "b": torch.zeros(4, dtype=DT)}
    kfo = meta.KFO()
    params, state = kfo.init(named)
    assert list(kfo.parameters()) == [] and state == ()
    assert set(params) == {"a.w", "b"} and set(params["a.w"]) == {"L0", "R0"}
    assert torch.equal(params["a.w"]["L0"], torch.eye(3, dtype=DT)) and params["b"]["R0"].shape == (1, 1)
    kfo.build(named)
    live = kfo.params()
    assert [n for n, _ in kfo.named_parameters()] == ["factors.a/w.L0", "factors.a/w.R0", "factors.b.L0",
                                                       "factors.b.R0"]
    assert live["a.w"]["L0"] is kfo.factors["a/w"]["L0"] and isinstance(live["a.w"]["L0"], nn.Parameter)


def test_chain_params_and_state_are_tuples_of_its_members():
    named = {"w": torch.zeros(2, 2, dtype=DT)}
    chain = meta.Chain(meta.MetaSGD(), meta.Momentum(0.5), meta.LearnedRates(steps=2)).build(named)
    params = chain.params()
    assert isinstance(params, tuple) and len(params) == 3 and params[1] == {}
    assert params[0]["w"] is chain.transforms[0].scales["w"] and params[2]["w"].shape == (2,)
    assert chain.initial_state == ((), {}, ())
    with torch.no_grad():
        chain.transforms[0].scales["w"].fill_(2.0)
        chain.transforms[2].rates["w"].copy_(torch.tensor([3.0, 5.0], dtype=DT))
    g1, g2 = torch.ones(2, 2, dtype=DT), torch.full((2, 2), 10.0, dtype=DT)
    u1, s1 = chain.step({"w": g1}, params, chain.initial_state, 0)
    u2, s2 = chain.step({"w": g2}, params, s1, 1)
    # by hand: s ⊙ G, then m_k = β m_{k−1} + ·, then r_k ·
    m1 = 2.0 * g1
    m2 = 0.5 * m1 + 2.0 * g2
    assert torch.equal(u1["w"], 3.0 * m1) and torch.equal(u2["w"], 5.0 * m2)
    assert isinstance(s2, tuple) and torch.equal(s2[1]["w"], m2)


@pytest.mark.parametrize("make", [meta.MetaSGD, meta.MetaCurvature, lambda: meta.KFO(hidden_layers=1),
                                  lambda: meta.Chain(meta.KFO(psd=False), meta.MetaSGD())])
def test_the_one_call_update_takes_the_own_params_a_tree_or_state_dict_names(make):
    named = {"a.w": torch.zeros(3, 2, dtype=DT), "b": torch.zeros(3, dtype=DT)}
    t = make().build(named)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=DT))
    grads = {n: torch.randn(v.shape, generator=g, dtype=DT) for n, v in named.items()}
    own = t.update(grads)
    by_step = t.step(grads, t.params(), t.initial_state, 0)[0]
    flat = t.update(grads, {n: 2 * p.detach() for n, p in t.named_parameters()})
    tree = t.update(grads, meta.transforms.tree_map(lambda p: 2 * p.detach(), t.params()))
    for n in named:
        assert torch.equal(own[n], by_step[n]) and torch.equal(flat[n], tree[n])
        assert not torch.allclose(flat[n], own[n])  # the given params were used, not the own ones
    with pytest.raises(ValueError, match="^grads:"):
        t.update({"a.w": torch.zeros(2, 3, dtype=DT)})


def _old_format_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(8, 3)).double()


OLD_TRANSFORMS = {
    "kfo_nonlinear": lambda: meta.KFO(hidden_layers=1),
    "metasgd": meta.MetaSGD,
    "metacurvature": meta.MetaCurvature,
    "learned_rates": lambda: meta.LearnedRates(),
    "chain": lambda: meta.Chain(meta.MetaSGD(), meta.KFO(psd=False), meta.Momentum(0.5)),
    "identity": meta.Identity,
}


def make_old_format_fixture(path=FIXTURE):
    """Write the fixture (run with PYTHONPATH at a checkout of the code before the protocol).

    Per case: the learner's and Adam's state dicts after one meta-step from randomised transform
    parameters, the order of ``learner.named_parameters()``, and the adaptation the code computed."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 3, 3, generator=gen, dtype=DT)
    y = torch.randn(4, 3, generator=gen, dtype=DT)
    cases = {}
    for name, make in OLD_TRANSFORMS.items():
        learner = meta.MAML(_old_format_model(), lr=[0.3, 0.2], steps=2, transform=make())
        with torch.no_grad():
            for p in learner.transform.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
        SQUARED(learner(x, params=learner.adapt(x, y, SQUARED)), y).backward()
        opt.step()
        fast = learner.adapt(x, y, SQUARED)
        cases[name] = {"learner": learner.state_dict(), "optimizer": opt.state_dict(),
                       "order": [n for n, _ in learner.named_parameters()],
                       "adapted": {n: v.detach() for n, v in fast.items()}}
    torch.save({"cases": cases}, path)


@pytest.mark.parametrize("case", list(OLD_TRANSFORMS))
def test_checkpoints_of_the_code_before_the_protocol_load_and_adapt_the_same(case):
    saved = torch.load(FIXTURE, weights_only=True)["cases"][case]
    learner = meta.MAML(_old_format_model(), lr=[0.3, 0.2], steps=2, transform=OLD_TRANSFORMS[case]())
    learner.load_state_dict(saved["learner"])  # strict: every key of the old format, no other
    assert [n for n, _ in learner.named_parameters()] == saved["order"]
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    opt.load_state_dict(saved["optimizer"])  # indexed by parameter order: the moments fit their parameters
    for i, p in enumerate(learner.parameters()):
        assert opt.state[p]["exp_avg"].shape == p.shape, saved["order"][i]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 3, 3, generator=gen, dtype=DT)
    y = torch.randn(4, 3, generator=gen, dtype=DT)
    fast = learner.adapt(x, y, SQUARED)
    # Bit for bit, except with KFO and Meta-Curvature: their products were reordered since (Gram
    # matrices where they save work, conv weights in a kernel-major layout: KFO._kron_stacked), the
    # same maps with float64 rounding (~1e-16 relative) of their own.
    reordered = ("kfo_nonlinear", "chain", "metacurvature")
    tolerance = dict(rtol=1e-13, atol=1e-15) if case in reordered else dict(rtol=0, atol=0)
    for name, value in saved["adapted"].items():
        torch.testing.assert_close(fast[name].detach(), value, **tolerance)
