"""Rapid learning or feature reuse? The measurements of Raghu et al. (2020) for any trained learner.

Raghu, Raghu, Bengio & Vinyals (ICLR 2020), "Rapid learning or feature reuse? Towards understanding
the effectiveness of MAML", ask whether MAML's inner loop changes the network's representation
(rapid learning) or only its head (feature reuse). Their four measurements, as library functions:

* **Layer freezing** (their Table 1): the query accuracy when the first k layers are *not* adapted at
  test time (held at the meta-learned θ) and only the rest adapt (:func:`freezing_table`). The
  adapted set is passed to the inner loop (:func:`linmaml.meta.inner_loop.inner_loop`) explicitly:
  the learner is never modified.
* **CKA before vs after adaptation** (their Figures 2–3, with CCA and CKA): for each layer, linear CKA
  (:func:`linear_cka`) between its outputs on a task's query examples under θ and under the
  adapted θ' (:func:`cka_before_after`). Near 1: the layer's representation is reused.
* **NIL, no inner loop** (their Table 4): the head is removed and each query example is given the
  class whose mean penultimate support feature (the input of the last layer) is nearest, by cosine
  similarity or Euclidean distance (:func:`nil_accuracies`).
* **Body similarity of two networks** (their Section 4.2, MAML vs ANIL): linear CKA layer by layer
  between two networks' outputs on the same inputs (:func:`network_similarity`).

Layers are found from the module structure alone (:func:`network_layers`): a *weight* is a parameter of
two or more dimensions held by a module that is not a normalisation layer (a conv kernel, a linear
map), and a layer is the largest submodule holding exactly one weight. For the ConvNet these are the
conv blocks (conv, BatchNorm, pooling, ReLU: the block's output is the layer's representation) and the
linear head; a layer's parameters are all the parameters of that submodule (its BatchNorm included).

    from linmaml.benchmarks import load_learner, feature_reuse as fr
    learner = load_learner("runs/maml")                         # MAML or ANIL
    lrs = learner.step_rates(3)                                 # the test-time inner steps
    rows = fr.freezing_table(learner, tasks, lrs)              # [{"frozen", "adapted", "accuracies"}, …]
    cka = fr.cka_before_after(learner, tasks, lrs)             # {layer: (tasks,)}
    nil = fr.nil_accuracies(learner, tasks)                    # {"cosine": (tasks,), "euclidean": (tasks,)}
    sim = fr.network_similarity(learner, other_learner, tasks) # {layer: (tasks,)}

``python analysis/raghu.py`` (:mod:`linmaml.analysis.raghu`) runs all four on trained runs.

Conventions: a task is ``(x_support (n_s, …), y_support (n_s,), x_query (n_q, …), y_query (n_q,))``
with integer class labels 0..ways−1; a *network* is the ``nn.Module`` whose ``named_parameters()``
names are used throughout (:func:`network_of`: MAML's model, ANIL's features and head as one module
named ``features.*`` / ``head.*``, the ConvNet's own names). Every function evaluates under
``torch.no_grad`` (the inner gradients are taken inside) and returns per-task float64 NumPy arrays,
so that comparisons on the same tasks are paired.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from linmaml import meta
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.intervals import mean_ci
from linmaml.meta.inner_loop import check_rates, inner_loop

__all__ = ["linear_cka", "network_of", "Layer", "network_layers", "adapt_parameters", "query_accuracies",
           "freezing_table", "layer_outputs", "penultimate_features", "cka_before_after", "nil_accuracies",
           "network_similarity", "adapted_names_of", "check_plain_steps", "NORM_TYPES", "feature_reuse_report"]

#: Modules whose multi-dimensional parameters are not weights of a layer of their own (a per-step
#: BatchNorm holds (steps, channels) affine parameters).
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


# --- linear CKA ---------------------------------------------------------------------------------------

def _matrix(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    elif isinstance(value, np.ndarray):
        value = value.astype(np.float64, copy=False)
    else:
        raise ArgumentTypeError(name, f"expected a 2-d tensor or array (examples, features), got {type(value).__name__}")
    if value.ndim != 2 or value.shape[0] < 2:
        raise ArgumentError(name, f"expected a 2-d matrix (examples, features) of at least 2 examples, got shape "
                                  f"{value.shape}")
    if not np.isfinite(value).all():
        raise ArgumentError(name, "contains NaN or infinite values")
    return value


def linear_cka(x, y) -> float:
    """Linear CKA (Kornblith et al. 2019) of feature matrices ``x (n, p)`` and ``y (n, q)`` whose rows
    are the same n examples, in float64:

        CKA(X, Y) = ‖Ỹᵀ X̃‖²_F / (‖X̃ᵀ X̃‖_F ‖Ỹᵀ Ỹ‖_F),   X̃, Ỹ the column-centred matrices,

    computed through the n×n Gram matrices K = X̃X̃ᵀ, L = ỸỸᵀ (‖ỸᵀX̃‖²_F = Σ K⊙L), cheap for wide conv
    features and few examples. In [0, 1]; invariant to orthogonal transforms and isotropic scalings
    of either side. 0 by definition when either side is constant over the examples.

    Note (why CKA values of wide layers run high): with p, q ≫ n the Gram matrices of unrelated
    features are both close to multiples of the centring matrix, so CKA is biased towards 1; the
    estimate is unbiased only as n grows beside p and q. Compare CKAs of one layer, not across widths.
    """
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ArgumentError("y", f"expected {x.shape[0]} rows (one per example of x), got {y.shape[0]}")
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    k, l = x @ x.T, y @ y.T
    denominator = np.linalg.norm(k) * np.linalg.norm(l)
    if denominator == 0.0:
        return 0.0
    return float(np.sum(k * l) / denominator)


# --- the network and its layers --------------------------------------------------------------------------

class _FeaturesAndHead(nn.Module):
    """``head(features(x))`` as one module, so ANIL's two parts carry the ConvNet's parameter names."""

    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x):
        return self.head(self.features(x))


def network_of(learner) -> nn.Module:
    """The whole network of a :mod:`linmaml.meta` learner: ``learner.model`` for MAML, ANIL's features
    and head as one module (parameters ``features.*`` and ``head.*``; the learner's own modules, not
    copies), a bare ``nn.Module`` as it is."""
    if isinstance(learner, meta.MAML):
        return learner.model
    if isinstance(learner, meta.ANIL):
        return _FeaturesAndHead(learner.features, learner.head)
    if isinstance(learner, nn.Module):
        return learner
    raise ArgumentTypeError("learner", f"expected a linmaml.meta MAML or ANIL learner or an nn.Module, got "
                                       f"{type(learner).__name__}")


@dataclass(frozen=True)
class Layer:
    """A layer of a network (:func:`network_layers`): its module name and its parameters' names."""
    name: str
    parameters: tuple[str, ...]


def _own_weights(module: nn.Module) -> int:
    if isinstance(module, NORM_TYPES):
        return 0
    return sum(1 for p in module.parameters(recurse=False) if p.ndim >= 2)


def network_layers(network: nn.Module) -> list[Layer]:
    """The layers of ``network`` in registration order (module docstring): the largest submodules
    holding exactly one weight (a parameter of ≥ 2 dimensions of a module that is not a
    normalisation layer). Found from the module tree alone, whatever the classes are called.
    ``ArgumentError`` naming ``network`` when it has fewer than two layers."""
    if not isinstance(network, nn.Module):
        raise ArgumentTypeError("network", f"expected an nn.Module, got {type(network).__name__}")
    modules = dict(network.named_modules())
    counts = {name: sum(_own_weights(m) for m in module.modules()) for name, module in modules.items()}
    canonical = {id(p): n for n, p in network.named_parameters()}
    layers = []
    for name, module in modules.items():
        if not name or counts[name] != 1:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if counts[parent] == 1:  # a submodule of a larger single-weight module
            continue
        names = tuple(canonical[id(p)] for p in module.parameters() if id(p) in canonical)
        layers.append(Layer(name, names))
    if len(layers) < 2:
        raise ArgumentError("network", f"expected at least two layers (modules with one weight each), found "
                                       f"{len(layers)}")
    return layers


def _check_names(network: nn.Module, adapted) -> list[str]:
    params = dict(network.named_parameters())
    if isinstance(adapted, (str, bytes)) or not isinstance(adapted, Sequence):
        raise ArgumentTypeError("adapted", f"expected a sequence of parameter names, got {type(adapted).__name__}")
    for name in adapted:
        if name not in params:
            raise ArgumentError("adapted", f"the network has no parameter named {name!r}; its parameters are "
                                           f"{', '.join(params)}")
    chosen = set(adapted)
    return [n for n in params if n in chosen]


# --- adaptation of a chosen set of parameters ----------------------------------------------------------

def adapt_parameters(network: nn.Module, x_support, y_support, adapted: Sequence[str], lrs: Sequence[float],
                     loss_fn: Callable = F.cross_entropy) -> dict[str, torch.Tensor]:
    """Every parameter of ``network`` after ``len(lrs)`` plain gradient steps on the support loss
    ``loss_fn(network(x_support), y_support)`` in which only the parameters named in ``adapted``
    move (step k: θ ← θ − lrs[k] ∇_θ ℓ on those names); the others stay at the network's values.
    Detached (first-order bookkeeping: nothing is differentiated through). The inner loop is
    :func:`linmaml.meta.inner_loop.inner_loop` with the identity transform; ``adapted`` empty or
    ``lrs`` empty: no step."""
    names = _check_names(network, adapted)
    rates = check_rates(lrs, "lrs")
    base = {n: p.detach() for n, p in network.named_parameters()}
    if not names or not rates:
        return dict(base)

    def forward(fast, buffers, x):
        return functional_call(network, {**base, **fast}, (x,))

    with torch.no_grad():
        fast, _ = inner_loop(forward, loss_fn, {n: base[n] for n in names}, meta.Identity(), {}, x_support,
                             y_support, rates)
    return {**base, **{n: v.detach() for n, v in fast.items()}}


def _tasks(tasks, device, dtype):
    """Each task of ``tasks`` as four tensors: an Episode (``to_torch``) or a 4-tuple already."""
    for task in tasks:
        if hasattr(task, "to_torch"):
            yield task.to_torch(device, dtype)
        elif isinstance(task, (tuple, list)) and len(task) == 4:
            yield tuple(task)
        else:
            raise ArgumentTypeError("tasks", f"expected episodes or (x_s, y_s, x_q, y_q) tuples, got "
                                             f"{type(task).__name__}")


def _dtype(network):
    return next(network.parameters()).dtype


def query_accuracies(network: nn.Module, tasks, adapted: Sequence[str], lrs: Sequence[float], *,
                     loss_fn: Callable = F.cross_entropy, device=None) -> np.ndarray:
    """Per-task query accuracy (fractions, float64, shape (len(tasks),)) of ``network`` after adapting
    only ``adapted`` with ``lrs`` (:func:`adapt_parameters`) on each task's support set."""
    out = []
    with torch.no_grad():
        for x_s, y_s, x_q, y_q in _tasks(tasks, device, _dtype(network)):
            params = adapt_parameters(network, x_s, y_s, adapted, lrs, loss_fn)
            logits = functional_call(network, params, (x_q,))
            out.append(float((logits.argmax(dim=-1) == y_q).double().mean()))
    return np.asarray(out, dtype=np.float64)


def freezing_table(learner, tasks, lrs: Sequence[float], *, device=None) -> list[dict]:
    """Raghu et al.'s Table 1 for ``learner``: one row per k = 0 … L−1 with the first k layers of
    :func:`network_layers` frozen at test time and every other parameter the learner adapts adapted
    (k = 0: the learner's own adaptation; k = L−1: the head alone). Rows:
    ``{"frozen": [layer names], "adapted": [parameter names], "accuracies": (tasks,) array}``."""
    check_plain_steps(learner)
    network = network_of(learner)
    layers = network_layers(network)
    adaptable = adapted_names_of(learner, network)
    rows = []
    for k in range(len(layers)):
        frozen = {n for layer in layers[:k] for n in layer.parameters}
        adapted = [n for n in adaptable if n not in frozen]
        rows.append({"frozen": [layer.name for layer in layers[:k]], "adapted": adapted,
                     "accuracies": query_accuracies(network, tasks, adapted, lrs, device=device)})
    return rows


def check_plain_steps(learner) -> None:
    """``ArgumentError`` naming ``learner`` when its inner loop is not plain gradient steps: the
    measurements here adapt with θ ← θ − α∇ℓ (a learned transform such as KFO or Meta-SGD would be
    silently dropped, and it is built for the learner's own adapted set only)."""
    transform = getattr(learner, "transform", None)
    if transform is not None and not isinstance(transform, meta.Identity):
        raise ArgumentError("learner", f"its inner loop uses a learned transform ({type(transform).__name__}); "
                                       f"these measurements take plain gradient steps (a learner without one)")


def adapted_names_of(learner, network: nn.Module | None = None) -> list[str]:
    """The parameters ``learner`` adapts, in :func:`network_of` names (ANIL's head names get ``head.``;
    a bare module: all of its parameters)."""
    network = network_of(learner) if network is None else network
    names = list(getattr(learner, "adapted_names", [n for n, _ in network.named_parameters()]))
    if isinstance(learner, meta.ANIL):
        names = ["head." + n for n in names]
    return names


# --- representations ------------------------------------------------------------------------------------

def layer_outputs(network: nn.Module, params: Mapping[str, torch.Tensor], x, layers: Sequence[str]
                  ) -> dict[str, torch.Tensor]:
    """``{layer: (n, features)}``: the outputs of the named submodules, flattened per example, when
    ``network`` runs on ``x (n, …)`` with the parameters ``params`` (forward hooks; detached)."""
    modules = dict(network.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ArgumentError("layers", f"the network has no module named {missing[0]!r}")
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, inputs, output):
            outputs[name] = output.detach().flatten(1)
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    try:
        with torch.no_grad():
            functional_call(network, dict(params), (x,))
    finally:
        for handle in handles:
            handle.remove()
    return {name: outputs[name] for name in layers}


def penultimate_features(network: nn.Module, params: Mapping[str, torch.Tensor], x) -> torch.Tensor:
    """``(n, d)``: what the last layer of :func:`network_layers` (the head) receives on ``x (n, …)``,
    flattened per example, with the parameters ``params``; the head's own output is not used."""
    head = dict(network.named_modules())[network_layers(network)[-1].name]
    captured = []

    def hook(module, inputs):
        captured.append(inputs[0].detach().flatten(1))

    handle = head.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            functional_call(network, dict(params), (x,))
    finally:
        handle.remove()
    return captured[-1]


def cka_before_after(learner, tasks, lrs: Sequence[float], *, device=None) -> dict[str, np.ndarray]:
    """``{layer: (tasks,) CKA}``: for each layer of :func:`network_layers`, linear CKA between its
    outputs on each task's query set under the meta-learned θ and under θ' adapted by the learner's
    adapted parameters with ``lrs`` on the support set (Raghu et al.'s representation similarity
    before and after the inner loop)."""
    check_plain_steps(learner)
    network = network_of(learner)
    names = [layer.name for layer in network_layers(network)]
    adapted = adapted_names_of(learner, network)
    base = {n: p.detach() for n, p in network.named_parameters()}
    out = {name: [] for name in names}
    with torch.no_grad():
        for x_s, y_s, x_q, _ in _tasks(tasks, device, _dtype(network)):
            fast = adapt_parameters(network, x_s, y_s, adapted, lrs)
            before, after = layer_outputs(network, base, x_q, names), layer_outputs(network, fast, x_q, names)
            for name in names:
                out[name].append(linear_cka(before[name], after[name]))
    return {name: np.asarray(v, dtype=np.float64) for name, v in out.items()}


def nil_accuracies(learner, tasks, *, ways: int | None = None, device=None) -> dict[str, np.ndarray]:
    """NIL (no inner loop; Raghu et al. 2020, Section 5): per-task query accuracies (fractions, float64)
    when the head is removed and each query example gets the class c whose mean penultimate support
    feature m_c (:func:`penultimate_features` at the meta-learned θ; the support and query sets each
    pass through the network as one batch) is nearest: ``{"cosine": argmax_c cos(f, m_c),
    "euclidean": argmin_c ‖f − m_c‖}``. Classes are 0 … ways−1 (default: one more than the largest
    support label); a class with no support example is never predicted."""
    network = network_of(learner)
    base = {n: p.detach() for n, p in network.named_parameters()}
    cosine, euclidean = [], []
    for x_s, y_s, x_q, y_q in _tasks(tasks, device, _dtype(network)):
        f_s = penultimate_features(network, base, x_s).double()
        f_q = penultimate_features(network, base, x_q).double()
        classes = int(y_s.max()) + 1 if ways is None else ways
        means = torch.full((classes, f_s.shape[1]), float("nan"), dtype=torch.float64, device=f_s.device)
        for c in range(classes):
            members = f_s[y_s == c]
            if members.shape[0]:
                means[c] = members.mean(dim=0)
        present = ~torch.isnan(means[:, 0])
        similarity = F.normalize(f_q, dim=1) @ F.normalize(torch.nan_to_num(means), dim=1).T
        similarity[:, ~present] = -float("inf")
        distance = torch.cdist(f_q, torch.nan_to_num(means))
        distance[:, ~present] = float("inf")
        cosine.append(float((similarity.argmax(dim=1) == y_q).double().mean()))
        euclidean.append(float((distance.argmin(dim=1) == y_q).double().mean()))
    return {"cosine": np.asarray(cosine, dtype=np.float64), "euclidean": np.asarray(euclidean, dtype=np.float64)}


def network_similarity(first, second, tasks, *, device=None, adapted: bool = False,
                       lrs: Sequence[float] = ()) -> dict[str, np.ndarray]:
    """``{layer: (tasks,) CKA}``: linear CKA between two networks' layer outputs on the same query
    examples of each task (the layers of :func:`network_layers`, which must have the same names in
    both, e.g. a MAML- and an ANIL-trained ConvNet). At the meta-learned parameters; ``adapted=True``
    after each learner's own adaptation with ``lrs`` on the support set."""
    if adapted:
        check_plain_steps(first)
        check_plain_steps(second)
    nets = [network_of(first), network_of(second)]
    names = [[layer.name for layer in network_layers(net)] for net in nets]
    if names[0] != names[1]:
        raise ArgumentError("second", f"its layers {names[1]} differ from the first network's {names[0]}")
    learners = (first, second)
    out = {name: [] for name in names[0]}
    with torch.no_grad():
        for x_s, y_s, x_q, _ in _tasks(tasks, device, _dtype(nets[0])):
            reps = []
            for learner, net in zip(learners, nets):
                params = adapt_parameters(net, x_s, y_s, adapted_names_of(learner, net), lrs) if adapted else \
                    {n: p.detach() for n, p in net.named_parameters()}
                reps.append(layer_outputs(net, params, x_q, names[0]))
            for name in names[0]:
                out[name].append(linear_cka(reps[0][name], reps[1][name]))
    return {name: np.asarray(v, dtype=np.float64) for name, v in out.items()}


def feature_reuse_report(learner, tasks, lrs: Sequence[float], *, ways: int | None = None, device=None) -> dict:
    """Raghu et al.'s three measurements of one network on the same ``tasks`` (``linmaml analyze
    --feature-reuse``): the freezing table (:func:`freezing_table`, accuracies in percent with a 95 %
    Student-t interval over tasks and the paired difference to the learner's own adaptation), CKA of
    each layer before vs after the inner loop (:func:`cka_before_after`, mean over tasks) and NIL
    (:func:`nil_accuracies`, percent, paired against the own adaptation)."""
    def percent(values):
        mean, half = mean_ci(100 * np.asarray(values, dtype=np.float64))
        return {"mean": float(mean), "ci95": float(half)}

    rows = freezing_table(learner, tasks, lrs, device=device)
    own = rows[0]["accuracies"]
    freezing = [{"frozen": row["frozen"], "accuracy": percent(row["accuracies"]),
                 "minus_own": percent(row["accuracies"] - own)} for row in rows]
    cka = {name: float(np.mean(values)) for name, values in cka_before_after(learner, tasks, lrs,
                                                                               device=device).items()}
    nil = {kind: {"accuracy": percent(values), "minus_own": percent(values - own)}
           for kind, values in nil_accuracies(learner, tasks, ways=ways, device=device).items()}
    return {"tasks": int(len(own)), "inner_lrs": [float(lr) for lr in lrs], "own": percent(own),
            "freezing": freezing, "cka_before_after": cka, "nil": nil}
