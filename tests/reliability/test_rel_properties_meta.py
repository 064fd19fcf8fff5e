"""Property-based tests (hypothesis) of ``linmaml.meta``: bad input never crashes.

Random small models (stacks of ``nn.Linear`` with ReLU/Tanh between them, widths 1–4), random
transforms with perturbed (non-identity) parameters, learning rates (0, negative, huge, NaN, ±∞,
per-step lists of the wrong length), step counts, adapted-parameter choices and flags. Every call
must either

* agree with an independent computation: a hand-written inner loop with plain
  ``torch.autograd.grad`` (no ``torch.func``), a hand-written forward pass and hand-written
  transform updates, for the adapted parameters and for the meta-gradients of the query loss with
  respect to the model's and the transform's parameters; or
* raise ``ValueError``/``TypeError`` whose message starts with the name of an argument that is
  actually wrong (computed here from the input).

Divergence policy for ``linmaml.meta`` (differs from the closed forms, on purpose): the learners
are differentiable building blocks that run under ``torch.func.vmap`` and ``torch.compile`` and on
GPUs without host synchronisation, so they never inspect values. A negative rate is accepted
(gradient ascent; Meta-SGD learns signed rates anyway). A diverging inner loop gives what IEEE
arithmetic gives; the test checks that a non-finite value appears only where the independent
computation also overflows (or is astronomically large), i.e. that nothing is hidden or invented.
The guard against non-finite training lives in ``linmaml.benchmarks.train`` (``--on-nonfinite``),
which stops and names the iteration and the parameter.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings, strategies as st
from torch import nn

from linmaml import meta

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
HUGE = 1e250
DTYPE = torch.float64

VALID_RATES = [0.0, 0.05, 0.3, 1.0, -0.1, -1.0, 1e3, 1e10, 1e200]
INVALID_RATES = [math.nan, math.inf, -math.inf]
rate = st.one_of(st.floats(-1.0, 1.0), st.sampled_from(VALID_RATES), st.sampled_from(INVALID_RATES),
                 st.floats(allow_nan=True, allow_infinity=True))
BAD_STEPS = [0, -1, 2.0, "2", True]
steps_strategy = st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.sampled_from(BAD_STEPS))


valid_rate = st.one_of(st.floats(-1.0, 1.0), st.sampled_from(VALID_RATES))


@st.composite
def rates_and_steps(draw, valid=False):
    """(lr, steps); ``valid``: only valid ones (extremes included), else mostly valid."""
    steps = draw(st.integers(1, 3) if valid else steps_strategy)
    shape = draw(st.sampled_from(["number", "list"] if valid else ["number", "number", "list", "wrong-length"]))
    one = valid_rate if valid else rate
    if shape == "number":
        return draw(one), steps
    length = steps if shape == "list" and isinstance(steps, int) and steps > 0 else draw(st.integers(0, 4))
    return draw(st.lists(one, min_size=length, max_size=length)), steps
TRANSFORMS = ["identity", "metasgd", "kfo", "kfo-plain", "metacurvature", "chain", "not-a-transform"]


# --------------------------------------------------------------------------------------------------
# The independent computation: hand forward, hand transforms, plain autograd loop


def build_model(sizes, activations, seed):
    torch.manual_seed(seed)
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(d_in, d_out).to(DTYPE))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh() if activations[i] else nn.ReLU())
    return nn.Sequential(*layers)


def hand_forward(model, params, x):
    """The Sequential's forward written out with the parameters ``params`` (name -> tensor)."""
    for index, module in enumerate(model):
        if isinstance(module, nn.Linear):
            x = x @ params[f"{index}.weight"].T + params[f"{index}.bias"]
        else:
            x = torch.tanh(x) if isinstance(module, nn.Tanh) else torch.clamp(x, min=0.0)
    return x


def make_transform(kind):
    return {"identity": meta.Identity, "metasgd": meta.MetaSGD, "kfo": lambda: meta.KFO(psd=True),
            "kfo-plain": lambda: meta.KFO(psd=False), "metacurvature": meta.MetaCurvature,
            "chain": lambda: meta.Chain(meta.MetaSGD(), meta.KFO()), "not-a-transform": lambda: "kfo"}[kind]()


def hand_update(kind, name, g, tp, prefix=""):
    """U(G) for one parameter, written from the transforms' definitions (column view for biases)."""
    key = name.replace(".", "/")
    if kind == "identity":
        return g
    if kind == "metasgd":
        return tp[f"{prefix}scales.{key}"] * g
    if kind == "chain":
        return hand_update("kfo", name, hand_update("metasgd", name, g, tp, "transforms.0."), tp, "transforms.1.")
    view = g.reshape(-1, 1) if g.ndim == 1 else g
    if kind in ("kfo", "kfo-plain"):
        L, R = tp[f"{prefix}factors.{key}.L0"], tp[f"{prefix}factors.{key}.R0"]
        if kind == "kfo":
            L, R = L.T @ L, R.T @ R
        return (L @ view @ R).reshape(g.shape)
    out = tp[f"{prefix}mats.{key}.out"] @ view
    if g.ndim == 2:
        out = out @ tp[f"{prefix}mats.{key}.in"]
    return out.reshape(g.shape)


def hand_adapt(model, names, kind, tparams, x, y, loss_fn, rates, first_order):
    params = dict(model.named_parameters())
    fast = {n: params[n] for n in names}
    for lr in rates:
        current = {**params, **fast}
        loss = loss_fn(hand_forward(model, current, x), y)
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
        fast = {n: fast[n] - lr * hand_update(kind, n, g.detach() if first_order else g, tparams)
                for n, g in zip(names, grads)}
    return {**params, **fast}


def mse(output, target):
    return ((output - target) ** 2).mean()


# --------------------------------------------------------------------------------------------------
# Helpers


def call(function, *args, **kwargs):
    try:
        return function(*args, **kwargs), None
    except (ValueError, TypeError) as error:
        return None, error


def problems(lr, steps) -> set[str]:
    if isinstance(steps, bool) or not isinstance(steps, int):
        return {"steps"}
    if steps < 1:
        return {"steps"}
    if isinstance(lr, list):
        return {"lr"} if len(lr) != steps or not all(math.isfinite(r) for r in lr) else set()
    return set() if math.isfinite(lr) else {"lr"}


def blows_up(tensors) -> bool:
    return any(not bool(torch.isfinite(t).all()) or (t.numel() and float(t.abs().max()) > HUGE) for t in tensors)


def compare(ours, reference, rates):
    """Equal where the computation is tame; otherwise a non-finite value only beside a blown-up reference."""
    ours = [t.detach() for t in ours]
    reference = [t.detach() for t in reference]
    if blows_up(reference) or any(abs(r) > 10 for r in rates):
        event("large rates or divergence: non-finite only where the reference blows up")
        if not all(bool(torch.isfinite(t).all()) for t in ours):
            assert blows_up(reference)
        return
    event("finite, equal to the hand-written loop")
    for a, b in zip(ours, reference):
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------------------------------
# MAML with transforms


@st.composite
def maml_case(draw, valid=False):
    depth = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 4)) for _ in range(depth + 1)]
    activations = [draw(st.booleans()) for _ in range(depth)]
    return dict(sizes=sizes, activations=activations, seed=draw(st.integers(0, 2**16)),
                transform=draw(st.sampled_from(TRANSFORMS[:-1] if valid else TRANSFORMS)),
                adapt=draw(st.sampled_from(["all", "all", "head", "first"] + ([] if valid else
                                                                             ["unknown", "empty", "not-a-list"]))),
                n=draw(st.integers(1, 5)))


def resolve_adapt(choice, model):
    names = [n for n, _ in model.named_parameters()]
    return {"all": "all", "head": "head", "first": names[:2], "unknown": ["no.such.parameter"], "empty": [],
            "not-a-list": 3}[choice]


def maml_problems(case, lr, steps) -> set[str]:
    """Names to blame when a MAML learner is built from ``case`` with ``lr`` and ``steps``."""
    wrong = problems(lr, steps)
    if case["transform"] == "not-a-transform":
        wrong.add("transform")
    if case["adapt"] in ("unknown", "empty", "not-a-list"):
        wrong.add("adapted")
    return wrong


@PROPERTY
@given(case=maml_case(valid=True), lr_steps=rates_and_steps(valid=True), first_order=st.booleans())
@example(case=dict(sizes=[3, 4, 2], activations=[True, True], seed=1, transform="kfo", adapt="all", n=4),
         lr_steps=(1e200, 2), first_order=False)
@example(case=dict(sizes=[3, 4, 2], activations=[False, False], seed=1, transform="metacurvature", adapt="head", n=4),
         lr_steps=([0.1, -0.2], 2), first_order=False)
@example(case=dict(sizes=[2, 2], activations=[True], seed=3, transform="chain", adapt="first", n=3),
         lr_steps=(0.3, 3), first_order=True)
def test_maml_adapts_and_differentiates_like_a_hand_written_loop(case, lr_steps, first_order, assert_names):
    lr, steps = lr_steps
    model = build_model(case["sizes"], case["activations"], case["seed"])
    transform = make_transform(case["transform"])
    adapt = resolve_adapt(case["adapt"], model)
    learner, error = call(meta.MAML, model, lr=lr, steps=steps, transform=transform, first_order=first_order,
                          adapted=adapt)
    wrong = maml_problems(case, lr, steps)
    if wrong:
        assert_names(error, wrong)
        return
    assert error is None, error
    with torch.no_grad():  # leave the identity: every transform parameter matters
        for p in learner.transform.parameters():
            p.add_(0.2 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["n"], case["sizes"][0], generator=gen, dtype=DTYPE)
    y = torch.randn(case["n"], case["sizes"][-1], generator=gen, dtype=DTYPE)
    xq = torch.randn(case["n"], case["sizes"][0], generator=gen, dtype=DTYPE)
    yq = torch.randn(case["n"], case["sizes"][-1], generator=gen, dtype=DTYPE)

    fast = learner.adapt(x, y, mse)
    query = mse(learner(xq, params=fast), yq)
    leaves = list(learner.parameters())
    grads = torch.autograd.grad(query, leaves, allow_unused=True)

    tparams = dict(learner.transform.named_parameters())
    rates = lr if isinstance(lr, list) else [lr] * steps
    expected = hand_adapt(model, learner.adapted_names, case["transform"], tparams, x, y, mse, rates, first_order)
    expected_query = mse(hand_forward(model, expected, xq), yq)
    expected_grads = torch.autograd.grad(expected_query, leaves, allow_unused=True)
    zero = lambda g, p: torch.zeros_like(p) if g is None else g  # noqa: E731
    compare([fast[n] for n in expected] + [query] + [zero(g, p) for g, p in zip(grads, leaves)],
            [expected[n] for n in expected] + [expected_query] + [zero(g, p) for g, p in zip(expected_grads, leaves)],
            rates)


@PROPERTY
@given(case=maml_case(), lr_steps=rates_and_steps())
def test_maml_refuses_bad_arguments_naming_them(case, lr_steps, assert_names):
    lr, steps = lr_steps
    model = build_model(case["sizes"], case["activations"], case["seed"])
    learner, error = call(meta.MAML, model, lr=lr, steps=steps, transform=make_transform(case["transform"]),
                          adapted=resolve_adapt(case["adapt"], model))
    wrong = maml_problems(case, lr, steps)
    if wrong:
        assert_names(error, wrong)
    else:
        event("accepted")
        assert error is None and isinstance(learner, meta.MAML)


@PROPERTY
@given(case=maml_case(), lr_steps=rates_and_steps(), test_steps=steps_strategy)
def test_test_time_steps_and_the_anil_head_loop(case, lr_steps, test_steps, assert_names):
    lr = lr_steps[0] if not isinstance(lr_steps[0], list) else (lr_steps[0] + [0.1, 0.1])[:2]
    torch.manual_seed(case["seed"])
    sizes = case["sizes"] + [2] if len(case["sizes"]) < 3 else case["sizes"]
    features = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh()).to(DTYPE)
    head = nn.Linear(sizes[1], sizes[-1]).to(DTYPE)
    learner, error = call(meta.ANIL, features, head, lr=lr, steps=2)
    wrong = problems(lr, 2)
    if wrong:
        assert_names(error, wrong)
        return
    x = torch.randn(case["n"], sizes[0], dtype=DTYPE)
    y = torch.randn(case["n"], sizes[-1], dtype=DTYPE)
    fast, error = call(learner.adapt, x, y, mse, steps=test_steps)
    if problems(0.1, test_steps):
        assert_names(error, {"steps"})
        return
    assert error is None, error
    rates = learner.step_rates(test_steps)
    # Per-step rates: a longer test-time run repeats the last one (MAML's documented rule).
    base = lr if isinstance(lr, list) else [lr] * 2
    assert rates == [base[min(k, 1)] for k in range(test_steps)]
    z = features(x).detach()
    weight, bias = head.weight, head.bias
    for r in rates:
        loss = mse(z @ weight.T + bias, y)
        gw, gb = torch.autograd.grad(loss, [weight, bias], create_graph=True)
        weight, bias = weight - r * gw, bias - r * gb
    compare([fast["weight"], fast["bias"]], [weight, bias], rates)


# --------------------------------------------------------------------------------------------------
# Arguments of the learners, transforms and LinNet


@settings(max_examples=50, deadline=None, derandomize=True)
@given(x_kind=st.sampled_from(["tensor", "tensor", "numpy", "list", "none"]),
       loss_kind=st.sampled_from(["mean", "mean", "per-example", "float", "not-callable"]),
       flag=st.sampled_from([False, True, False, True, False, True, 0, 1, "yes", None]))
def test_learner_arguments_name_themselves(x_kind, loss_kind, flag, assert_names):
    model = nn.Linear(3, 2).to(DTYPE)
    learner, error = call(meta.MAML, model, lr=0.1, steps=1, first_order=flag)
    if not isinstance(flag, bool):
        assert_names(error, {"first_order"})
        return
    x = torch.randn(4, 3, dtype=DTYPE)
    value = {"tensor": x, "numpy": x.numpy(), "list": x.tolist(), "none": None}[x_kind]
    loss_fn = {"mean": mse, "per-example": lambda o, t: ((o - t) ** 2).sum(dim=1), "float": lambda o, t: 1.0,
               "not-callable": 3}[loss_kind]
    fast, error = call(learner.adapt, value, torch.zeros(4, 2, dtype=DTYPE), loss_fn)
    wrong = set()
    if loss_kind == "not-callable":
        wrong.add("loss_fn")
    if x_kind != "tensor":
        wrong.add("x_support")
    if loss_kind in ("per-example", "float"):
        wrong.add("loss_fn")
    if wrong:
        assert_names(error, wrong)
    else:
        assert error is None and set(fast) == {"weight", "bias"}

def every_transform_at(*shapes):
    """``@example`` rows: each transform on each shape, so the hand comparison always runs."""
    def decorate(test):
        for kind in ("metasgd", "kfo", "kfo-plain", "metacurvature", "chain"):
            for shape in shapes:
                test = example(shape=list(shape), kind=kind, hidden=0, seed=1)(test)
        return example(shape=[2, 3, 2, 2], kind="kfo", hidden=1, seed=2)(test)
    return decorate


@settings(max_examples=60, deadline=None, derandomize=True)
@given(shape=st.lists(st.integers(1, 3), min_size=0, max_size=4),
       kind=st.sampled_from(["metasgd", "kfo", "kfo-plain", "metacurvature", "chain"]),
       hidden=st.sampled_from([0, 0, 1, -1, 1.5]), seed=st.integers(0, 2**16))
@every_transform_at((3, 2), (3,), ())
def test_transforms_serve_every_parameter_shape_or_name_it(shape, kind, hidden, seed, assert_names):
    torch.manual_seed(seed)
    param = nn.Parameter(torch.randn(tuple(shape), dtype=DTYPE))
    if kind.startswith("kfo"):
        transform, error = call(meta.KFO, psd=(kind == "kfo"), hidden_layers=hidden)
        if not (isinstance(hidden, int) and hidden >= 0):
            assert_names(error, {"hidden_layers"})
            return
    else:
        transform = make_transform(kind)
    built, error = call(transform.build, {"p.w": param})
    if len(shape) == 0 and kind != "metasgd":
        assert_names(error, {"p.w"})  # a 0-d parameter has no matrix view; the message names it
        return
    assert error is None, error
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(0.2 * torch.randn_like(p))
    g = torch.randn(tuple(shape), dtype=DTYPE)
    update = transform({"p.w": g})["p.w"]
    assert update.shape == g.shape and bool(torch.isfinite(update).all())
    tp = dict(transform.named_parameters())
    if len(shape) <= 2 and (hidden == 0 or not kind.startswith("kfo")):  # the hand views cover ≤ 2-d
        torch.testing.assert_close(update, hand_update(kind, "p.w", g, tp), rtol=1e-12, atol=1e-12)
    _, error = call(transform, {"p.w": torch.randn((*shape, 2), dtype=DTYPE)})
    assert_names(error, {"grads"})
    _, error = call(transform, {"other": g})
    assert_names(error, {"grads"})


@settings(max_examples=40, deadline=None, derandomize=True)
@given(out=st.integers(1, 4), layers=st.sampled_from([1, 2, 3, 1, 2, 3, 0, -1, 2.0, "2"]),
       width=st.sampled_from([None, "out", "out+1", "out-1", 0, "x"]), seed=st.integers(0, 2**16))
def test_linnet_is_the_identity_at_init_and_a_product_of_maps(out, layers, width, seed, assert_names):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, out), nn.Tanh(), nn.Linear(out, out)).to(DTYPE)
    width_value = {"out": out, "out+1": out + 1, "out-1": out - 1}.get(width, width)
    net, error = call(meta.LinNet, model, layers=layers, width=width_value)
    wrong = set()
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        wrong.add("layers")
    if width_value is not None and (not isinstance(width_value, int) or width_value < out):
        wrong.add("width")
    if wrong:
        assert_names(error, wrong)
        return
    assert error is None, error
    x = torch.randn(5, 3, dtype=DTYPE)
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
    with torch.no_grad():
        for linear in net.linear:
            linear.weight.add_(0.3 * torch.randn_like(linear.weight))
    product = torch.eye(out, dtype=DTYPE)
    for linear in net.linear:
        product = linear.weight @ product
    torch.testing.assert_close(net(x), model(x) @ product.T, rtol=1e-12, atol=1e-12)
