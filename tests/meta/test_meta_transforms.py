"""Gradient transforms against explicit formulas: Kronecker products on column-major vec (numpy),
hand-evaluated non-linear KFO, mode products for Meta-Curvature; identity at initialisation; errors."""
import numpy as np
import pytest
import torch
from torch import nn

from linmaml import meta

DT = torch.float64
SHAPES = {"bias": (4,), "linear": (3, 5), "conv": (3, 2, 3, 2), "conv1d": (2, 3, 4)}


def vec(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, order="F")


def built(transform, shapes, seed=0, scale=0.4):
    """``transform`` built for parameters of ``shapes`` with its factors moved off the identity."""
    gen = torch.Generator().manual_seed(seed)
    transform.build({name: torch.zeros(shape, dtype=DT) for name, shape in shapes.items()})
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=DT))
    return transform


def random_grads(shapes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen, dtype=DT) for name, shape in shapes.items()}


def matrix_view(g: np.ndarray) -> np.ndarray:
    """Independent restatement of the documented views: (n,) -> (n,1); (o,i) as is; conv -> (o, i, k)."""
    if g.ndim == 1:
        return g[:, None]
    if g.ndim == 2:
        return g
    return g.reshape(g.shape[0], g.shape[1], int(np.prod(g.shape[2:])))


@pytest.mark.parametrize("psd", [True, False])
def test_kfo_is_a_kronecker_product_on_vec(psd):
    kfo = built(meta.KFO(psd=psd), SHAPES)
    grads = random_grads(SHAPES)
    updates = kfo(grads)
    for name, g in grads.items():
        f = kfo.factors[meta.parameter_key(name)]
        L, R = f["L0"].detach().numpy(), f["R0"].detach().numpy()
        P, Q = (L.T @ L, R.T @ R) if psd else (L, R)
        G, U = matrix_view(g.numpy()), matrix_view(updates[name].detach().numpy())
        if G.ndim == 2:
            assert L.shape == (G.shape[0], G.shape[0]) and R.shape == (G.shape[1], G.shape[1])
            np.testing.assert_allclose(vec(U), np.kron(Q.T, P) @ vec(G), rtol=1e-12, atol=1e-13)
        else:  # conv: L is c_in × c_in, R is k × k, the same for every output channel
            assert L.shape == (g.shape[1], g.shape[1]) and R.shape == (G.shape[2], G.shape[2])
            for o in range(G.shape[0]):
                np.testing.assert_allclose(vec(U[o]), np.kron(Q.T, P) @ vec(G[o]), rtol=1e-12, atol=1e-13)


def test_conv_kfo_factor_shapes_follow_the_issue():
    kfo = meta.KFO().build({"w": torch.zeros(8, 3, 5, 5), "b": torch.zeros(8), "fc": torch.zeros(2, 7)})
    assert kfo.factors["w"]["L0"].shape == (3, 3) and kfo.factors["w"]["R0"].shape == (25, 25)
    assert kfo.factors["b"]["L0"].shape == (8, 8) and kfo.factors["b"]["R0"].shape == (1, 1)
    assert kfo.factors["fc"]["L0"].shape == (2, 2) and kfo.factors["fc"]["R0"].shape == (7, 7)


def test_kfo_preconditioners_give_the_update():
    kfo = built(meta.KFO(), {"w": (3, 4)})
    g = random_grads({"w": (3, 4)})["w"]
    left, right = kfo.preconditioners("w")
    torch.testing.assert_close(kfo({"w": g})["w"], left @ g @ right, rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="^name: "):
        kfo.preconditioners("nope")


@pytest.mark.parametrize("psd", [True, False])
def test_nonlinear_kfo_matches_a_hand_evaluation(psd):
    shapes = {"linear": (3, 5), "conv": (3, 2, 2, 2)}
    kfo = built(meta.KFO(psd=psd, hidden_layers=2), shapes, scale=0.5)
    grads = random_grads(shapes)
    updates = kfo(grads)
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    for name, g in grads.items():
        f = {k: v.detach().numpy() for k, v in kfo.factors[name].items()}

        def kron_map(z, tag):
            L, R = f["L" + tag], f["R" + tag]
            if psd:
                L, R = L.T @ L, R.T @ R
            return np.einsum("ab,...bc,cd->...ad", L, z, R)

        z = kron_map(matrix_view(g.numpy()), "0")
        for i in (1, 2):
            z = kron_map(relu(z), f"pos{i}") - kron_map(relu(-z), f"neg{i}")
        np.testing.assert_allclose(updates[name].detach().numpy(), z.reshape(g.shape), rtol=1e-12, atol=1e-13)
        # and it is genuinely non-linear: U(−G) ≠ −U(G) once the positive and negative maps differ
        minus = kfo({name: -g})[name]
        assert not torch.allclose(minus, -updates[name], rtol=1e-6, atol=1e-9)


def test_metacurvature_is_a_mode_product():
    mc = built(meta.MetaCurvature(), SHAPES)
    grads = random_grads(SHAPES)
    updates = mc(grads)
    for name, g in grads.items():
        m = {k: v.detach().numpy() for k, v in mc.mats[name].items()}
        G, U = g.numpy(), updates[name].detach().numpy()
        if G.ndim == 1:
            np.testing.assert_allclose(U, m["out"] @ G, rtol=1e-12)
        elif G.ndim == 2:  # U = M_out G M_in
            np.testing.assert_allclose(vec(U), np.kron(m["in"].T, m["out"]) @ vec(G), rtol=1e-12, atol=1e-13)
        else:  # U = G ×1 M_out ×2 M_inᵀ ×3 M_kᵀ: vec U = (M_kᵀ ⊗ M_inᵀ ⊗ M_out) vec G
            G3, U3 = matrix_view(G), matrix_view(U)
            K = np.kron(np.kron(m["kernel"].T, m["in"].T), m["out"])
            np.testing.assert_allclose(vec(U3), K @ vec(G3), rtol=1e-12, atol=1e-13)


def test_metasgd_is_elementwise():
    sgd = built(meta.MetaSGD(), SHAPES)
    grads = random_grads(SHAPES)
    for name, u in sgd(grads).items():
        s = sgd.scales[meta.parameter_key(name)].detach()
        assert torch.equal(u, s * grads[name])


def test_chain_composes_in_order():
    shapes = {"linear": (3, 5)}
    kfo, sgd = meta.KFO(psd=False), meta.MetaSGD()
    chain = meta.Chain(kfo, sgd)
    built(chain, shapes)
    g = random_grads(shapes)
    L, R = kfo.factors["linear"]["L0"], kfo.factors["linear"]["R0"]
    expected = sgd.scales["linear"] * (L @ g["linear"] @ R)
    torch.testing.assert_close(chain(g)["linear"], expected, rtol=1e-13, atol=1e-14)
    assert {n.split(".")[0] for n, _ in chain.named_parameters()} == {"transforms"}


@pytest.mark.parametrize("make", [meta.Identity, meta.KFO, lambda: meta.KFO(psd=False),
                                  lambda: meta.KFO(hidden_layers=2), lambda: meta.KFO(psd=False, hidden_layers=1),
                                  meta.MetaSGD, meta.MetaCurvature, lambda: meta.Chain(meta.KFO(), meta.MetaSGD())])
def test_every_transform_starts_as_the_exact_identity(make):
    transform = make().build({n: torch.zeros(s, dtype=DT) for n, s in SHAPES.items()})
    grads = random_grads(SHAPES, seed=3)
    for name, u in transform(grads).items():
        assert torch.equal(u, grads[name]), name


def test_transform_parameters_follow_the_model_parameters_dtype_and_names():
    kfo = meta.KFO().build({"0.weight": torch.zeros(2, 3, dtype=torch.float32)})
    names = [n for n, _ in kfo.named_parameters()]
    assert names == ["factors.0/weight.L0", "factors.0/weight.R0"]
    assert all(p.dtype == torch.float32 for p in kfo.parameters())


@pytest.mark.parametrize("make", [meta.KFO, meta.MetaCurvature, lambda: meta.KFO(hidden_layers=2)])
def test_scalar_parameter_is_rejected_naming_it(make):
    with pytest.raises(ValueError, match=r"^temperature: .*0-d"):
        make().build({"w": torch.zeros(2, 2), "temperature": torch.zeros(())})


def test_scalar_parameter_is_rejected_through_the_learner():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)
            self.scale = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            return self.scale * self.linear(x)

    with pytest.raises(ValueError, match=r"^scale: KFO cannot transform a 0-d"):
        meta.MAML(Scaled(), transform=meta.KFO())
    meta.MAML(Scaled(), transform=meta.MetaSGD())  # element-wise step sizes need no matrix structure


def test_a_built_transform_refuses_other_shapes_and_unknown_gradients():
    kfo = meta.KFO().build({"w": torch.zeros(2, 3)})
    kfo.build({"w": torch.zeros(2, 3)})  # same shapes: fine
    with pytest.raises(ValueError, match="^named_params: .*already built"):
        kfo.build({"w": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="^grads: .*'v'"):
        kfo({"v": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="^grads: w has shape"):
        kfo({"w": torch.zeros(3, 2)})
    with pytest.raises(RuntimeError, match="not built"):
        meta.KFO()({"w": torch.zeros(2, 3)})


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="^hidden_layers: "):
        meta.KFO(hidden_layers=-1)
    with pytest.raises(TypeError, match="^psd: "):
        meta.KFO(psd="yes")
    with pytest.raises(TypeError, match=r"^transforms\[1\]: "):
        meta.Chain(meta.KFO(), "sgd")
    with pytest.raises(ValueError, match="^transforms: "):
        meta.Chain()
