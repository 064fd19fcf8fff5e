"""Verification rows for the model-agnostic library ``linmaml.meta`` (torch, float64).

Each row builds torch models from random instances (:mod:`linmaml.checks._common`), runs
``meta.MAML`` / ``meta.ANIL`` and compares with a computation that shares none of the inner-loop
code: the numpy closed forms (``linmaml.closedform.deep_linear``), a shallow model with an explicit
KFO or Meta-SGD, or a hand-written loop — the forward pass written with torch functions, the inner
gradient from ``torch.autograd.grad`` or written out, and the transform's update written as an
explicit Kronecker-product matrix — that calls nothing in ``linmaml.meta``. Meta-gradients of the
hand-written side come from torch autograd through that loop. Errors are
``_common.relative_error`` (‖a − b‖_F / ‖b‖_F, b the reference side). All rows start with "meta:",
except the smoke rows (true by construction), which start with "smoke: meta". The helpers here
(``closedform_parity`` and friends) are also called by ``tests/meta`` over the full grids.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from linmaml import meta
from linmaml.checks._common import (  # noqa: F401  (random_widths, random_weights: used by tests/meta)
    LOSSES,
    random_data,
    random_rates,
    random_tasks,
    random_weights,
    random_widths,
    relative_error,
    worst_of,
)
from linmaml.closedform import deep_linear as dl
from linmaml.errors import ArgumentError
from linmaml.verification import CheckResult, identity

DTYPE = torch.float64
#: Inner learning rates of these rows: [0.05, 0.3] (a number or, a third of the time, one per step).
RATES = (0.05, 0.3)


# --------------------------------------------------------------------------------------------------
# Models, losses and random instances


def loss_function(loss: str):
    """The DESIGN.md losses on torch outputs F (n, d_L): squared 1/(2n)‖F − Y‖², logistic mean BCE."""
    if loss == "squared":
        return lambda F, Y: ((F - Y) ** 2).sum() / (2 * F.shape[0])
    if loss == "logistic":
        return lambda F, Y: nn.functional.binary_cross_entropy_with_logits(F, Y)
    raise ArgumentError("loss", f"expected one of {', '.join(LOSSES)}, got {loss!r}")


def output_gradient(loss: str, F: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """∂loss/∂F written out (no autograd): (F − Y)/n (squared), (σ(F) − Y)/(n·d) (logistic, mean BCE)."""
    if loss == "squared":
        return (F - Y) / F.shape[0]
    return (torch.sigmoid(F) - Y) / F.numel()


def deep_linear_model(weights) -> nn.Sequential:
    """nn.Sequential of bias-free nn.Linear whose weights are [W1, …, WL] (W1 applied first)."""
    layers = []
    for W in weights:
        linear = nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=DTYPE)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(W, dtype=DTYPE))
        layers.append(linear)
    return nn.Sequential(*layers)


def as_torch(*arrays):
    return tuple(torch.as_tensor(a, dtype=DTYPE) for a in arrays)


def _sizes(rng: np.random.Generator, loss: str) -> tuple[int, int, int]:
    """(d_in, hidden, d_out) in {1, …, 4}, d_out = 1 for the logistic loss."""
    d_in, hidden = (int(v) for v in rng.integers(1, 5, size=2))
    return d_in, hidden, 1 if loss == "logistic" else int(rng.integers(1, 5))


def _per_step(rates, steps: int) -> list[float]:
    return rates if isinstance(rates, list) else [rates] * steps


def worst_case(errors, note: str) -> CheckResult:
    """A row's result from its instances' errors (one number, or several, per instance): the count of
    instances and the largest error. A NaN anywhere is the result (a NaN never passes a row), which a
    running ``max(worst, error)`` would silently drop."""
    per_instance = [float(np.max(np.asarray(e, dtype=np.float64))) for e in errors]
    return CheckResult(len(per_instance), float(np.max(per_instance)) if per_instance else 0.0, note)


def library_side(learner, model, tasks, loss_fn, names) -> list:
    """The side computed by :mod:`linmaml.meta`: the last task's adapted ``names``, then the
    meta-gradient of the summed query losses with respect to the model's and the transform's
    parameters (in that order)."""
    total = 0.0
    for Xs, Ys, Xq, Yq in tasks:
        fast = learner.adapt(Xs, Ys, loss_fn)
        total = total + loss_fn(learner(Xq, params=fast), Yq)
    grads = torch.autograd.grad(total, list(model.parameters()) + list(learner.transform.parameters()))
    return [fast[n] for n in names] + list(grads)


# --------------------------------------------------------------------------------------------------
# 1. MAML through meta.MAML equals the closed forms


def closedform_parity(rng: np.random.Generator, depth: int, steps: int, loss: str,
                      first_order: bool = False, n_tasks: int = 3) -> dict[str, float]:
    """Relative errors of meta.MAML against closedform on one random deep linear instance:
    adapted weights (first task), MAML loss and meta-gradient (mean over ``n_tasks`` tasks). The
    adapted layers are all of them or, half of the time, a random non-empty subset."""
    widths = random_widths(rng, depth, loss)
    weights = random_weights(rng, widths)
    tasks = random_tasks(rng, n_tasks, widths[0], widths[-1], loss)
    lr = random_rates(rng, steps, *RATES)
    layers = None
    if rng.random() < 0.5:
        layers = sorted(int(j) for j in rng.choice(depth, size=int(rng.integers(1, depth + 1)), replace=False))
    adapt = "all" if layers is None else [f"{j}.weight" for j in layers]

    model = deep_linear_model(weights)
    learner = meta.MAML(model, lr=lr, steps=steps, first_order=first_order, adapted=adapt)
    loss_fn = loss_function(loss)
    names = [f"{j}.weight" for j in range(depth)]

    Xs, Ys, _, _ = as_torch(*tasks[0])
    fast = learner.adapt(Xs, Ys, loss_fn)
    expected = dl.adapt(weights, tasks[0][0], tasks[0][1], lr, steps, loss, layers)
    adapt_error = relative_error([fast[n] for n in names], expected)

    total = 0.0
    for task in tasks:
        Xs, Ys, Xq, Yq = as_torch(*task)
        total = total + loss_fn(learner(Xq, params=learner.adapt(Xs, Ys, loss_fn)), Yq)
    meta_loss = total / len(tasks)
    grads = torch.autograd.grad(meta_loss, [model.get_parameter(n) for n in names])
    loss_error = relative_error([meta_loss], [np.float64(dl.maml_loss(weights, tasks, lr, steps, loss, layers))])
    grad_error = relative_error(grads, dl.maml_grad(weights, tasks, lr, steps, loss, layers, first_order))
    return {"adapt": adapt_error, "loss": loss_error, "grad": grad_error}


@identity("meta: MAML = closed form (adapted weights, MAML loss, meta-gradient)", 1e-10)
def check_closedform(rng):
    """linmaml.meta.MAML (checks linmaml.meta.MAML.adapt and linmaml.meta.inner_loop.inner_loop) on
    nn.Sequential of bias-free nn.Linear vs the numpy closed forms linmaml.closedform.deep_linear.adapt,
    linmaml.closedform.deep_linear.maml_loss and linmaml.closedform.deep_linear.maml_grad: depths 1–4 × steps 1–5 × both losses, second order (and first order for a quarter)."""
    errors = []
    for depth in range(1, 5):
        for steps in range(1, 6):
            for loss in LOSSES:
                first_order = bool(rng.random() < 0.25)
                parity = closedform_parity(rng, depth, steps, loss, first_order=first_order, n_tasks=2)
                errors.append(list(parity.values()))
    return worst_case(errors, "relative error, max over adapted weights, loss and meta-gradient")


# --------------------------------------------------------------------------------------------------
# 2. Depth as a meta-optimizer; Meta-SGD as a reparameterisation


def psd_factor(S: torch.Tensor) -> torch.Tensor:
    """A square F with FᵀF = S for a symmetric PSD S (symmetric square root, eigenvalues clipped at 0)."""
    values, vectors = torch.linalg.eigh(S)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def depth_as_kfo(rng: np.random.Generator, steps: int, loss: str) -> float:
    """Relative error between A·W_k·B (deep model x ↦ A W B x, A and B frozen, W adapted) and W'_k
    (shallow model x ↦ W' x adapted with KFO(psd=True), LᵀL = AAᵀ, RᵀR = BᵀB, W'_0 = A W_0 B).

    One step moves W by −α AᵀGBᵀ, where G is the gradient w.r.t. the end-to-end map, so the end-to-end
    map moves by −α (AAᵀ) G (BᵀB): KFO with exactly those preconditioners, at every step since G is
    a function of the end-to-end map alone. When A is square L = Aᵀ (and R = B when B is square);
    otherwise L, R are the symmetric square roots of AAᵀ and BᵀB. Returns the worst step's error.
    """
    d_in, p, m = (int(v) for v in rng.integers(1, 5, size=3))
    d_out = 1 if loss == "logistic" else int(rng.integers(1, 5))
    if rng.random() < 0.5:  # square outer factors: the factors are A and B themselves
        m, p = d_out, d_in
    B = torch.as_tensor(rng.standard_normal((p, d_in)) / np.sqrt(d_in), dtype=DTYPE)
    W = torch.as_tensor(rng.standard_normal((m, p)) / np.sqrt(p), dtype=DTYPE)
    A = torch.as_tensor(rng.standard_normal((d_out, m)) / np.sqrt(m), dtype=DTYPE)
    X, Y = as_torch(*random_data(rng, int(rng.integers(2, 8)), d_in, d_out, loss))
    lr = random_rates(rng, steps, *RATES)
    loss_fn = loss_function(loss)

    deep = deep_linear_model([B.numpy(), W.numpy(), A.numpy()])
    for frozen in (deep[0], deep[2]):
        frozen.weight.requires_grad_(False)
    shallow = deep_linear_model([(A @ W @ B).numpy()])
    kfo = meta.KFO(psd=True)
    deep_learner = meta.MAML(deep, lr=lr, steps=steps, adapted="all")
    shallow_learner = meta.MAML(shallow, lr=lr, steps=steps, transform=kfo)
    L = A.T if m == d_out else psd_factor(A @ A.T)
    R = B if p == d_in else psd_factor(B.T @ B)
    with torch.no_grad():
        kfo.factors[meta.parameter_key("0.weight")]["L0"].copy_(L)
        kfo.factors[meta.parameter_key("0.weight")]["R0"].copy_(R)

    worst = 0.0
    for k in range(1, steps + 1):
        W_k = deep_learner.adapt(X, Y, loss_fn, steps=k)["1.weight"]
        W_shallow = shallow_learner.adapt(X, Y, loss_fn, steps=k)["0.weight"]
        worst = worst_of(worst, relative_error([A @ W_k @ B], [W_shallow]))
    return worst


@identity("meta: depth = KFO (A·W·B, W adapted, equals KFO with LᵀL = AAᵀ, RᵀR = BᵀB)", 1e-12)
def check_depth_as_kfo(rng):
    """k-step adaptation (k = 1…5) of the middle factor of A·W·B equals KFO(psd=True) on W' = A W B
    (checks linmaml.meta.KFO against depth: the deep side never calls KFO, the shallow side never
    differentiates through A and B; both run the inner loop, which the closed-form row checks)."""
    errors = [depth_as_kfo(rng, steps, loss) for steps in range(1, 6) for loss in LOSSES for _ in range(2)]
    return worst_case(errors, "relative error of the end-to-end map after each of k steps")


class ScaledMLP(nn.Module):
    """x ↦ (√s₂ ⊙ V₂) tanh((√s₁ ⊙ V₁) x + √t₁ ⊙ c₁) + √t₂ ⊙ c₂, with parameters V, c and fixed
    positive per-element step sizes s, t (buffers) — the Meta-SGD reparameterisation."""

    def __init__(self, weights, biases, scales, bias_scales):
        super().__init__()
        for j, (W, b, s, t) in enumerate(zip(weights, biases, scales, bias_scales), start=1):
            self.register_parameter(f"V{j}", nn.Parameter(W / s.sqrt()))
            self.register_parameter(f"c{j}", nn.Parameter(b / t.sqrt()))
            self.register_buffer(f"root_s{j}", s.sqrt())
            self.register_buffer(f"root_t{j}", t.sqrt())

    def layer(self, j):
        return (getattr(self, f"root_s{j}") * getattr(self, f"V{j}"),
                getattr(self, f"root_t{j}") * getattr(self, f"c{j}"))

    def forward(self, x):
        W1, b1 = self.layer(1)
        W2, b2 = self.layer(2)
        return torch.tanh(x @ W1.T + b1) @ W2.T + b2


def metasgd_as_reparameterisation(rng: np.random.Generator, steps: int, loss: str) -> float:
    """Relative error between Meta-SGD (step sizes s, lr α) on a tanh MLP and plain MAML (lr α) on the
    same MLP with each parameter written as √s ⊙ V: ∇_V = √s ⊙ ∇_W, so √s ⊙ V moves by −α s ⊙ ∇_W."""
    d_in, hidden, d_out = _sizes(rng, loss)
    shapes = [(hidden, d_in), (d_out, hidden)]
    weights = [torch.as_tensor(rng.standard_normal(s) / np.sqrt(s[1]), dtype=DTYPE) for s in shapes]
    biases = [torch.as_tensor(rng.standard_normal(s[0]), dtype=DTYPE) for s in shapes]
    scales = [torch.as_tensor(rng.uniform(0.2, 2.0, size=s), dtype=DTYPE) for s in shapes]
    bias_scales = [torch.as_tensor(rng.uniform(0.2, 2.0, size=s[0]), dtype=DTYPE) for s in shapes]
    X, Y = as_torch(*random_data(rng, int(rng.integers(2, 8)), d_in, d_out, loss))
    lr = random_rates(rng, steps, *RATES)
    loss_fn = loss_function(loss)

    plain = nn.Sequential(nn.Linear(d_in, hidden, dtype=DTYPE), nn.Tanh(), nn.Linear(hidden, d_out, dtype=DTYPE))
    with torch.no_grad():
        for j, linear in enumerate((plain[0], plain[2])):
            linear.weight.copy_(weights[j])
            linear.bias.copy_(biases[j])
    metasgd = meta.MetaSGD()
    learner = meta.MAML(plain, lr=lr, steps=steps, transform=metasgd)
    with torch.no_grad():
        for j, name in enumerate(("0", "2")):
            metasgd.scales[meta.parameter_key(f"{name}.weight")].copy_(scales[j])
            metasgd.scales[meta.parameter_key(f"{name}.bias")].copy_(bias_scales[j])
    reparam = ScaledMLP(weights, biases, scales, bias_scales)
    reference = meta.MAML(reparam, lr=lr, steps=steps)

    fast = learner.adapt(X, Y, loss_fn)
    fast_v = reference.adapt(X, Y, loss_fn)
    ours = [fast["0.weight"], fast["0.bias"], fast["2.weight"], fast["2.bias"]]
    theirs = []
    for j in (1, 2):
        theirs += [reparam.get_buffer(f"root_s{j}") * fast_v[f"V{j}"], reparam.get_buffer(f"root_t{j}") * fast_v[f"c{j}"]]
    return relative_error(ours, theirs)


@identity("meta: Meta-SGD(s) = MAML on the reparameterisation √s ⊙ V", 1e-12)
def check_metasgd_reparameterisation(rng):
    """Meta-SGD with per-element step sizes s (checks linmaml.meta.MetaSGD) equals plain MAML on
    weights written as √s ⊙ V (the reparameterised side never calls MetaSGD)."""
    errors = [metasgd_as_reparameterisation(rng, steps, loss) for steps in range(1, 6) for loss in LOSSES]
    return worst_case(errors, "relative error of the adapted weights and biases")


# --------------------------------------------------------------------------------------------------
# 3. ANIL = head-only MAML; first-order MAML = query gradient at the adapted weights


def random_mlp(rng: np.random.Generator, d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(d_in, hidden, dtype=DTYPE), nn.Tanh(), nn.Linear(hidden, d_out, dtype=DTYPE))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.as_tensor(rng.standard_normal(tuple(p.shape)), dtype=DTYPE) / np.sqrt(max(p.shape[-1], 1)))
    return model


def randomise(transform: meta.Transform, rng: np.random.Generator, scale: float = 0.3) -> None:
    """Move every parameter of a built transform away from its identity initialisation."""
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(scale * torch.as_tensor(rng.standard_normal(tuple(p.shape)), dtype=p.dtype))


def anil_vs_head_maml(rng: np.random.Generator, steps: int, loss: str) -> float:
    """Relative error between ANIL(features, head) and MAML(model, adapted="head") on the same modules,
    with KFO transforms holding equal random factors: adapted head and every meta-gradient."""
    d_in, hidden, d_out = _sizes(rng, loss)
    model = random_mlp(rng, d_in, hidden, d_out)
    lr = random_rates(rng, steps, *RATES)
    loss_fn = loss_function(loss)
    kfo_maml, kfo_anil = meta.KFO(), meta.KFO()
    maml = meta.MAML(model, lr=lr, steps=steps, transform=kfo_maml, adapted="head")
    anil = meta.ANIL(model[:2], model[2], lr=lr, steps=steps, transform=kfo_anil)
    randomise(kfo_maml, rng)
    with torch.no_grad():
        for name in ("weight", "bias"):
            for factor in ("L0", "R0"):
                kfo_anil.factors[name][factor].copy_(kfo_maml.factors[f"2/{name}"][factor])

    tasks = random_tasks(rng, 2, d_in, d_out, loss)
    results = []
    for learner in (maml, anil):
        total = 0.0
        for task in tasks:
            Xs, Ys, Xq, Yq = as_torch(*task)
            fast = learner.adapt(Xs, Ys, loss_fn)
            total = total + loss_fn(learner(Xq, params=fast), Yq)
        head = [fast["2.weight"], fast["2.bias"]] if learner is maml else [fast["weight"], fast["bias"]]
        grads = torch.autograd.grad(total, list(model.parameters()) + list(learner.transform.parameters()))
        results.append(head + list(grads))
    return relative_error(results[1], results[0])


@identity("smoke: meta ANIL = MAML with adapted='head' (adapted head, meta-gradients)", 1e-12)
def check_anil(rng):
    """ANIL on (features, head) (linmaml.meta.ANIL) equals MAML adapting the last nn.Linear of
    features→head (linmaml.meta.MAML). Smoke: both run the same inner loop; the identity row for ANIL
    is the hand-written head-only loop below."""
    errors = [anil_vs_head_maml(rng, steps, loss) for steps in range(1, 6) for loss in LOSSES]
    return worst_case(errors, "relative error over the adapted head and all meta-gradients")


def kron_update(G: torch.Tensor, left: torch.Tensor, right: torch.Tensor, channels: int = 0) -> torch.Tensor:
    """left · G · right for a matrix G (or for each of ``channels`` stacked matrices G[o]), written as
    the explicit Kronecker matrix on the row-major vec: vec_r(A G B) = (A ⊗ Bᵀ) vec_r(G) (with
    I_channels ⊗ in front for a stack). Deliberately the slow, literal form of the transforms' maps."""
    K = torch.kron(left.contiguous(), right.T.contiguous())  # kron needs contiguous inputs
    if channels:
        K = torch.kron(torch.eye(channels, dtype=K.dtype), K)
    return (K @ G.reshape(-1)).reshape(G.shape)


def anil_vs_hand_loop(rng: np.random.Generator, steps: int, loss: str) -> float:
    """Relative error between ANIL(features, head) with a random KFO and a hand-written head-only loop:
    features tanh(X W1ᵀ + b1) computed once per task, the head's gradient written out (no autograd),
    updated by the explicit Kronecker matrix of psd KFO (:func:`kron_update`); meta-gradients
    by torch autograd through that loop. Compared: last task's adapted head and every meta-gradient
    (feature and head parameters, KFO factors)."""
    d_in, hidden, d_out = _sizes(rng, loss)
    model = random_mlp(rng, d_in, hidden, d_out)
    lr = random_rates(rng, steps, *RATES)
    loss_fn = loss_function(loss)
    kfo = meta.KFO()
    anil = meta.ANIL(model[:2], model[2], lr=lr, steps=steps, transform=kfo)
    randomise(kfo, rng)
    tasks = [as_torch(*task) for task in random_tasks(rng, 2, d_in, d_out, loss)]

    total = 0.0
    for Xs, Ys, Xq, Yq in tasks:
        fast = anil.adapt(Xs, Ys, loss_fn)
        total = total + loss_fn(anil(Xq, params=fast), Yq)
    ours = [fast["weight"], fast["bias"]] + list(torch.autograd.grad(total, list(model.parameters()) +
                                                                     list(kfo.parameters())))

    W1, b1, W2, b2 = (p.detach().clone().requires_grad_(True) for p in model.parameters())
    factors = {n: p.detach().clone().requires_grad_(True) for n, p in kfo.named_parameters()}
    gram = {n: f.T @ f for n, f in factors.items()}  # psd KFO: LᵀL and RᵀR
    reference_total = 0.0
    for Xs, Ys, Xq, Yq in tasks:
        Z = torch.tanh(Xs @ W1.T + b1)  # the features, once per task
        W, b = W2, b2
        for rate in _per_step(lr, steps):
            dF = output_gradient(loss, Z @ W.T + b, Ys)
            W = W - rate * kron_update(dF.T @ Z, gram["factors.weight.L0"], gram["factors.weight.R0"])
            b = b - rate * kron_update(dF.sum(0).reshape(-1, 1), gram["factors.bias.L0"],
                                       gram["factors.bias.R0"]).reshape(-1)
        reference_total = reference_total + loss_fn(torch.tanh(Xq @ W1.T + b1) @ W.T + b, Yq)
    reference = [W, b] + list(torch.autograd.grad(reference_total, [W1, b1, W2, b2] + list(factors.values())))
    return relative_error(ours, reference)


@identity("meta: ANIL = hand-written head-only loop (adapted head, meta-gradients)", 1e-12)
def check_anil_hand_loop(rng):
    """linmaml.meta.ANIL with a random linmaml.meta.KFO vs a head-only loop written by hand: features
    computed once, head gradient written out, KFO as an explicit Kronecker matrix, nothing from the
    meta package on the reference side; k = 1…5 steps, both losses, two tasks per instance."""
    errors = [anil_vs_hand_loop(rng, steps, loss) for steps in range(1, 6) for loss in LOSSES]
    return worst_case(errors, "relative error over the adapted head and all meta-gradients")


def plain_adaptation(model: nn.Module, X, Y, loss_fn, rates) -> dict[str, torch.Tensor]:
    """Plain gradient descent written directly with torch.autograd.grad, returning detached weights."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    for lr in rates:
        out = torch.func.functional_call(model, params, (X,))
        grads = torch.autograd.grad(loss_fn(out, Y), list(params.values()))
        params = {n: (p - lr * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads)}
    return params


def fomaml_gradient(rng: np.random.Generator, steps: int, loss: str) -> float:
    """Relative error between first-order MAML's meta-gradient and ∇L_q at plainly adapted weights."""
    d_in, hidden, d_out = _sizes(rng, loss)
    model = random_mlp(rng, d_in, hidden, d_out)
    lr = random_rates(rng, steps, *RATES)
    rates = lr if isinstance(lr, list) else [lr] * steps
    loss_fn = loss_function(loss)
    learner = meta.MAML(model, lr=lr, steps=steps, first_order=True)
    Xs, Ys, Xq, Yq = as_torch(*random_tasks(rng, 1, d_in, d_out, loss)[0])
    query = loss_fn(learner(Xq, params=learner.adapt(Xs, Ys, loss_fn)), Yq)
    meta_grad = torch.autograd.grad(query, list(model.parameters()))
    adapted = plain_adaptation(model, Xs, Ys, loss_fn, rates)
    expected = torch.autograd.grad(loss_fn(torch.func.functional_call(model, adapted, (Xq,)), Yq),
                                   list(adapted.values()))
    return relative_error(meta_grad, expected)


@identity("meta: first-order MAML meta-gradient = query gradient at the adapted weights", 1e-12)
def check_fomaml(rng):
    """first_order=True (checks linmaml.meta.MAML with first_order): the meta-gradient is ∇L_q(θ_k),
    θ_k from a plain gradient-descent loop written with torch.autograd.grad (no ``adapt``)."""
    errors = [fomaml_gradient(rng, steps, loss) for steps in range(1, 6) for loss in LOSSES]
    return worst_case(errors, "relative error of the meta-gradient")


# --------------------------------------------------------------------------------------------------
# 4. Every transform at its initialisation is plain MAML


def conv_model(rng: np.random.Generator) -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, dtype=DTYPE), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 2 * 2, 2, dtype=DTYPE))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.as_tensor(rng.standard_normal(tuple(p.shape)), dtype=DTYPE))
    return model


def initial_transforms() -> dict[str, meta.Transform]:
    return {"KFO": meta.KFO(), "KFO(psd=False)": meta.KFO(psd=False), "KFO(hidden_layers=2)": meta.KFO(hidden_layers=2),
            "MetaSGD": meta.MetaSGD(), "MetaCurvature": meta.MetaCurvature(),
            "Chain(KFO, MetaSGD)": meta.Chain(meta.KFO(), meta.MetaSGD())}


def transforms_at_init(rng: np.random.Generator, steps: int) -> float:
    """Largest relative difference between MAML with a freshly built transform and plain MAML."""
    worst = 0.0
    for kind in ("mlp", "conv"):
        if kind == "mlp":
            model = random_mlp(rng, 3, 4, 2)
            X = torch.as_tensor(rng.standard_normal((5, 3)), dtype=DTYPE)
        else:
            model = conv_model(rng)
            X = torch.as_tensor(rng.standard_normal((5, 2, 4, 4)), dtype=DTYPE)
        Y = torch.as_tensor(rng.standard_normal((5, 2)), dtype=DTYPE)
        loss_fn = loss_function("squared")
        plain = meta.MAML(model, lr=0.2, steps=steps).adapt(X, Y, loss_fn)
        for transform in initial_transforms().values():
            fast = meta.MAML(model, lr=0.2, steps=steps, transform=transform).adapt(X, Y, loss_fn)
            worst = worst_of(worst, relative_error(list(fast.values()), list(plain.values())))
    return worst


@identity("smoke: meta KFO, Meta-SGD, Meta-Curvature at initialisation = MAML", 1e-15)
def check_transforms_at_init(rng):
    """Freshly built transforms (linmaml.meta.KFO linear/psd/non-linear, linmaml.meta.MetaSGD,
    linmaml.meta.MetaCurvature, linmaml.meta.Chain) adapt an MLP and a conv net exactly as plain MAML
    does (expected: bit for bit). Smoke: true by construction (every transform starts as the
    identity), so it checks initialisation, not the transforms' updates."""
    worst, count = 0.0, 0
    for steps in (1, 3):
        worst = worst_of(worst, transforms_at_init(rng, steps))
        count += 2 * len(initial_transforms())
    return CheckResult(count, worst, "relative error of every adapted parameter")


# --------------------------------------------------------------------------------------------------
# 5. Each transform against a hand-written loop with its update as an explicit Kronecker matrix


def _mlp_forward(params, X):
    """tanh MLP x ↦ W2 tanh(W1 x + b1) + b2 written with torch functions; params = [W1, b1, W2, b2]."""
    W1, b1, W2, b2 = params
    return torch.tanh(X @ W1.T + b1) @ W2.T + b2


def _conv_forward(params, X):
    """The :func:`conv_model` net written with torch functions; params = [conv W, conv b, W, b]."""
    Wc, bc, W, b = params
    return torch.tanh(torch.nn.functional.conv2d(X, Wc, bc)).reshape(X.shape[0], -1) @ W.T + b


def _hand_update(kind: str, key: str, g: torch.Tensor, t: dict) -> torch.Tensor:
    """The transform's update of gradient ``g`` written out, from its parameters ``t`` (by name):

    * "metasgd":  s ⊙ g
    * "metacurvature": bias M_out g; weight (out, in) vec_r U = (M_out ⊗ M_inᵀ) vec_r G; conv
      (c_out, c_in, k…) vec_r U = (M_out ⊗ M_inᵀ ⊗ M_kᵀ) vec_r G
    * "kfo" / "kfo-raw": (LᵀL) G (RᵀR) / L G R on the matrix view — bias (n, 1), weight itself, conv
      c_out matrices (c_in, kh·kw), i.e. I_{c_out} ⊗ … on the flattened weight.
    """
    if kind == "metasgd":
        return t[f"scales.{key}"] * g
    if kind == "metacurvature":
        m = {part: t[f"mats.{key}.{part}"] for part in ("out", "in", "kernel") if f"mats.{key}.{part}" in t}
        K = m["out"]
        for part in ("in", "kernel"):
            if part in m:
                K = torch.kron(K.contiguous(), m[part].T.contiguous())
        return (K @ g.reshape(-1)).reshape(g.shape)
    L, R = t[f"factors.{key}.L0"], t[f"factors.{key}.R0"]
    if kind == "kfo":
        L, R = L.T @ L, R.T @ R
    if g.ndim == 1:
        return kron_update(g.reshape(-1, 1), L, R).reshape(g.shape)
    if g.ndim == 2:
        return kron_update(g, L, R)
    return kron_update(g.reshape(g.shape[0], g.shape[1], -1), L, R, channels=g.shape[0]).reshape(g.shape)


def _transform(kind: str) -> meta.Transform:
    return {"metasgd": meta.MetaSGD, "metacurvature": meta.MetaCurvature, "kfo": meta.KFO,
            "kfo-raw": lambda: meta.KFO(psd=False)}[kind]()


def transform_vs_hand_loop(rng: np.random.Generator, kind: str, steps: int, conv: bool, loss: str = "squared") -> float:
    """Relative error between MAML with a random transform ``kind`` (see :func:`_hand_update`) on a
    tanh MLP or the conv net of :func:`conv_model`, and the same inner loop written by hand (forward
    with torch functions, gradients by torch.autograd.grad, update by :func:`_hand_update`). Two tasks;
    compared: the last task's adapted parameters and the meta-gradients of the model's and the
    transform's parameters (autograd through both loops)."""
    if conv:
        model, forward, shape = conv_model(rng), _conv_forward, (2, 4, 4)
        d_out = 2
        tasks = []
        for _ in range(2):
            n_s, n_q = (int(v) for v in rng.integers(2, 6, size=2))
            tasks.append(as_torch(rng.standard_normal((n_s, *shape)), rng.standard_normal((n_s, d_out)),
                                  rng.standard_normal((n_q, *shape)), rng.standard_normal((n_q, d_out))))
    else:
        d_in, hidden, d_out = _sizes(rng, loss)
        model, forward = random_mlp(rng, d_in, hidden, d_out), _mlp_forward
        tasks = [as_torch(*task) for task in random_tasks(rng, 2, d_in, d_out, loss)]
    lr = random_rates(rng, steps, *RATES)
    loss_fn = loss_function(loss)
    transform = _transform(kind)
    learner = meta.MAML(model, lr=lr, steps=steps, transform=transform)
    if kind == "metasgd":  # positive per-element step sizes in [0.2, 2]
        with torch.no_grad():
            for p in transform.parameters():
                p.copy_(torch.as_tensor(rng.uniform(0.2, 2.0, size=tuple(p.shape)), dtype=DTYPE))
    else:
        randomise(transform, rng)

    names = [n for n, _ in model.named_parameters()]
    ours = library_side(learner, model, tasks, loss_fn, names)

    base = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    t = {n: p.detach().clone().requires_grad_(True) for n, p in transform.named_parameters()}
    reference_total = 0.0
    for Xs, Ys, Xq, Yq in tasks:
        params = base
        for rate in _per_step(lr, steps):
            grads = torch.autograd.grad(loss_fn(forward(params, Xs), Ys), params, create_graph=True)
            params = [p - rate * _hand_update(kind, meta.parameter_key(n), g, t)
                      for n, p, g in zip(names, params, grads)]
        reference_total = reference_total + loss_fn(forward(params, Xq), Yq)
    reference = params + list(torch.autograd.grad(reference_total, base + list(t.values())))
    return relative_error(ours, reference)


@identity("meta: Meta-SGD = hand-written loop with s ⊙ g (adapted weights, meta-gradients)", 1e-12)
def check_metasgd_hand_loop(rng):
    """linmaml.meta.MetaSGD in linmaml.meta.MAML vs a hand-written loop θ ← θ − α s ⊙ ∇θ on a tanh
    MLP, k = 1…4 steps, both losses; meta-gradients of the weights and of s."""
    errors = [transform_vs_hand_loop(rng, "metasgd", steps, conv=False, loss=loss)
              for steps in range(1, 5) for loss in LOSSES]
    return worst_case(errors, "relative error over adapted weights and all meta-gradients")


@identity("meta: Meta-Curvature = explicit M_out ⊗ M_inᵀ ⊗ M_kᵀ update (conv, linear, bias)", 1e-12)
def check_metacurvature_hand_loop(rng):
    """linmaml.meta.MetaCurvature in linmaml.meta.MAML vs a hand-written loop whose update is the
    explicit Kronecker matrix on the row-major vec of each gradient (conv weight (3, 2, 3, 3), conv
    bias, linear weight and bias; and a tanh MLP), k = 1…3 steps; meta-gradients of the weights and
    of every M."""
    errors = [transform_vs_hand_loop(rng, "metacurvature", steps, conv=conv)
              for steps in (1, 2, 3) for conv in (True, False)]
    return worst_case(errors, "relative error over adapted weights and all meta-gradients")


@identity("meta: KFO on a conv net = explicit I ⊗ (LᵀL) ⊗ (RᵀR)ᵀ per output channel", 1e-12)
def check_kfo_conv_hand_loop(rng):
    """linmaml.meta.KFO (psd and psd=False) in linmaml.meta.MAML on a conv net vs a hand-written loop
    whose update is the documented conv shape — L c_in×c_in, R (kh·kw)×(kh·kw), the same for every
    output channel — as the explicit matrix I_{c_out} ⊗ (LᵀL) ⊗ (RᵀR)ᵀ on the flattened weight (bias:
    L n×n, R 1×1), k = 1…3 steps; meta-gradients of the weights and of every factor."""
    errors = [transform_vs_hand_loop(rng, kind, steps, conv=True)
              for steps in (1, 2, 3) for kind in ("kfo", "kfo-raw")]
    return worst_case(errors, "relative error over adapted weights and all meta-gradients")


# --------------------------------------------------------------------------------------------------
# 6. LinNet at initialisation: the base model's own step times an explicit extra factor


def linnet_vs_extra_factor(rng: np.random.Generator, loss: str) -> float:
    """Relative error between one MAML step on LinNet(base, layers=2, width) at initialisation and the
    base model's own plain step followed by the factor (I − αG)², G = ∂L/∂P at P = I.

    LinNet outputs P·f_θ(x) with P = A₂A₁ = I (A₁ = eye(width, out), A₂ = eye(out, width)), so θ gets
    the base model's gradient; A₁ and A₂ get A₂ᵀG and GA₁ᵀ, and since A₂A₂ᵀ = A₁ᵀA₁ = A₁ᵀA₂ᵀ = I,
    A₂′A₁′ = I − 2αG + α²G² = (I − αG)² exactly. With outputs F (n, out): G = (∂L/∂F)ᵀ F.
    Compared: the adapted net's query outputs and the adapted product A₂′A₁′.
    """
    d_in, hidden, d_out = _sizes(rng, loss)
    base = random_mlp(rng, d_in, hidden, d_out)
    net = meta.LinNet(base, layers=2, width=d_out + int(rng.integers(0, 3)))
    lr = float(rng.uniform(*RATES))
    loss_fn = loss_function(loss)
    Xs, Ys, Xq, Yq = as_torch(*random_tasks(rng, 1, d_in, d_out, loss)[0])
    learner = meta.MAML(net, lr=lr, steps=1)
    fast = learner.adapt(Xs, Ys, loss_fn)
    ours = [learner(Xq, params=fast), fast["linear.1.weight"] @ fast["linear.0.weight"]]

    params = [p.detach().clone().requires_grad_(True) for p in base.parameters()]
    F = _mlp_forward(params, Xs)
    stepped = [p - lr * g for p, g in zip(params, torch.autograd.grad(loss_fn(F, Ys), params))]
    G = output_gradient(loss, F, Ys).T @ F
    factor = torch.eye(d_out, dtype=DTYPE) - lr * G
    factor = factor @ factor
    return relative_error(ours, [_mlp_forward(stepped, Xq) @ factor.T, factor])


@identity("meta: LinNet at init, one step = base model's step times (I − αG)²", 1e-12)
def check_linnet_extra_factor(rng):
    """linmaml.meta.LinNet (two identity-initialised linear maps, width ≥ out) adapted by one step of
    linmaml.meta.MAML equals the base MLP's own plain step followed by the explicit factor (I − αG)²,
    G = (∂L/∂F)ᵀF written out; both losses."""
    errors = [linnet_vs_extra_factor(rng, loss) for loss in LOSSES for _ in range(6)]
    return worst_case(errors, "relative error of the query outputs and the adapted product A₂′A₁′")


# --------------------------------------------------------------------------------------------------
# 7. Learned per-step rates (MAML++): MAML with those rates fixed, written out


def learned_rates_vs_hand_loop(rng: np.random.Generator, steps: int, loss: str) -> float:
    """Relative error between MAML with ``meta.LearnedRates`` (random rates r_k per tensor and step)
    on a tanh MLP and a hand-written loop θ ← θ − lr_k r_k[tensor] ∇θ (forward with torch functions,
    gradients by torch.autograd.grad, rates as fixed numbers per step). Two tasks; compared: the last
    task's adapted parameters and the meta-gradients of the weights and of every rate."""
    d_in, hidden, d_out = _sizes(rng, loss)
    model = random_mlp(rng, d_in, hidden, d_out)
    tasks = [as_torch(*task) for task in random_tasks(rng, 2, d_in, d_out, loss)]
    lr = random_rates(rng, steps, *RATES)
    loss_fn = loss_function(loss)
    transform = meta.LearnedRates()
    learner = meta.MAML(model, lr=lr, steps=steps, transform=transform)
    rates = {n: rng.uniform(0.2, 2.0, size=steps) for n, _ in model.named_parameters()}
    with torch.no_grad():
        for n, r in rates.items():
            transform.rates[meta.parameter_key(n)].copy_(torch.as_tensor(r, dtype=DTYPE))

    names = list(rates)
    ours = library_side(learner, model, tasks, loss_fn, names)

    base = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    # The rates as leaves only to read the meta-gradient; each step multiplies by one entry.
    leaves = [torch.as_tensor(rates[n], dtype=DTYPE).requires_grad_(True) for n in names]
    reference_total = 0.0
    for Xs, Ys, Xq, Yq in tasks:
        params = base
        for k, rate in enumerate(_per_step(lr, steps)):
            grads = torch.autograd.grad(loss_fn(_mlp_forward(params, Xs), Ys), params, create_graph=True)
            params = [p - rate * r[k] * g for p, r, g in zip(params, leaves, grads)]
        reference_total = reference_total + loss_fn(_mlp_forward(params, Xq), Yq)
    reference = params + list(torch.autograd.grad(reference_total, base + leaves))
    return relative_error(ours, reference)


@identity("meta: learned per-step rates (LearnedRates) = MAML with lr_k·r_k fixed, hand-written loop", 1e-12)
def check_learned_rates_hand_loop(rng):
    """linmaml.meta.LearnedRates in linmaml.meta.MAML (one rate per tensor and inner step, multiplying
    the learner's lr) vs a hand-written loop θ ← θ − lr_k r_k ∇θ on a tanh MLP, k = 1…4 steps, both
    losses; meta-gradients of the weights and of every rate."""
    errors = [learned_rates_vs_hand_loop(rng, steps, loss) for steps in range(1, 5) for loss in LOSSES]
    return worst_case(errors, "relative error over adapted weights and all meta-gradients")
