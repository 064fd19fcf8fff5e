"""linmaml.benchmarks.layerwise (the measurement of ``linmaml analyze``) against direct computations.

* CKA against the HSIC formula with explicit centring matrices, and its invariances (orthogonal
  transforms, isotropic scaling) as property tests;
* per-tensor relative updates, per-block CKA and ablation accuracies of a tiny float64 CNN against
  a hand-written adaptation loop and a hand-written block-by-block forward pass;
* the bottom-layer preconditioner of a deep linear net against its closed form
  Θ = (X RᵀR Xᵀ) ⊗ (W₂ LᵀL W₂ᵀ) (R = L = I for plain MAML);
* every algo × transform of ``linmaml train`` runs through the analysis.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from linmaml import meta
from linmaml.benchmarks import layerwise as A
from linmaml.benchmarks.learners import ALGOS, CLOSED_FORM_ALGOS, TRANSFORMS, build_learner
from linmaml.benchmarks.models import ConvNet


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC(K, L) = tr(K H L H) / (n − 1)², H = I − 11ᵀ/n."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_matches_the_hsic_formula():
    rng = np.random.default_rng(0)
    for n, p, q in ((10, 3, 7), (25, 40, 5), (6, 6, 6)):
        x = rng.normal(size=(n, p)) + rng.normal(size=p)  # non-zero column means: centring matters
        y = x[:, :min(p, q)] @ rng.normal(size=(min(p, q), q)) + 0.5 * rng.normal(size=(n, q))
        assert A.linear_cka(torch.tensor(x), torch.tensor(y)) == pytest.approx(hsic_cka(x, y), rel=1e-10)


def test_cka_of_independent_features_is_small_and_of_equal_features_one():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3))
    assert A.linear_cka(torch.tensor(x), torch.tensor(x)) == pytest.approx(1.0, abs=1e-12)
    # E[CKA] of independent Gaussians ~ p·q / n-ish: far below 1.
    assert A.linear_cka(torch.tensor(x), torch.tensor(y)) < 0.02


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 30), p=st.integers(1, 12), scale=st.floats(1e-3, 1e3))
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(seed, n, p, scale):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, 5))) + rng.normal(size=(n, 5))
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    reference = hsic_cka(x, y)
    assert A.linear_cka(torch.tensor(x @ q), torch.tensor(y)) == pytest.approx(reference, rel=1e-8, abs=1e-12)
    assert A.linear_cka(torch.tensor(scale * x), torch.tensor(y)) == pytest.approx(reference, rel=1e-8, abs=1e-12)
    assert A.linear_cka(torch.tensor(x), torch.tensor(scale * x @ q)) == pytest.approx(1.0, rel=1e-8)


def test_cka_refuses_bad_shapes():
    with pytest.raises(ValueError, match="^x:"):
        A.linear_cka(torch.zeros(3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="^y:"):
        A.linear_cka(torch.zeros(3, 2), torch.zeros(4, 2))


class Task:
    """A synthetic episode: 5-way 1-shot support, 3 queries per class, images (1, 8, 8)."""

    def __init__(self, seed, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.xs = torch.randn(5, 1, 8, 8, generator=g, dtype=dtype)
        self.ys = torch.arange(5)
        self.xq = self.xs.repeat(3, 1, 1, 1) + 0.8 * torch.randn(15, 1, 8, 8, generator=g, dtype=dtype)
        self.yq = torch.arange(5).repeat(3)

    def to_torch(self, device=None, dtype=None):
        return self.xs, self.ys, self.xq, self.yq


def direct_adapt(model, params, names, xs, ys, lrs):
    """The plain inner loop by hand: θ ← θ − α ∇θ CE(f(xs; θ), ys) on the tensors ``names`` only."""
    params = {n: p.detach().clone() for n, p in params.items()}
    for lr in lrs:
        chosen = {n: params[n].requires_grad_(True) for n in names}
        loss = F.cross_entropy(torch.func.functional_call(model, params, (xs,)), ys)
        grads = torch.autograd.grad(loss, list(chosen.values()))
        params = {n: p.detach() for n, p in params.items()}
        for n, g in zip(names, grads):
            params[n] = params[n] - lr * g
    return params


def direct_block_outputs(model, params, x):
    """Each conv block's and the head's outputs, by calling the blocks one after another."""
    outputs = {}
    for i in range(model.config["blocks"]):
        prefix = f"features.block{i}."
        block = getattr(model.features, f"block{i}")
        x = torch.func.functional_call(block, {n[len(prefix):]: v for n, v in params.items() if n.startswith(prefix)},
                                       (x,))
        outputs[f"features.block{i}"] = x.flatten(1).numpy()
    logits = torch.func.functional_call(model.head, {"weight": params["head.weight"], "bias": params["head.bias"]},
                                        (x.flatten(1),))
    outputs["head"] = logits.numpy()
    return outputs, logits


def test_per_layer_numbers_match_a_direct_computation():
    torch.manual_seed(3)
    model = ConvNet(in_channels=1, ways=5, blocks=2, filters=4, image_size=8, pool="max").double()
    with torch.no_grad():  # move BatchNorm's affine parameters off their (1, 0) start: nonzero norms
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    lrs = [0.5, 0.3]
    learner = meta.MAML(model, lr=lrs, steps=2)
    tasks = [Task(s) for s in range(5)]
    result = A.analyze_learner(learner, tasks, steps=2, spectrum_tasks=0)

    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = list(base)
    rel = {n: [] for n in names}
    cka = {b: [] for b in ("features.block0", "features.block1", "head")}
    subsets = {"all": names, "head": ["head.weight", "head.bias"],
               "all but head": [n for n in names if not n.startswith("head.")],
               "features.block0": [n for n in names if n.startswith("features.block0.")],
               "features.block1": [n for n in names if n.startswith("features.block1.")]}
    correct = {label: [] for label in [*subsets, "none"]}
    for task in tasks:
        xs, ys, xq, yq = task.to_torch()
        with torch.no_grad():
            before, logits0 = direct_block_outputs(model, base, xq)
        correct["none"].append(float((logits0.argmax(1) == yq).double().mean()))
        for label, chosen in subsets.items():
            fast = direct_adapt(model, base, chosen, xs, ys, lrs)
            with torch.no_grad():
                after, logits = direct_block_outputs(model, fast, xq)
            correct[label].append(float((logits.argmax(1) == yq).double().mean()))
            if label == "all":
                for n in names:
                    rel[n].append(float(torch.linalg.norm(fast[n] - base[n]) / torch.linalg.norm(base[n])))
                for b in cka:
                    cka[b].append(hsic_cka(before[b], after[b]))

    layers = {row["name"]: row for row in result["layers"]}
    assert list(layers) == names
    for n in names:
        assert layers[n]["relative_update"] == pytest.approx(np.mean(rel[n]), rel=1e-9, abs=1e-15)
        block = "head" if n.startswith("head.") else n.rsplit(".", 2)[0]
        assert layers[n]["cka"] == pytest.approx(np.mean(cka[block]), rel=1e-9)
    # The conv bias is structurally frozen by the BatchNorm after it; the head moves most.
    assert layers["features.block0.conv.bias"]["relative_update"] < 1e-12
    assert layers["head.weight"]["relative_update"] > layers["features.block0.conv.weight"]["relative_update"]
    rows = {row["label"]: row for row in result["ablation"]}
    assert set(rows) == set(correct)
    for label, values in correct.items():
        values = 100 * np.asarray(values)
        assert rows[label]["accuracy"] == pytest.approx(values.mean(), abs=1e-9)
        assert rows[label]["ci95"] == pytest.approx(1.959963984540054 * values.std(ddof=1) / np.sqrt(values.size),
                                                    abs=1e-9)
        assert rows[label]["adapted"] == (subsets.get(label, []))


@pytest.mark.parametrize("use_kfo", [False, True])
def test_bottom_preconditioner_of_a_deep_linear_net_matches_its_closed_form(use_kfo):
    torch.manual_seed(5)
    d0, d1, d2, n = 4, 3, 5, 6
    model = nn.Sequential(nn.Linear(d0, d1, bias=False), nn.Linear(d1, d2, bias=False)).double()
    transform = meta.KFO() if use_kfo else None
    learner = meta.MAML(model, lr=0.1, steps=1, transform=transform)
    if use_kfo:
        with torch.no_grad():
            for p in learner.transform.parameters():
                p.add_(0.4 * torch.randn_like(p))
    x = torch.randn(n, d0, dtype=torch.float64)
    out = A.bottom_preconditioner(learner, x)
    assert out["parameter"] == "0.weight"
    X, W2 = x.numpy(), model[1].weight.detach().numpy()
    if use_kfo:
        left, right = (m.detach().numpy() for m in learner.transform.preconditioners("0.weight"))
    else:
        left, right = np.eye(d1), np.eye(d0)
    # logits flattened (example, output), so Θ = (X RᵀR Xᵀ) ⊗ (W₂ LᵀL W₂ᵀ) in that order.
    theta = np.kron(X @ right @ X.T, W2 @ left @ W2.T)
    plain = np.kron(X @ X.T, W2 @ W2.T)
    np.testing.assert_allclose(out["eigenvalues"], np.sort(np.linalg.eigvalsh(theta))[::-1], atol=1e-10 * theta.max())
    np.testing.assert_allclose(out["eigenvalues_plain"], np.sort(np.linalg.eigvalsh(plain))[::-1],
                               atol=1e-10 * plain.max())
    summary = A.summarize_spectra(learner, [out])
    if use_kfo:
        np.testing.assert_allclose(summary["kfo_left"], np.sort(np.linalg.eigvalsh(left))[::-1], rtol=1e-10)
        np.testing.assert_allclose(summary["kfo_right"], np.sort(np.linalg.eigvalsh(right))[::-1], rtol=1e-10)
    else:
        assert "kfo_left" not in summary


@pytest.mark.parametrize("algo", sorted(CLOSED_FORM_ALGOS))
def test_a_closed_form_learner_is_refused_by_name(algo):
    """ProtoNet and R2-D2 compute their head in closed form: there is no inner loop to analyse."""
    from linmaml.errors import ArgumentError

    learner = build_learner(image_shape=(1, 8, 8), ways=5, algo=algo, transform="none", layers=2, hidden=4,
                            pool="max", inner_lr=0.4, steps=1, linnet=0)
    with pytest.raises(ArgumentError) as caught:
        A.analyze_learner(learner, [Task(s) for s in range(3)], steps=2, spectrum_tasks=1)
    assert caught.value.argument == "learner" and "no inner loop" in str(caught.value)


@pytest.mark.parametrize("algo", [a for a in ALGOS if a not in CLOSED_FORM_ALGOS])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_algo_and_transform_runs(algo, transform):
    torch.manual_seed(0)
    learner = build_learner(image_shape=(1, 8, 8), ways=5, algo=algo, transform=transform, layers=2, hidden=4,
                            pool="max", inner_lr=0.4, steps=1, linnet=1 if transform == "none" else 0)
    learner = learner.double()
    result = A.analyze_learner(learner, [Task(s) for s in range(3)], steps=2, spectrum_tasks=1)
    labels = [row["label"] for row in result["ablation"]]
    assert labels[0] == "all" and labels[-1] == "none"
    if algo == "anil":  # only the head adapts: its features are exactly reused
        assert labels == ["all", "none"]
        assert all(b["cka"] == pytest.approx(1.0) for b in result["blocks"] if "block" in b["name"])
        assert result["preconditioner"]["parameter"].startswith("head.")
    else:
        assert {"head", "all but head", "features.block0", "features.block1"} <= set(labels) or \
               {"head", "all but head", "model.features.block0", "model.features.block1"} <= set(labels)
    assert ("kfo_left" in result["preconditioner"]) == (transform == "kfo")
    for row in result["layers"]:
        assert set(row) >= {"name", "relative_update", "cka"}


def test_the_drawing_keeps_the_tallest_bar_and_says_the_run_in_words(monkeypatch, tmp_path):
    """analyze.png / layers.png: the tallest update bar (the head's, 2.7 in the README's run) is inside
    the axes, rotated labels end under their bars, and the title is words, not "maml none"."""
    from linmaml.plots import figure
    from linmaml.plots import layerwise as analyze

    drawn = {}
    monkeypatch.setattr(figure, "save_figure", lambda fig, path, **kw: drawn.setdefault("fig", fig))
    layers = [{"name": f"features.block{i}.conv.weight", "adapted": True, "relative_update": 0.01 * (i + 1)}
              for i in range(3)] + [{"name": "head.weight", "adapted": True, "relative_update": 2.7}]
    result = {"layers": layers, "blocks": [{"name": "head", "cka": 0.3}],
              "ablation": [{"label": "all", "accuracy": 97.0, "ci95": 0.5}, {"label": "none", "accuracy": 20.0,
                                                                           "ci95": 0.9}],
              "preconditioner": None, "tasks": 600, "steps": 3,
              "settings": {"algo": "maml", "transform": "none", "layers": 4, "hidden": 64, "linnet": 0}}
    analyze.draw(result, tmp_path / "a.png")
    fig = drawn["fig"]
    updates = fig.axes[0]
    assert updates.get_ylim()[1] > 2.7
    assert all(label.get_ha() == "right" for label in updates.get_xticklabels())
    title = fig._suptitle.get_text()
    assert "maml none" not in title and title.startswith("second-order MAML") and "plain gradient inner step" in title
    assert "3 inner steps" in title and "1 inner steps" not in analyze.describe_run({**result, "steps": 1})


def test_a_subset_adapts_as_a_hand_written_loop_and_the_learner_is_unchanged():
    """``Engine(adapted=...)`` (what the ablation runs): only the named tensors take inner steps,
    the others stay at θ; checked against a hand-written loop, with per-step rates and a learned
    per-parameter rate (Meta-SGD, U(g) = a ⊙ g); the learner's own adapted names do not change."""
    from linmaml.errors import ArgumentError
    from linmaml.meta.engine import Engine

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    learner = meta.MAML(model, lr=[0.3, 0.1], steps=2, transform=meta.MetaSGD())
    with torch.no_grad():
        for p in learner.transform.parameters():
            p.add_(0.5 * torch.rand_like(p))
    scale = {n: s.detach() for n, s in learner.transform.params().items()}  # {parameter name: s}
    assert set(scale) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    x_s, x_q = torch.randn(6, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    y_s, y_q = torch.randint(0, 2, (6,)), torch.randint(0, 2, (8,))
    before = list(learner.adapted_names)
    for chosen in (["0.weight"], ["2.weight", "2.bias"], ["0.bias", "2.weight"]):
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        for lr in (0.3, 0.1):
            leaves = {n: params[n].requires_grad_(True) for n in chosen}
            loss = F.cross_entropy(torch.func.functional_call(model, {**params, **leaves}, (x_s,)), y_s)
            grads = torch.autograd.grad(loss, list(leaves.values()))
            for n, g in zip(chosen, grads):
                params[n] = (params[n] - lr * scale[n] * g).detach()
        with torch.no_grad():
            expected = F.cross_entropy(torch.func.functional_call(model, params, (x_q,)), y_q)
        losses, _ = Engine(learner, F.cross_entropy, adapted=chosen).score(x_s[None], y_s[None], x_q[None], y_q[None])
        assert float(losses[0]) == pytest.approx(float(expected), rel=1e-12)
        fast = learner.adapt(x_s, y_s, F.cross_entropy, adapted=chosen)
        for n, p in model.named_parameters():
            if n not in chosen:
                assert fast[n] is p  # not adapted: the meta-learned tensor itself
        assert learner.adapted_names == before
    with pytest.raises(ArgumentError) as caught:
        Engine(learner, F.cross_entropy, adapted=["nope"])
    assert caught.value.argument == "adapted"
    anil = meta.ANIL(nn.Linear(4, 3).double(), nn.Linear(3, 2).double(), lr=0.1, steps=1)
    with pytest.raises(ArgumentError):
        anil.adapt(x_s, y_s, F.cross_entropy, adapted=[])


class Stage(nn.Module):
    """A block by structure (a stage of a sequence), whatever its class is called."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.scale = nn.Parameter(torch.ones(d_out))

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(Stage(4, 5), nn.Sequential(Stage(5, 5), nn.ReLU()), nn.Identity())
        self.gate = nn.Parameter(torch.ones(5))
        self.neck = nn.Module()
        self.neck.proj = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.neck.proj(self.trunk(x) * self.gate))


def test_blocks_are_found_by_module_structure_or_given():
    """Written out by hand for a network whose classes have no telling names: the stages of a
    sequence (a nested sequence walked into), modules holding parameters directly; the root's own
    parameter (``gate``) belongs to no block."""
    learner = meta.MAML(Net().double(), lr=0.1, steps=1)
    assert A.block_names(learner) == ["trunk.0", "trunk.1.0", "neck.proj", "out"]
    owner = A.parameter_blocks(learner)
    assert owner["trunk.1.0.lin.weight"] == "trunk.1.0" and owner["trunk.0.scale"] == "trunk.0"
    assert owner["gate"] is None and owner["out.bias"] == "out"
    assert A.block_names(learner, ["trunk", "out"]) == ["trunk", "out"]
    with pytest.raises(ValueError, match="^blocks: "):
        A.block_names(learner, ["nowhere"])
    # head: by default the last nn.Linear; given, the rows follow it
    rows = dict(A.ablation_subsets(learner))
    assert rows["head"] == ["out.weight", "out.bias"] and "out" not in rows
    assert list(rows) == ["all", "head", "all but head", "trunk.0", "trunk.1.0", "neck.proj", "none"]
    rows = dict(A.ablation_subsets(learner, head=["neck.proj.weight", "neck.proj.bias", "out.weight", "out.bias"]))
    assert list(rows) == ["all", "head", "all but head", "trunk.0", "trunk.1.0", "none"]
    tasks = [type("T", (), {"to_torch": lambda self, d=None, t=None, s=s: (
        torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(s)), torch.arange(6) % 2,
        torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + s)),
        torch.arange(8) % 2)})() for s in range(3)]
    result = A.analyze_learner(learner, tasks, steps=1, spectrum_tasks=0, blocks=["trunk", "out"])
    assert [b["name"] for b in result["blocks"]] == ["trunk", "out"]
