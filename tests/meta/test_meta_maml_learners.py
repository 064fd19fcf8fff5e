"""MAML and ANIL against hand-written inner loops (torch.autograd.grad, explicit transform formulas),
finite differences for meta-gradients, and the argument checks."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from linmaml import meta
from linmaml.checks.meta import anil_vs_head_maml, loss_function, random_mlp, randomise, relative_error

DT = torch.float64
SQUARED = loss_function("squared")


def data(seed, n=6, d_in=3, d_out=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=gen, dtype=DT), torch.randn(n, d_out, generator=gen, dtype=DT)


def kfo_update(g, L, R):
    """psd KFO written out for a weight (out, in) or a bias (out,)."""
    G = g.reshape(g.shape[0], -1)
    return ((L.T @ L) @ G @ (R.T @ R)).reshape(g.shape)


def hand_adapt(model, kfo, X, Y, rates, create_graph=True, detach_grads=False):
    """Second-order KFO-MAML written directly: θ ← θ − α (LᵀL) ∇θ (RᵀR), gradients by autograd.grad."""
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    for lr in rates:
        loss = SQUARED(functional_call(model, params, (X,)), Y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
        if detach_grads:
            grads = [g.detach() for g in grads]
        new = {}
        for n, g in zip(names, grads):
            f = kfo.factors[meta.parameter_key(n)]
            new[n] = params[n] - lr * kfo_update(g, f["L0"], f["R0"])
        params = new
    return params


def test_adapt_and_meta_gradient_match_a_hand_written_loop_with_kfo_and_per_step_rates():
    torch.manual_seed(0)
    model = random_mlp(np.random.default_rng(0), 3, 4, 2)
    kfo = meta.KFO()
    rates = [0.3, 0.1, 0.2]
    learner = meta.MAML(model, lr=rates, steps=3, transform=kfo)
    randomise(kfo, np.random.default_rng(1))
    (Xs, Ys), (Xq, Yq) = data(1), data(2)

    fast = learner.adapt(Xs, Ys, SQUARED)
    ours = SQUARED(learner(Xq, params=fast), Yq)
    ours_grads = torch.autograd.grad(ours, list(learner.parameters()), retain_graph=True)
    reference = hand_adapt(model, kfo, Xs, Ys, rates)
    theirs = SQUARED(functional_call(model, reference, (Xq,)), Yq)
    theirs_grads = torch.autograd.grad(theirs, list(learner.parameters()))
    assert relative_error(list(fast.values()), list(reference.values())) < 1e-13
    assert relative_error(ours_grads, theirs_grads) < 1e-12
    # the meta-gradient really is second order: detaching the inner gradients changes it
    first = hand_adapt(model, kfo, Xs, Ys, rates, create_graph=False, detach_grads=True)
    first_grads = torch.autograd.grad(SQUARED(functional_call(model, first, (Xq,)), Yq), list(model.parameters()))
    second_grads = torch.autograd.grad(ours, list(model.parameters()))
    assert relative_error(second_grads, first_grads) > 1e-4


def test_first_order_with_kfo_matches_a_loop_with_detached_gradients():
    model = random_mlp(np.random.default_rng(3), 2, 3, 2)
    kfo = meta.KFO()
    learner = meta.MAML(model, lr=0.2, steps=3, transform=kfo, first_order=True)
    randomise(kfo, np.random.default_rng(4))
    (Xs, Ys), (Xq, Yq) = data(3, d_in=2), data(4, d_in=2)
    ours = torch.autograd.grad(SQUARED(learner(Xq, params=learner.adapt(Xs, Ys, SQUARED)), Yq),
                               list(learner.parameters()))
    reference = hand_adapt(model, kfo, Xs, Ys, [0.2] * 3, create_graph=False, detach_grads=True)
    theirs = torch.autograd.grad(SQUARED(functional_call(model, reference, (Xq,)), Yq), list(learner.parameters()))
    assert relative_error(ours, theirs) < 1e-12


def test_test_time_steps_override_and_per_step_rates():
    model = random_mlp(np.random.default_rng(5), 3, 3, 2)
    kfo = meta.KFO()
    learner = meta.MAML(model, lr=[0.3, 0.2, 0.1], steps=3, transform=kfo)
    randomise(kfo, np.random.default_rng(6))
    X, Y = data(5)
    assert learner.step_rates() == [0.3, 0.2, 0.1]
    for steps, rates in ((5, [0.3, 0.2, 0.1, 0.1, 0.1]), (2, [0.3, 0.2]), (3, [0.3, 0.2, 0.1])):
        fast = learner.adapt(X, Y, SQUARED, steps=steps)
        reference = hand_adapt(model, kfo, X, Y, rates)
        assert relative_error(list(fast.values()), list(reference.values())) < 1e-13
    for bad in (0, -2):
        with pytest.raises(ValueError, match="^steps: "):
            learner.adapt(X, Y, SQUARED, steps=bad)
    with pytest.raises(TypeError, match="^steps: "):
        learner.adapt(X, Y, SQUARED, steps=2.5)


def hand_adapt_transform(model, kfo, X, Y, rates):
    """adapt_transform=True written directly: from step 2 on, φ ← φ − α ∇_φ L_s(θ_{k−1}), where the
    derivative runs through θ_{k−1} = θ_{k−2} − α_{k−1} U(G_{k−1}; φ) (autograd on the graph)."""
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    phi = {n: (kfo.factors[meta.parameter_key(n)]["L0"], kfo.factors[meta.parameter_key(n)]["R0"]) for n in names}
    for k, lr in enumerate(rates):
        loss = SQUARED(functional_call(model, params, (X,)), Y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        if k >= 1:
            flat = [t for n in names for t in phi[n]]
            phi_grads = torch.autograd.grad(loss, flat, create_graph=True)
            it = iter(phi_grads)
            phi = {n: tuple(t - lr * next(it) for t in phi[n]) for n in names}
        params = {n: params[n] - lr * kfo_update(g, *phi[n]) for n, g in zip(names, grads)}
    return params


def test_adapt_transform_matches_a_hand_written_loop():
    model = random_mlp(np.random.default_rng(7), 2, 3, 2)
    kfo = meta.KFO()
    rates = [0.3, 0.2, 0.25, 0.1]
    learner = meta.MAML(model, lr=rates, steps=4, transform=kfo, adapt_transform=True)
    randomise(kfo, np.random.default_rng(8))
    (Xs, Ys), (Xq, Yq) = data(7, d_in=2), data(8, d_in=2)
    fast = learner.adapt(Xs, Ys, SQUARED)
    reference = hand_adapt_transform(model, kfo, Xs, Ys, rates)
    assert relative_error(list(fast.values()), list(reference.values())) < 1e-12
    ours = torch.autograd.grad(SQUARED(learner(Xq, params=fast), Yq), list(learner.parameters()))
    theirs = torch.autograd.grad(SQUARED(functional_call(model, reference, (Xq,)), Yq), list(learner.parameters()))
    assert relative_error(ours, theirs) < 1e-11
    # and adapting the transform does change the result (from the second step on)
    plain = meta.MAML(model, lr=rates, steps=4, transform=kfo).adapt(Xs, Ys, SQUARED)
    assert relative_error(list(plain.values()), list(fast.values())) > 1e-6
    one_step = [meta.MAML(model, lr=0.3, steps=1, transform=kfo, adapt_transform=flag).adapt(Xs, Ys, SQUARED)
                for flag in (False, True)]
    assert relative_error(list(one_step[0].values()), list(one_step[1].values())) == 0.0


def central_differences(loss_of, tensors, h=1e-5):
    grads = []
    for t in tensors:
        g = torch.zeros_like(t)
        for idx in np.ndindex(*t.shape):
            with torch.no_grad():
                old = t[idx].item()
                t[idx] = old + h
                up = loss_of()
                t[idx] = old - h
                down = loss_of()
                t[idx] = old
            g[idx] = (up - down) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("make,adapt_transform", [(lambda: meta.KFO(hidden_layers=1), False),
                                                  (lambda: meta.KFO(psd=False), True),
                                                  (meta.MetaCurvature, False), (meta.MetaSGD, True)])
def test_meta_gradients_reach_the_transform_and_match_finite_differences(make, adapt_transform):
    model = random_mlp(np.random.default_rng(9), 2, 2, 1)
    transform = make()
    learner = meta.MAML(model, lr=0.3, steps=2, transform=transform, adapt_transform=adapt_transform)
    randomise(transform, np.random.default_rng(10), scale=0.3)
    (Xs, Ys), (Xq, Yq) = data(9, n=4, d_in=2, d_out=1), data(10, n=4, d_in=2, d_out=1)

    def meta_loss():
        return SQUARED(learner(Xq, params=learner.adapt(Xs, Ys, SQUARED)), Yq)

    names, tensors = zip(*learner.named_parameters())
    analytic = torch.autograd.grad(meta_loss(), tensors)
    numeric = central_differences(lambda: meta_loss().item(), tensors)
    assert relative_error(analytic, numeric) < 1e-7
    transform_grads = [g for n, g in zip(names, analytic) if n.startswith("transform.")]
    assert transform_grads and sum(float(g.abs().sum()) for g in transform_grads) > 1e-3


def test_anil_equals_head_only_maml():
    rng = np.random.default_rng(11)
    for steps in (1, 2, 4):
        for loss in ("squared", "logistic"):
            assert anil_vs_head_maml(rng, steps, loss) < 1e-12


def test_anil_computes_the_features_once_per_task():
    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 4, dtype=DT)

        def forward(self, x):
            calls.append(1)
            return torch.tanh(self.linear(x))

    anil = meta.ANIL(Counting(), nn.Linear(4, 2, dtype=DT), lr=0.1, steps=5)
    X, Y = data(12)
    fast = anil.adapt(X, Y, SQUARED)
    assert len(calls) == 1
    assert set(fast) == {"weight", "bias"}
    SQUARED(anil(X, params=fast), Y).backward()
    assert anil.features.linear.weight.grad is not None


def test_head_all_and_name_lists():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)))
    assert meta.MAML(model, adapted="head").adapted_names == ["2.2.weight", "2.2.bias"]
    assert meta.MAML(model, adapted=["2.0.bias", "0.weight"]).adapted_names == ["0.weight", "2.0.bias"]
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in meta.MAML(model).adapted_names  # "all" leaves frozen parameters alone
    learner = meta.MAML(model, adapted="head", transform=meta.KFO())
    assert sorted(learner.transform.shapes) == ["2.2.bias", "2.2.weight"]
    X, Y = torch.randn(5, 3), torch.randn(5, 2)
    fast = learner.adapt(X, Y, SQUARED)
    assert list(fast) == [n for n, _ in model.named_parameters()]
    assert fast["0.bias"] is model[0].bias  # not adapted: the model's own tensor
    assert not torch.equal(fast["2.2.weight"], model[2][2].weight)


def test_the_old_keyword_adapt_still_works_and_warns():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(DeprecationWarning, match="now called 'adapted'"):
        old = meta.MAML(model, adapt="head")
    assert old.adapted_names == meta.MAML(model, adapted="head").adapted_names == ["2.weight", "2.bias"]
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="^adapt: expected 'all', 'head'"):
        meta.MAML(model, adapt="body")  # errors name the keyword the caller used
    with pytest.raises(ValueError, match="^adapt: is the old name of 'adapted'"):
        meta.MAML(model, adapted="head", adapt="head")


def test_adapted_errors_name_the_problem():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"^adapted: the model has no parameter named '0\.wieght'"):
        meta.MAML(model, adapted=["0.weight", "0.wieght"])
    with pytest.raises(ValueError, match="^adapted: expected 'all', 'head'"):
        meta.MAML(model, adapted="body")
    with pytest.raises(ValueError, match="^adapted: expected at least one"):
        meta.MAML(model, adapted=[])
    with pytest.raises(ValueError, match="^adapted: .*no nn.Linear"):
        meta.MAML(nn.Sequential(nn.Conv2d(1, 2, 3)), adapted="head")
    with pytest.raises(ValueError, match="^lr: expected 2 per-step"):
        meta.MAML(model, lr=[0.1, 0.2, 0.3], steps=2)
    with pytest.raises(ValueError, match="^steps: "):
        meta.MAML(model, steps=0)
    with pytest.raises(TypeError, match="^model: "):
        meta.MAML("model")
    with pytest.raises(TypeError, match="^transform: "):
        meta.MAML(model, transform="kfo")
    with pytest.raises(TypeError, match="^first_order: "):
        meta.MAML(model, first_order=1)
    with pytest.raises(TypeError, match="^loss_fn: "):
        meta.MAML(model).adapt(torch.randn(2, 3), torch.randn(2, 2), "mse")
    with pytest.raises(ValueError, match="^named_params: .*already built"):
        meta.MAML(nn.Linear(4, 2), transform=meta.MAML(model, transform=meta.KFO()).transform)


def test_adapt_leaves_no_state_and_the_learner_trains_model_and_transform():
    model = random_mlp(np.random.default_rng(13), 3, 4, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = meta.MAML(model, lr=0.1, steps=2, transform=meta.KFO())
    names = [n for n, _ in learner.named_parameters()]
    assert any(n.startswith("model.") for n in names) and any(n.startswith("transform.") for n in names)
    (Xs, Ys), (Xq, Yq) = data(13), data(14)
    first = learner.adapt(Xs, Ys, SQUARED)
    second = learner.adapt(Xs, Ys, SQUARED)
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    SQUARED(learner(Xq, params=first), Yq).backward()
    opt.step()
    assert all(p.grad is not None for p in learner.parameters())
    assert not torch.equal(learner.transform.factors["0/weight"]["L0"], torch.eye(4, dtype=DT))


def test_vmap_over_tasks_equals_a_loop():
    model = random_mlp(np.random.default_rng(15), 3, 4, 2)
    kfo = meta.KFO(hidden_layers=1)
    learner = meta.MAML(model, lr=0.2, steps=3, transform=kfo, adapt_transform=True)
    randomise(kfo, np.random.default_rng(16))
    gen = torch.Generator().manual_seed(17)
    xs, ys = torch.randn(4, 5, 3, generator=gen, dtype=DT), torch.randn(4, 5, 2, generator=gen, dtype=DT)

    def task_loss(x, y):
        return SQUARED(learner(x, params=learner.adapt(x, y, SQUARED)), y)

    batched = torch.func.vmap(task_loss)(xs, ys)
    looped = torch.stack([task_loss(x, y) for x, y in zip(xs, ys)])
    params = list(learner.parameters())
    assert relative_error([batched], [looped]) < 1e-14
    assert relative_error(torch.autograd.grad(batched.sum(), params), torch.autograd.grad(looped.sum(), params)) < 1e-13


def test_batchnorm_model_adapts_with_batch_statistics_and_updates_running_stats():
    torch.manual_seed(18)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    learner = meta.MAML(model, lr=0.1, steps=2, transform=meta.KFO())
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 2, (4,))
    fast = learner.adapt(x, y, nn.functional.cross_entropy)
    nn.functional.cross_entropy(learner(x, params=fast), y).backward()
    assert int(model[1].num_batches_tracked) == 3  # two inner forwards and the query forward
    assert torch.isfinite(learner.transform.factors["0/weight"]["L0"].grad).all()


# --------------------------------------------------------------------------------------------------
# The two code paths of the inner loop (plain autograd on its own, torch.func.grad under a transform)


def _adapt_under_vmap(learner, X, Y):
    """``learner.adapt`` inside ``torch.func.vmap`` over a single task: the torch.func.grad path."""
    fast = torch.func.vmap(lambda x, y: learner.adapt(x, y, SQUARED))(X[None], Y[None])
    return {n: v[0] for n, v in fast.items()}


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("transform, adapt_transform", [(None, False), ("kfo", False), ("kfo", True)])
def test_plain_autograd_path_equals_the_torch_func_path(first_order, transform, adapt_transform):
    """The same inner loop computed both ways: adapted parameters and meta-gradients (model and
    transform) agree in float64, second and first order, with and without an adapted transform."""
    model = random_mlp(np.random.default_rng(21), 3, 4, 2)
    kfo = meta.KFO(hidden_layers=1) if transform else None
    learner = meta.MAML(model, lr=[0.2, 0.1, 0.15], steps=3, transform=kfo, first_order=first_order,
                        adapt_transform=adapt_transform)
    if kfo is not None:
        randomise(kfo, np.random.default_rng(22))
    (Xs, Ys), (Xq, Yq) = data(23), data(24)
    params = list(learner.parameters())
    results = []
    for adapt in (lambda: learner.adapt(Xs, Ys, SQUARED), lambda: _adapt_under_vmap(learner, Xs, Ys)):
        fast = adapt()
        loss = SQUARED(learner(Xq, params=fast), Yq)
        results.append(([fast[n] for n in sorted(fast)],
                        torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)))
    (fast_a, grad_a), (fast_b, grad_b) = results
    assert relative_error(fast_a, fast_b) < 1e-14
    assert relative_error(grad_a, grad_b) < 1e-13


def test_first_order_builds_no_graph_for_the_inner_gradients():
    """First order on the plain path: the adapted parameters are θ − α·(constant), so their graph
    holds one subtraction per step and nothing of the support forward; the parameters that do not
    adapt (adapted='head') get no gradient from the adaptation at all."""
    model = random_mlp(np.random.default_rng(25), 3, 4, 2)
    learner = meta.MAML(model, lr=0.1, steps=2, first_order=True, adapted="head")
    Xs, Ys = data(26)
    fast = learner.adapt(Xs, Ys, SQUARED)
    head = learner.adapted_names
    for name in head:
        node, depth = fast[name].grad_fn, 0
        while node is not None and type(node).__name__ != "AccumulateGrad":
            assert type(node).__name__ == "SubBackward0"
            node, depth = node.next_functions[0][0], depth + 1
        assert depth == 2  # two steps, each θ ← θ − α·G with G constant
    body = [p for n, p in model.named_parameters() if n not in head]
    grads = torch.autograd.grad(sum(fast[n].sum() for n in head), body, allow_unused=True)
    assert all(g is None for g in grads)


def test_adapt_under_no_grad_gives_the_same_values_without_a_graph():
    model = random_mlp(np.random.default_rng(27), 3, 4, 2)
    learner = meta.MAML(model, lr=0.1, steps=3)
    Xs, Ys = data(28)
    with_graph = learner.adapt(Xs, Ys, SQUARED)
    with torch.no_grad():
        without = learner.adapt(Xs, Ys, SQUARED)
    assert all(not v.requires_grad for v in without.values())
    assert relative_error([with_graph[n] for n in with_graph], [without[n] for n in with_graph]) < 1e-15


def test_frozen_and_tied_parameters_adapt_as_a_hand_written_loop():
    """A frozen parameter named in ``adapt`` still adapts (its gradient is taken at a leaf copy),
    and a tied weight is replaced in both of its places, as functional_call does."""
    torch.manual_seed(29)
    first, second = nn.Linear(3, 3).to(DT), nn.Linear(3, 3).to(DT)
    second.weight = first.weight  # tied
    first.bias.requires_grad_(False)  # frozen
    model = nn.Sequential(first, nn.Tanh(), second)
    learner = meta.MAML(model, lr=0.3, steps=2, adapted=["0.weight", "0.bias"])
    X, Y = data(30, d_out=3)
    fast = learner.adapt(X, Y, SQUARED)
    w, b, b2 = first.weight, first.bias.detach().requires_grad_(), second.bias
    for _ in range(2):
        out = torch.tanh(X @ w.T + b) @ w.T + b2
        g_w, g_b = torch.autograd.grad(SQUARED(out, Y), [w, b], create_graph=True)
        w, b = w - 0.3 * g_w, b - 0.3 * g_b
    assert relative_error([fast["0.weight"], fast["0.bias"]], [w, b]) < 1e-14
    Xq, Yq = data(31, d_out=3)
    out = torch.tanh(Xq @ w.T + b) @ w.T + b2
    expected = torch.autograd.grad(SQUARED(out, Yq), [first.weight, second.bias])
    got = torch.autograd.grad(SQUARED(learner(Xq, params=fast), Yq), [first.weight, second.bias])
    assert relative_error(got, expected) < 1e-13


def test_parameters_are_put_back_when_the_forward_fails():
    model = random_mlp(np.random.default_rng(32), 3, 4, 2)
    learner = meta.MAML(model, lr=0.1, steps=1)
    originals = {n: p for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError):
        learner.adapt(torch.randn(5, 7, dtype=DT), torch.randn(5, 2, dtype=DT), SQUARED)  # wrong width
    assert all(p is originals[n] and isinstance(p, nn.Parameter) for n, p in model.named_parameters())
