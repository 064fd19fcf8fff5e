"""Raghu et al.'s measurements (linmaml.benchmarks.feature_reuse) against independent computations.

* linear CKA against the HSIC form with explicit centring matrices (float64), and its invariances;
* the freezing evaluation against an inner loop written here (functional_call + autograd.grad) that
  adapts only the chosen parameters of a tiny model;
* NIL against class means and nearest-mean rules computed in NumPy;
* layer discovery on models whose classes carry no telling names.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from linmaml import meta
from linmaml.benchmarks import feature_reuse as fr
from linmaml.errors import ArgumentError, ArgumentTypeError


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC(K, L) = tr(K H L H) / (n − 1)², K = XXᵀ,
    L = YYᵀ uncentred and H = I − 11ᵀ/n the explicit centring matrix (Kornblith et al. 2019, eq. 3)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


# --- linear CKA ---------------------------------------------------------------------------------------

def test_linear_cka_matches_hsic_with_centring_matrices():
    rng = np.random.default_rng(0)
    for n, p, q in ((30, 7, 11), (12, 40, 3), (50, 5, 5)):
        x = rng.normal(size=(n, p)) + rng.normal(size=p)  # uncentred columns: the centring is tested
        y = np.tanh(x @ rng.normal(size=(p, q))) + 0.3 * rng.normal(size=(n, q))
        assert fr.linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-12, abs=1e-14)
        # torch inputs (float32 too) are read in float64
        assert fr.linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(hsic_cka(x, y), rel=1e-12)


def test_linear_cka_invariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 9))
    y = rng.normal(size=(40, 6)) + x[:, :6]
    q, _ = np.linalg.qr(rng.normal(size=(9, 9)))  # orthogonal
    assert fr.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert fr.linear_cka(x, 3.7 * x + 5.0) == pytest.approx(1.0, abs=1e-12)  # isotropic scaling, a shift
    assert fr.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    base = fr.linear_cka(x, y)
    assert fr.linear_cka(x @ q, 0.2 * y) == pytest.approx(base, rel=1e-12)
    assert fr.linear_cka(y, x) == pytest.approx(base, rel=1e-12)  # symmetric
    # not invariant to a non-isotropic scaling: the check can fail
    assert abs(fr.linear_cka(x, x * np.linspace(0.1, 10.0, 9)) - 1.0) > 1e-3


def test_linear_cka_of_independent_features_is_near_zero():
    """For independent standard normal X (n, p), Y (n, q), n ≫ p, q: ‖ỸᵀX̃‖²_F is a sum of p·q squares of
    near-normal entries of variance ≈ n, and ‖X̃ᵀX̃‖_F ≈ n√p, so CKA ≈ √(pq)/n with relative spread
    √(2/(pq)). With p = q = 5, n = 2000 the mean is ≈ 0.0025; the bound 4√(pq)/n = 0.01 is exceeded
    only if a χ²₂₅ exceeds 100 (probability < 1e-10)."""
    rng = np.random.default_rng(2)
    n, p, q = 2000, 5, 5
    values = [fr.linear_cka(rng.normal(size=(n, p)), rng.normal(size=(n, q))) for _ in range(5)]
    assert max(values) < 4 * math.sqrt(p * q) / n
    assert min(values) > 0.0


def test_linear_cka_refuses_bad_input_naming_it():
    with pytest.raises(ArgumentError) as error:
        fr.linear_cka(np.ones((5, 2)), np.ones((4, 2)))
    assert error.value.argument == "y"
    with pytest.raises(ArgumentError) as error:
        fr.linear_cka(np.ones(5), np.ones((5, 2)))
    assert error.value.argument == "x"
    with pytest.raises(ArgumentTypeError) as error:
        fr.linear_cka([[1.0, 2.0]], np.ones((1, 2)))
    assert error.value.argument == "x"
    with pytest.raises(ArgumentError):
        fr.linear_cka(np.array([[1.0], [np.nan]]), np.ones((2, 1)))
    assert fr.linear_cka(np.ones((6, 3)), np.random.default_rng(0).normal(size=(6, 2))) == 0.0  # constant side


# --- layers ---------------------------------------------------------------------------------------------

class Thing(nn.Module):
    """A conv, a norm and a nonlinearity under a name that says nothing."""

    def __init__(self, cin, cout):
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, padding=1)
        self.b = nn.BatchNorm2d(cout, track_running_stats=False)

    def forward(self, x):
        return torch.relu(self.b(self.a(x)))


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(Thing(1, 3), Thing(3, 4), nn.Flatten())
        self.out = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.out(self.trunk(x))


def test_layers_are_found_by_structure_not_class_names():
    layers = fr.network_layers(Other())
    assert [layer.name for layer in layers] == ["trunk.0", "trunk.1", "out"]
    assert layers[0].parameters == ("trunk.0.a.weight", "trunk.0.a.bias", "trunk.0.b.weight", "trunk.0.b.bias")
    assert layers[2].parameters == ("out.weight", "out.bias")
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    assert [layer.name for layer in fr.network_layers(mlp)] == ["0", "2", "4"]
    with pytest.raises(ArgumentError) as error:
        fr.network_layers(nn.Linear(3, 2))
    assert error.value.argument == "network"


def test_network_of_anil_uses_the_convnet_names():
    from linmaml.benchmarks.models import ConvNet

    net = ConvNet(ways=3, blocks=2, filters=4, image_size=8, pool="stride")
    anil = meta.ANIL(net.features, net.head, lr=0.1, steps=1)
    names = [layer.name for layer in fr.network_layers(fr.network_of(anil))]
    assert names == [layer.name for layer in fr.network_layers(net)] == ["features.block0", "features.block1", "head"]
    assert dict(fr.network_of(anil).named_parameters()).keys() == dict(net.named_parameters()).keys()


# --- adaptation of chosen parameters against a hand-written inner loop ---------------------------------------

def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_tasks(count=6, ways=3, shots=2, query=4, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(count):
        centres = 1.5 * torch.randn(ways, dim, generator=g, dtype=torch.float64)
        def draw(k):
            y = torch.arange(ways).repeat_interleave(k)
            return centres[y] + torch.randn(len(y), dim, generator=g, dtype=torch.float64), y
        x_s, y_s = draw(shots)
        x_q, y_q = draw(query)
        tasks.append((x_s, y_s, x_q, y_q))
    return tasks


def hand_adapt(model, x, y, names, lrs):
    """θ ← θ − α ∇ℓ on ``names`` only, written out: functional_call and torch.autograd.grad."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for lr in lrs:
        chosen = {n: params[n].requires_grad_() for n in names}
        loss = F.cross_entropy(functional_call(model, {**params, **chosen}, (x,)), y)
        grads = torch.autograd.grad(loss, list(chosen.values()))
        params = {**params, **{n: (chosen[n] - lr * g).detach() for n, g in zip(names, grads)}}
    return params


def test_adapt_parameters_moves_only_the_chosen_ones_as_a_hand_written_loop():
    model = tiny_model()
    x_s, y_s, _, _ = tiny_tasks(1)[0]
    names = ["2.weight", "4.weight", "4.bias"]
    lrs = [0.5, 0.3, 0.2]
    got = fr.adapt_parameters(model, x_s, y_s, names, lrs)
    want = hand_adapt(model, x_s, y_s, names, lrs)
    base = dict(model.named_parameters())
    for n in base:
        torch.testing.assert_close(got[n], want[n], rtol=1e-12, atol=1e-14)
        if n in names:
            assert not torch.equal(got[n], base[n].detach())  # it moved
        else:
            assert torch.equal(got[n], base[n].detach())  # frozen exactly
    unchanged = fr.adapt_parameters(model, x_s, y_s, [], lrs)
    assert all(torch.equal(unchanged[n], base[n].detach()) for n in base)
    with pytest.raises(ArgumentError) as error:
        fr.adapt_parameters(model, x_s, y_s, ["nope.weight"], lrs)
    assert error.value.argument == "adapted"


def test_freezing_table_against_a_hand_written_inner_loop():
    model = tiny_model(1)
    learner = meta.MAML(model, lr=0.4, steps=1)
    before = list(learner.adapted_names)
    tasks = tiny_tasks(8, seed=3)
    lrs = [0.4, 0.4, 0.4]
    rows = fr.freezing_table(learner, tasks, lrs)
    assert learner.adapted_names == before  # the learner is not touched
    layer_params = [["0.weight", "0.bias"], ["2.weight", "2.bias"], ["4.weight", "4.bias"]]
    assert [r["frozen"] for r in rows] == [[], ["0"], ["0", "2"]]
    for k, row in enumerate(rows):
        names = [n for group in layer_params[k:] for n in group]
        assert row["adapted"] == names
        want = []
        for x_s, y_s, x_q, y_q in tasks:
            params = hand_adapt(model, x_s, y_s, names, lrs)
            want.append(float((functional_call(model, params, (x_q,)).argmax(1) == y_q).double().mean()))
        np.testing.assert_array_equal(row["accuracies"], np.asarray(want))


def test_cka_before_after_against_hand_adapted_outputs():
    model = tiny_model(2)
    learner = meta.MAML(model, lr=0.4, steps=1)
    tasks = tiny_tasks(3, seed=4)
    lrs = [0.8, 0.8]
    got = fr.cka_before_after(learner, tasks, lrs)
    assert list(got) == ["0", "2", "4"]
    names = [n for n, _ in model.named_parameters()]
    for i, (x_s, y_s, x_q, _) in enumerate(tasks):
        fast = hand_adapt(model, x_s, y_s, names, lrs)
        base = {n: p.detach() for n, p in model.named_parameters()}

        def outputs(p):  # each Linear's output (the layer), written out
            h0 = x_q @ p["0.weight"].T + p["0.bias"]
            h2 = torch.tanh(h0) @ p["2.weight"].T + p["2.bias"]
            h4 = torch.tanh(h2) @ p["4.weight"].T + p["4.bias"]
            return {"0": h0, "2": h2, "4": h4}

        a, b = outputs(base), outputs(fast)
        for layer in ("0", "2", "4"):
            assert got[layer][i] == pytest.approx(hsic_cka(a[layer].numpy(), b[layer].numpy()), rel=1e-10)
    assert min(v.min() for v in got.values()) < 0.9999  # the adaptation moved something (the check can fail)
    still = fr.cka_before_after(learner, tasks, [0.0])  # a zero step changes nothing
    assert all(np.allclose(v, 1.0, atol=1e-12) for v in still.values())


# --- NIL against NumPy ----------------------------------------------------------------------------------

def numpy_nil(features_s, y_s, features_q, y_q, ways):
    means = [features_s[y_s == c].mean(axis=0) for c in range(ways)]
    cos_pred, euc_pred = [], []
    for f in features_q:
        cosines = [float(f @ m) / (np.linalg.norm(f) * np.linalg.norm(m)) for m in means]
        distances = [float(np.sqrt(((f - m) ** 2).sum())) for m in means]
        cos_pred.append(int(np.argmax(cosines)))
        euc_pred.append(int(np.argmin(distances)))
    return float(np.mean(np.asarray(cos_pred) == y_q)), float(np.mean(np.asarray(euc_pred) == y_q))


def test_nil_against_numpy_class_means():
    model = tiny_model(3)
    learner = meta.MAML(model, lr=0.4, steps=1)
    tasks = tiny_tasks(10, shots=3, query=5, seed=5)
    got = fr.nil_accuracies(learner, tasks)
    body = model[:-1]  # everything before the last Linear: what the head receives
    want = []
    with torch.no_grad():
        for x_s, y_s, x_q, y_q in tasks:
            want.append(numpy_nil(body(x_s).numpy(), y_s.numpy(), body(x_q).numpy(), y_q.numpy(), 3))
    np.testing.assert_allclose(got["cosine"], [w[0] for w in want], rtol=0, atol=0)
    np.testing.assert_allclose(got["euclidean"], [w[1] for w in want], rtol=0, atol=0)
    # the two rules disagree on some task here (the test tells them apart)
    assert not np.array_equal(got["cosine"], got["euclidean"])


def test_nil_uses_the_head_input_of_a_convnet():
    from linmaml.benchmarks.models import ConvNet

    torch.manual_seed(0)
    net = ConvNet(ways=3, blocks=2, filters=4, image_size=8, pool="stride").double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    params = {n: p.detach() for n, p in net.named_parameters()}
    with torch.no_grad():
        torch.testing.assert_close(fr.penultimate_features(net, params, x), net.features(x), rtol=0, atol=0)


# --- similarity of two networks ---------------------------------------------------------------------------

def test_network_similarity_is_one_for_a_permuted_copy_and_matches_hsic_otherwise():
    model = tiny_model(4)
    twin = copy.deepcopy(model)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # permute the first hidden layer's units: the same function, rotated features
        twin[0].weight.copy_(model[0].weight[perm])
        twin[0].bias.copy_(model[0].bias[perm])
        twin[2].weight.copy_(model[2].weight[:, perm])
    tasks = tiny_tasks(3, seed=6)
    same = fr.network_similarity(model, twin, tasks)
    assert all(np.allclose(v, 1.0, atol=1e-12) for v in same.values())
    other = tiny_model(5)
    got = fr.network_similarity(model, other, tasks)
    for i, (_, _, x_q, _) in enumerate(tasks):
        with torch.no_grad():
            a, b = model[0](x_q), other[0](x_q)
        assert got["0"][i] == pytest.approx(hsic_cka(a.numpy(), b.numpy()), rel=1e-10)
    assert got["0"].max() < 0.999
    with pytest.raises(ArgumentError) as error:
        fr.network_similarity(model, nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double(), tasks)
    assert error.value.argument == "second"


def test_nil_never_predicts_a_class_without_support_examples():
    model = tiny_model(6)
    x_s, y_s, x_q, _ = tiny_tasks(1, shots=2, query=6, seed=7)[0]
    keep = y_s != 2  # class 2 has no support example
    y_q = torch.zeros(len(x_q), dtype=torch.long)
    with torch.no_grad():
        f_s, f_q = model[:-1](x_s[keep]).numpy(), model[:-1](x_q).numpy()
    got = fr.nil_accuracies(model, [(x_s[keep], y_s[keep], x_q, y_q)], ways=3)
    means = np.stack([f_s[y_s[keep].numpy() == c].mean(axis=0) for c in (0, 1)])
    cosine = (f_q @ means.T) / np.linalg.norm(f_q, axis=1, keepdims=True) / np.linalg.norm(means, axis=1)
    euclid = np.linalg.norm(f_q[:, None, :] - means[None], axis=2)
    assert got["cosine"][0] == pytest.approx(np.mean(cosine.argmax(1) == 0), abs=0)
    assert got["euclidean"][0] == pytest.approx(np.mean(euclid.argmin(1) == 0), abs=0)


def test_freezing_a_convnet_holds_each_block_with_its_batchnorm():
    """On the benchmark ConvNet (BatchNorm folded into the first conv): row k leaves the first k blocks'
    conv and BatchNorm parameters exactly at θ, and its accuracies are those of the hand-written loop."""
    from linmaml.benchmarks.models import ConvNet

    torch.manual_seed(1)
    net = ConvNet(ways=3, blocks=2, filters=4, image_size=8, pool="stride").double()
    learner = meta.MAML(net, lr=0.5, steps=1)
    g = torch.Generator().manual_seed(2)
    tasks = [(torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(3),
              torch.randn(9, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(3).repeat(3)) for _ in range(4)]
    rows = fr.freezing_table(learner, tasks, [0.5, 0.5])
    assert [r["frozen"] for r in rows] == [[], ["features.block0"], ["features.block0", "features.block1"]]
    all_names = [n for n, _ in net.named_parameters()]
    for k, row in enumerate(rows):
        frozen = [n for n in all_names if any(n.startswith(f"features.block{i}.") for i in range(k))]
        assert row["adapted"] == [n for n in all_names if n not in frozen]
        want = []
        for x_s, y_s, x_q, y_q in tasks:
            params = hand_adapt(net, x_s, y_s, row["adapted"], [0.5, 0.5])
            for n in frozen:
                assert torch.equal(params[n], dict(net.named_parameters())[n].detach())
            got = fr.adapt_parameters(net, x_s, y_s, row["adapted"], [0.5, 0.5])
            for n in all_names:
                torch.testing.assert_close(got[n], params[n], rtol=1e-10, atol=1e-12)
            want.append(float((functional_call(net, params, (x_q,)).argmax(1) == y_q).double().mean()))
        np.testing.assert_array_equal(row["accuracies"], np.asarray(want))


def test_a_learner_with_a_learned_transform_is_refused_naming_it():
    learner = meta.MAML(tiny_model(), lr=0.4, steps=1, transform=meta.MetaSGD())
    for call in (lambda: fr.freezing_table(learner, tiny_tasks(1), [0.4]),
                 lambda: fr.cka_before_after(learner, tiny_tasks(1), [0.4])):
        with pytest.raises(ArgumentError) as error:
            call()
        assert error.value.argument == "learner"
