"""The product orders of KFO (Gram matrix or two thin products per side, a scalar for a 1×1 factor,
conv weights in a kernel-major layout: ``KFO._kron``, ``KFO._kron_stacked``) and Meta-Curvature's
mode products against the maps written out with explicit Kronecker matrices on the column-major vec
(vec U = (RᵀR ⊗ LᵀL) vec G; (M_kᵀ ⊗ M_inᵀ ⊗ M_out) vec G): alone, under ``vmap``, through the
engine's meta-gradient (against a per-task loop written here and against central finite
differences), and over a few outer Adam steps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from linmaml import meta
from linmaml.benchmarks.models import ConvNet, to_channels_last
from linmaml.checks.meta import relative_error

DT = torch.float64

# Each side of the psd map takes one of three orders (Gram matrix: n < the columns it multiplies; two
# thin products otherwise; a scalar when the factor is 1×1). Matrix views (rows, cols) × stack:
SHAPES = {
    "wide_head": (2, 9),           # R 9×9 on 2 rows: thin;          L 2×2 on 9 columns: Gram
    "tall": (7, 2),                # R 2×2 on 7 rows: Gram;          L 7×7 on 2 columns: thin
    "bias": (5,),                  # R 1×1: scalar;                  L 5×5 on 1 column: thin
    "row": (1, 6),                 # R 6×6 on 1 row: thin;           L 1×1: scalar
    "conv": (4, 3, 2, 2),          # R 4×4 on 4·3 rows: Gram;        L 3×3 on 4·4 columns: Gram
    "conv_one_input": (3, 1, 2, 3),  # R 6×6 on 3·1 rows: thin;      L 1×1: scalar
    "conv_wide_kernel": (1, 2, 3, 3),  # R 9×9 on 1·2 rows: thin;    L 2×2 on 9 columns: Gram
    "conv_many_inputs": (1, 5, 2, 1),  # R 2×2 on 1·5 rows: Gram;    L 5×5 on 1·2 columns: thin
    "conv_1x1": (2, 3, 1, 1),      # R 1×1: scalar;                  L 3×3 on 2·1 columns: thin
}


def matrices(g: np.ndarray) -> list[np.ndarray]:
    """The documented matrix views, restated: (n,) -> [(n, 1)]; (o, i) -> [itself]; (o, i, k…) -> one
    (i, k₁·k₂·…) matrix per output channel o, the kernel positions flattened row-major."""
    if g.ndim == 1:
        return [g[:, None]]
    if g.ndim == 2:
        return [g]
    return [g[o].reshape(g.shape[1], -1) for o in range(g.shape[0])]


def vec(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, order="F")


def kronecker_update(g: np.ndarray, L: np.ndarray, R: np.ndarray) -> np.ndarray:
    """U for gradient ``g``: per matrix view G, vec U = (RᵀR ⊗ LᵀL) vec G with the explicit Kronecker matrix."""
    K = np.kron((R.T @ R).T, L.T @ L)
    out = [(K @ vec(G)).reshape(G.shape, order="F") for G in matrices(g)]
    return np.stack(out).reshape(g.shape)


def built_kfo(shapes, seed=0, scale=0.4):
    kfo = meta.KFO().build({name: torch.zeros(shape, dtype=DT) for name, shape in shapes.items()})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in kfo.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=DT))
    return kfo


def factors(kfo, name):
    f = kfo.factors[meta.parameter_key(name)]
    return f["L0"].detach().numpy(), f["R0"].detach().numpy()


def test_every_product_order_is_the_kronecker_map():
    kfo = built_kfo(SHAPES)
    gen = torch.Generator().manual_seed(1)
    grads = {name: torch.randn(shape, generator=gen, dtype=DT) for name, shape in SHAPES.items()}
    updates = kfo(grads)
    for name, g in grads.items():
        expected = kronecker_update(g.numpy(), *factors(kfo, name))
        np.testing.assert_allclose(updates[name].detach().numpy(), expected, rtol=1e-12, atol=1e-13, err_msg=name)


def test_every_product_order_under_vmap_is_the_kronecker_map_task_by_task():
    """The engine's batched strategies call the transform under vmap (the leading task axis hidden)."""
    kfo = built_kfo(SHAPES, seed=2)
    gen = torch.Generator().manual_seed(3)
    tasks = 3
    grads = {name: torch.randn((tasks, *shape), generator=gen, dtype=DT) for name, shape in SHAPES.items()}
    params = kfo.params()
    updates, _ = torch.func.vmap(lambda g: kfo.step(g, params, kfo.initial_state, 0))(grads)
    for name, g in grads.items():
        L, R = factors(kfo, name)
        for t in range(tasks):
            expected = kronecker_update(g[t].numpy(), L, R)
            np.testing.assert_allclose(updates[name][t].detach().numpy(), expected, rtol=1e-12, atol=1e-13,
                                       err_msg=f"{name}, task {t}")


# --- the meta-gradient: a small CNN whose parameters take every product order ----------------------


def small_cnn() -> nn.Module:
    """1×4×4 images -> conv (3, 1, 2, 2): L 1×1 scalar, R thin; tanh; conv (2, 3, 2, 2): both Gram;
    tanh; conv (2, 2, 1, 1): R 1×1 scalar, L thin; a head (2, 8): L Gram, R thin; biases: R scalar,
    L thin. Smooth (tanh), for finite differences."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 3, 2), nn.Tanh(), nn.Conv2d(3, 2, 2), nn.Tanh(), nn.Conv2d(2, 2, 1),
                         nn.Flatten(), nn.Linear(8, 2)).double()


def episodes(seed, tasks=3, n_s=4, n_q=6):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, n_s, 1, 4, 4, generator=gen, dtype=DT)
    xq = torch.randn(tasks, n_q, 1, 4, 4, generator=gen, dtype=DT)
    ys = torch.randint(0, 2, (tasks, n_s), generator=gen)
    yq = torch.randint(0, 2, (tasks, n_q), generator=gen)
    return xs, ys, xq, yq


def torch_kronecker_update(g, L, R, psd=True):
    """:func:`kronecker_update` in torch (differentiable): the explicit Kronecker matrix on the
    column-major vec of each matrix view, (RᵀR)ᵀ ⊗ LᵀL with psd, Rᵀ ⊗ L without."""
    left, right = (L.T @ L, R.T @ R) if psd else (L, R)
    K = torch.kron(right.T.contiguous(), left)  # torch.kron refuses a transposed view
    if g.ndim == 1:
        views = [g.reshape(-1, 1)]
    elif g.ndim == 2:
        views = [g]
    else:
        views = [g[o].reshape(g.shape[1], -1) for o in range(g.shape[0])]
    out = [(K @ G.T.reshape(-1)).reshape(G.shape[1], G.shape[0]).T for G in views]
    return torch.stack(out).reshape(g.shape)


def torch_mode_product_update(g, m):
    """Meta-Curvature written out: M_out g (bias); vec U = (M_inᵀ ⊗ M_out) vec G (linear); for a conv
    weight viewed (o, i, k), vec U = (M_kᵀ ⊗ M_inᵀ ⊗ M_out) vec G, vec column-major over all three axes."""
    if g.ndim == 1:
        return m["out"] @ g
    if g.ndim == 2:
        K = torch.kron(m["in"].T.contiguous(), m["out"])
        return (K @ g.T.reshape(-1)).reshape(g.shape[1], g.shape[0]).T
    o, i = g.shape[0], g.shape[1]
    k = g.numel() // (o * i)
    K = torch.kron(torch.kron(m["kernel"].T.contiguous(), m["in"].T.contiguous()), m["out"])
    u = (K @ g.reshape(o, i, k).permute(2, 1, 0).reshape(-1)).reshape(k, i, o).permute(2, 1, 0)
    return u.reshape(g.shape)


KINDS = {"kfo": meta.KFO, "kfo_not_psd": lambda: meta.KFO(psd=False), "metacurvature": meta.MetaCurvature}


def written_out_update(transform, name, g):
    if isinstance(transform, meta.MetaCurvature):
        return torch_mode_product_update(g, transform.mats[meta.parameter_key(name)])
    f = transform.factors[meta.parameter_key(name)]
    return torch_kronecker_update(g, f["L0"], f["R0"], psd=transform.psd)


def written_out_meta_loss(model, transform, lr, batch):
    """Mean over tasks of the query cross-entropy after one second-order transformed step, task by task."""
    names = [n for n, _ in model.named_parameters()]
    base = dict(model.named_parameters())
    xs, ys, xq, yq = batch
    total = 0.0
    for t in range(xs.shape[0]):
        loss = F.cross_entropy(functional_call(model, base, (xs[t],)), ys[t])
        grads = torch.autograd.grad(loss, [base[n] for n in names], create_graph=True)
        fast = {n: base[n] - lr * written_out_update(transform, n, g) for n, g in zip(names, grads)}
        total = total + F.cross_entropy(functional_call(model, fast, (xq[t],)), yq[t])
    return total / xs.shape[0]


def learner_with(kind, seed=6):
    transform = KINDS[kind]()
    learner = meta.MAML(small_cnn(), lr=0.4, steps=1, transform=transform)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=DT))
    return learner, transform


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("strategy", ["split", "loop", "vmap"])
def test_engine_meta_gradient_equals_the_written_out_loop(strategy, kind):
    learner, transform = learner_with(kind)
    batch = episodes(7)
    engine = meta.Engine(learner, F.cross_entropy, strategy=strategy, tasks_per_chunk=2)
    engine.meta_gradient(*batch, scale=1 / batch[0].shape[0])
    ours = [p.grad.clone() for p in learner.parameters()]
    loss = written_out_meta_loss(learner.model, transform, 0.4, batch)
    reference = torch.autograd.grad(loss, list(learner.parameters()))
    assert relative_error(ours, list(reference)) < 1e-12
    assert min(float(g.abs().sum()) for g in ours) > 0  # every factor and weight receives a gradient


@pytest.mark.parametrize("kind", ["kfo", "metacurvature"])
def test_engine_meta_gradient_equals_central_finite_differences(kind):
    learner, transform = learner_with(kind, seed=8)
    batch = episodes(9, tasks=2)
    engine = meta.Engine(learner, F.cross_entropy, strategy="split", tasks_per_chunk=2)
    engine.meta_gradient(*batch, scale=1 / batch[0].shape[0])
    ours = [p.grad.clone() for p in learner.parameters()]
    h, numeric = 1e-5, []
    with torch.no_grad():
        for p in learner.parameters():
            g = torch.zeros_like(p)
            for idx in np.ndindex(*p.shape):
                old = p[idx].item()
                values = []
                for shifted in (old + h, old - h):
                    p[idx] = shifted
                    with torch.enable_grad():
                        values.append(float(written_out_meta_loss(learner.model, transform, 0.4, batch)))
                p[idx] = old
                g[idx] = (values[0] - values[1]) / (2 * h)
            numeric.append(g)
    assert relative_error(ours, numeric) < 1e-7


@pytest.mark.parametrize("kind", ["kfo", "metacurvature"])
def test_a_few_outer_adam_steps_equal_the_written_out_loop(kind):
    """Three meta-iterations (Adam on the CNN and the transform) through the engine against the same
    iterations with the written-out loop's gradients: the trained weights agree to float64 rounding."""
    learner, _ = learner_with(kind, seed=10)
    twin_learner, twin_transform = learner_with(kind, seed=10)
    engine = meta.Engine(learner, F.cross_entropy, strategy="split", tasks_per_chunk=2)
    ours = torch.optim.Adam(learner.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(twin_learner.parameters(), lr=1e-2)
    for it in range(3):
        batch = episodes(20 + it, tasks=4)
        ours.zero_grad()
        engine.meta_gradient(*batch, scale=1 / batch[0].shape[0])
        ours.step()
        theirs.zero_grad()
        written_out_meta_loss(twin_learner.model, twin_transform, 0.4, batch).backward()
        theirs.step()
    trained, reference = list(learner.parameters()), list(twin_learner.parameters())
    assert relative_error([p.detach() for p in trained], [p.detach() for p in reference]) < 1e-12
    start, _ = learner_with(kind, seed=10)
    assert relative_error([p.detach() for p in trained], [p.detach() for p in start.parameters()]) > 1e-4  # it moved


def _batchnorm_setup(transform, tasks: int, pool: str):
    """A 2-block BatchNorm ConvNet (float64, seeded) under MAML with ``transform`` moved off the
    identity, and ``tasks`` 3-way episodes (1 support, 2 queries per class) in the default layout."""
    torch.manual_seed(11)
    model = ConvNet(in_channels=1, ways=3, blocks=2, filters=4, image_size=8, pool=pool).double()
    learner = meta.MAML(model, lr=0.4, steps=1, transform=transform)
    gen = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=DT))
    xs = torch.rand(tasks, 3, 1, 8, 8, generator=gen, dtype=DT)
    xq = torch.rand(tasks, 6, 1, 8, 8, generator=gen, dtype=DT)
    ys, yq = torch.arange(3).repeat(tasks, 1), torch.arange(3).repeat_interleave(2).repeat(tasks, 1)
    return model, learner, (xs, ys, xq, yq)


@pytest.mark.parametrize("kind", list(KINDS))
def test_split_strategy_on_channels_last_episodes_with_batchnorm_equals_the_written_out_loop(kind):
    """``linmaml train``'s set-up: the ConvNet (BatchNorm), channels-last episodes, ``split``. Meta-
    Curvature's bias and norm-scale updates come out of vmap strided, and torch's CPU batch_norm
    backward is wrong for a strided weight with a channels-last incoming gradient: the engine's
    query leaves must be contiguous (they were a few per cent off before)."""
    transform = KINDS[kind]()
    model, learner, (xs, ys, xq, yq) = _batchnorm_setup(transform, tasks=4, pool="stride")
    engine = meta.Engine(learner, F.cross_entropy, strategy="split", tasks_per_chunk=4)
    engine.meta_gradient(to_channels_last(xs), ys, to_channels_last(xq), yq, scale=1 / 4)
    ours = [p.grad.clone() for p in learner.parameters()]
    names = [n for n, _ in learner.named_parameters()]
    reference = torch.autograd.grad(written_out_meta_loss(model, transform, 0.4, (xs, ys, xq, yq)),
                                    list(learner.parameters()))
    # per tensor, against the whole gradient for tensors that are ~0 by structure (conv biases before BatchNorm)
    total = float(torch.sqrt(sum((r * r).sum() for r in reference)))
    for name, a, b in zip(names, ours, reference):
        assert float((a - b).norm()) <= 1e-11 * max(float(b.norm()), 1e-3 * total), name


@pytest.mark.parametrize("strategy", ["split", "loop", "vmap"])
def test_task_losses_on_channels_last_episodes_with_batchnorm_differentiate_as_the_written_out_loop(strategy):
    """:meth:`Engine.task_losses` (differentiable per-task losses, the public API beside
    ``meta_gradient``) on the set-up above: under ``split`` its query sets took the adapted
    parameters as vmap left them, Meta-Curvature's bias and norm-scale updates strided, and torch's
    CPU batch_norm backward made the gradient of their sum 2-6 % wrong (two inner steps: 6 %)."""
    transform = meta.MetaCurvature()
    model, learner, (xs, ys, xq, yq) = _batchnorm_setup(transform, tasks=5, pool="max")
    engine = meta.Engine(learner, F.cross_entropy, strategy=strategy, tasks_per_chunk=3)  # chunks of 3 and 2
    losses, _ = engine.task_losses(to_channels_last(xs), ys, to_channels_last(xq), yq)
    ours = torch.autograd.grad(losses.mean(), list(learner.parameters()))
    # the reference: the written-out loop on the images in the default layout
    reference = torch.autograd.grad(written_out_meta_loss(model, transform, 0.4, (xs, ys, xq, yq)),
                                    list(learner.parameters()))
    assert relative_error(list(ours), list(reference)) < 1e-12
