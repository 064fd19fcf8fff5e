"""Where adaptation happens in a meta-trained network, layer by layer (``linmaml analyze``): the
measurement. Its table and figure are :mod:`linmaml.plots.layerwise`'s.

Four measurements on a fixed set of test tasks (the same tasks as ``linmaml evaluate``). Each task
gives a support set (x_s, y_s) and a query set (x_q, y_q); θ are the meta-learned parameters and
θ' = adapt(θ; x_s, y_s) the parameters after the learner's inner loop (its own steps, rates and
gradient transform).

* **Relative update** of each parameter tensor: ‖θ'ₚ − θₚ‖_F / ‖θₚ‖_F, averaged over tasks
  (``None`` where ‖θₚ‖ = 0; 0 for a tensor the learner does not adapt). A convolution's bias
  right before a BatchNorm gets a zero gradient (the normalisation subtracts it again), so its
  update is 0 by construction; a tensor meta-trained close to 0 (BatchNorm shifts start at 0)
  can show a large ratio for a small step.
* **CKA** (Raghu et al. 2020, "rapid learning or feature reuse?"): for each *block*, linear CKA
  between its outputs on the query set before (θ) and after (θ') adaptation, averaged over tasks.
  Close to 1: the block's representation is reused; well below 1: it is re-learned per task. With
  X (n, p), Y (n, q) the flattened block outputs of the n query examples, columns centred,

      CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F),

  computed through the n×n Gram matrices (‖YᵀX‖²_F = tr(XXᵀ YYᵀ)), cheap for wide conv features.
  The blocks are found from the network's module structure (:func:`block_names`), or given.
* **Adaptation ablation**: query accuracy (percent, mean and 95% CI over tasks) when only a subset
  of the parameters adapts and the others stay at θ: all, the head (given, or by default what the
  learner calls its head: ANIL's head, else the last ``nn.Linear``), all but the head, each block
  outside the head alone, and none (0 steps: the accuracy before adaptation). The subset is adapted
  by the learner's own inner loop (same steps, rates and transform), told through the engine which
  parameters adapt (``Engine(adapted=...)``); the learner is never modified. An ANIL learner can
  only adapt its head; rows it cannot run are left out.
* **Effective preconditioner of the bottom layer**: let W be the first adapted weight (≥ 2-d) and
  J = ∂f(x_s)/∂W the Jacobian of the support logits (n·ways of them) with respect to it. One inner
  step on W alone, W ← W − α U(∇_W ℓ), moves the logits by ≈ −α J U(Jᵀ ∇_f ℓ), so the matrix

      Θ = J U Jᵀ        (n·ways × n·ways; U the learner's gradient transform on W)

  is the preconditioner the rest of the network (and the transform) applies to the bottom layer's
  step, seen in output space. For a deep *linear* net f = W_L ⋯ W_2 W x with the identity
  transform, Θ = (X Xᵀ) ⊗ (A Aᵀ) with A = W_L ⋯ W_2: the upper layers' product A Aᵀ is exactly the
  implicit preconditioner of DESIGN.md. We report the eigenvalues of Θ's symmetric part (sorted,
  averaged over the first ``spectrum_tasks`` tasks) beside those of the plain J Jᵀ, so the
  transform's own share is visible; and, for KFO, the eigenvalues of its factors LᵀL and RᵀR on W.

Parameter names are those of the learner's network: MAML's model's own, ANIL's ``features.…`` and
``head.…`` (:func:`network`).
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linmaml import _validate, meta
from linmaml.benchmarks.progress import TaskProgress
from linmaml.benchmarks.run import Run
from linmaml.benchmarks.scoring import mean_ci95, model_layout
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.engine import Engine

__all__ = ["linear_cka", "network", "base_parameters", "block_names", "parameter_blocks", "head_names",
           "adaptable_names", "ablation_subsets", "accuracy_before_adaptation", "analyze_learner",
           "bottom_preconditioner", "summarize_spectra", "run_head_names", "analyze_run", "RUN_SETTINGS"]


# --- the network and its blocks -----------------------------------------------------------------------

def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of features ``x (n, p)`` and ``y (n, q)`` (rows: the same n examples), in float64.

    Columns are centred first. Returns a number in [0, 1]; 1 when y is an orthogonal transform or an
    isotropic scaling of x. Defined as 0 when either side is constant (no variance at all)."""
    for value, name in ((x, "x"), (y, "y")):
        if not isinstance(value, torch.Tensor) or value.ndim != 2:
            raise ArgumentError(name, f"expected a 2-d tensor (examples, features), got "
                                      f"{getattr(value, 'shape', type(value).__name__)}")
    if x.shape[0] != y.shape[0]:
        raise ArgumentError("y", f"expected {x.shape[0]} rows (one per example, as x), got {y.shape[0]}")
    x = x.detach().double()
    y = y.detach().double()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    # Gram form: ‖YᵀX‖²_F = tr(K L), ‖XᵀX‖_F = ‖K‖_F with K = XXᵀ, L = YYᵀ (n×n, small for few-shot).
    k, l = x @ x.T, y @ y.T
    denominator = float(torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l))
    if denominator == 0.0:
        return 0.0
    return float((k * l).sum()) / denominator


def network(learner) -> nn.Module:
    """The network whose parameters the analysis names: MAML's model, or ANIL's features and head
    as ``{"features": …, "head": …}``."""
    if isinstance(learner, meta.MAML):
        return learner.model
    if isinstance(learner, meta.ANIL):
        return nn.ModuleDict({"features": learner.features, "head": learner.head})
    raise ArgumentTypeError("learner", f"expected a linmaml.meta MAML or ANIL learner, got {type(learner).__name__}")


def _prefix(learner) -> str:
    """How ``learner.adapt``'s keys map into :func:`network`'s names (ANIL's are its head's own)."""
    return "head." if isinstance(learner, meta.ANIL) else ""


def base_parameters(learner) -> dict[str, torch.Tensor]:
    """The meta-learned parameters θ, keyed by :func:`network` names (``features.block0.conv.weight`` …)."""
    return dict(network(learner).named_parameters())


def _structural_blocks(module: nn.Module, prefix: str, out: list[str]) -> None:
    sequence = isinstance(module, nn.Sequential)
    for name, child in module.named_children():
        if not any(True for _ in child.parameters()):
            continue
        full = prefix + name
        if isinstance(child, nn.Sequential):  # a sequence inside a sequence: its stages are the blocks
            _structural_blocks(child, full + ".", out)
        elif sequence or any(True for _ in child.parameters(recurse=False)):
            out.append(full)
        else:
            _structural_blocks(child, full + ".", out)


def block_names(learner, blocks=None) -> list[str]:
    """The blocks whose outputs CKA compares, in model order: ``blocks`` (module names of
    :func:`network`) if given, else found from the module structure. Walking the network's
    submodules in order, a stage of an ``nn.Sequential`` that holds parameters is a block (a
    sequence nested in a sequence is walked into: its stages are the blocks), and any other module
    holding parameters of its own is a block; nothing inside a block is another. The built-in
    ConvNet gives its conv blocks and its head; LinNet adds one block per linear layer; a plain
    ``nn.Sequential`` of layers gives its layers. The network itself is never a block."""
    modules = dict(network(learner).named_modules())
    if blocks is not None:
        if isinstance(blocks, str) or not all(isinstance(b, str) for b in blocks):
            raise ArgumentTypeError("blocks", "expected a list of module names")
        missing = [b for b in blocks if b not in modules or not b]
        if missing:
            raise ArgumentError("blocks", f"the network has no submodule {missing[0]!r}")
        return list(blocks)
    out: list[str] = []
    _structural_blocks(network(learner), "", out)
    return out


def parameter_blocks(learner, blocks=None) -> dict[str, str | None]:
    """Parameter name -> the block that holds it (the innermost; None outside every block)."""
    blocks = block_names(learner, blocks)
    out = {}
    for name in base_parameters(learner):
        owners = [b for b in blocks if name.startswith(b + ".")]
        out[name] = max(owners, key=len) if owners else None
    return out


def adaptable_names(learner) -> list[str]:
    """The parameters the learner's inner loop adapts, in :func:`network` names."""
    return [_prefix(learner) + n for n in learner.adapted_names]


def head_names(learner, head=None) -> list[str]:
    """The head's parameters in :func:`network` names: ``head`` if given (a list of names), else
    ANIL's head, else the model's last ``nn.Linear`` (:func:`linmaml.meta.head_parameter_names`,
    what ``MAML(adapted="head")`` adapts)."""
    names = list(base_parameters(learner))
    if head is not None:
        if isinstance(head, str) or not all(isinstance(n, str) for n in head):
            raise ArgumentTypeError("head", "expected a list of parameter names")
        missing = [n for n in head if n not in names]
        if missing:
            raise ArgumentError("head", f"the network has no parameter {missing[0]!r}")
        return [n for n in names if n in set(head)]
    if isinstance(learner, meta.ANIL):
        return [f"head.{n}" for n, _ in learner.head.named_parameters()]
    return meta.head_parameter_names(learner.model)


def ablation_subsets(learner, blocks=None, head=None) -> list[tuple[str, list[str]]]:
    """``(label, names)`` of the ablation rows this learner can run (module docstring), in order:
    all, head, all but head, each block outside the head alone, none (``[]``)."""
    adaptable = adaptable_names(learner)
    head = [n for n in head_names(learner, head) if n in adaptable]
    rows = [("all", adaptable)]
    if head and head != adaptable:
        rows.append(("head", head))
        rows.append(("all but head", [n for n in adaptable if n not in head]))
    owner = parameter_blocks(learner, blocks)
    for block in block_names(learner, blocks):
        names = [n for n in adaptable if owner[n] == block]
        if names and names != adaptable and not set(names) & set(head):
            rows.append((block, names))
    rows.append(("none", []))
    return rows


def _logits(learner, x, params):
    if isinstance(learner, meta.ANIL):
        head = {n[len("head."):]: v for n, v in params.items() if n.startswith("head.")}
        features = torch.func.functional_call(learner.features, {n[len("features."):]: v for n, v in params.items()
                                                                 if n.startswith("features.")}, (x,))
        return torch.func.functional_call(learner.head, head, (features,))
    return learner(x, params=params)


class _Capture:
    """Forward hooks that record the blocks' outputs, only while ``active``."""

    def __init__(self, learner, blocks):
        modules = dict(network(learner).named_modules())
        self.active, self.outputs = False, {}
        self.handles = [modules[b].register_forward_hook(self._hook(b)) for b in blocks]

    def _hook(self, name):
        def hook(module, inputs, output):
            if self.active:
                self.outputs[name] = output.detach().flatten(1)
        return hook

    @contextlib.contextmanager
    def record(self):
        self.outputs, self.active = {}, True
        try:
            yield self.outputs
        finally:
            self.active = False

    def close(self):
        for handle in self.handles:
            handle.remove()


def _accuracy(logits, y) -> float:
    return float((logits.argmax(dim=1) == y).double().mean())


def accuracy_before_adaptation(learner, tasks, *, device=None, dtype=None) -> np.ndarray:
    """Per-task query accuracy (fractions, float64) of the meta-learned θ with no inner step (0 steps):
    the "learns good features" part of a learner's accuracy, without the "adapts" part."""
    learner.train()
    base = {n: p.detach() for n, p in base_parameters(learner).items()}
    out = []
    with torch.no_grad():
        for i in range(len(tasks)):
            _, _, xq, yq = tasks[i].to_torch(device, dtype)
            out.append(_accuracy(_logits(learner, xq, base), yq))
    return np.asarray(out, dtype=np.float64)


# --- the measurement ------------------------------------------------------------------------------------

def analyze_learner(learner, tasks, *, steps: int, spectrum_tasks: int = 20, device=None, dtype=None,
                    stream=None, channels_last: bool = False, blocks=None, head=None) -> dict:
    """Every measurement of the module docstring over ``tasks`` (a sequence of episodes with
    ``to_torch(device, dtype)``; ``x (n, C, H, W)``, ``y (n,)``).

    Adaptation and scoring go through the engine (:meth:`Engine.score` for every ablation row, with
    ``Engine(adapted=...)`` naming the parameters that adapt; :meth:`Engine.adapted` for the adapted
    weights behind the updates and CKA); ``channels_last`` lays the images out channels-last for the
    engine (the built-in ConvNet's faster layout; same values). ``blocks`` (module names) and
    ``head`` (parameter names), both in :func:`network` names, override the discovered ones.
    ``stream``: a status line with the tasks done and an ETA
    (:class:`~linmaml.benchmarks.progress.TaskProgress`). The learner is not modified.

    Returns ``{"layers": [{"name", "block", "adapted", "shape", "relative_update", "cka"}], "blocks":
    [{"name", "cka"}], "ablation": [{"label", "adapted", "accuracy", "ci95"}], "preconditioner": {...}
    | None, "tasks", "steps"}``, accuracies in percent.
    """
    if isinstance(learner, (meta.ProtoNet, meta.R2D2)):
        # a closed-form head has no inner loop: no update, no preconditioner, nothing adapts layer by layer
        raise ArgumentError("learner", f"{type(learner).__name__} has no inner loop to analyse (its head is "
                                       f"computed in closed form from the support features); analyze takes MAML- "
                                       f"and ANIL-style learners")
    network(learner)  # a MAML or ANIL learner, else named
    steps = _validate.integer(steps, "steps", minimum=1)
    spectrum_tasks = _validate.integer(spectrum_tasks, "spectrum_tasks", minimum=0)
    if len(tasks) < 2:
        raise ArgumentError("tasks", f"a confidence interval needs at least 2 tasks, got {len(tasks)}")
    learner.train()  # BatchNorm with batch statistics, as in training
    base = {n: p.detach() for n, p in base_parameters(learner).items()}
    blocks = block_names(learner, blocks)
    owner = parameter_blocks(learner, blocks)
    adaptable = set(adaptable_names(learner))
    subsets = ablation_subsets(learner, blocks, head)
    prefix = _prefix(learner)
    # one engine per row, each told what adapts (in the learner's own names); "all" adapts what the learner does
    engines = {label: Engine(learner, F.cross_entropy, strategy="loop",
                             adapted=None if label == "all" else [n[len(prefix):] for n in names])
               for label, names in subsets if label != "none"}
    norms = {n: float(torch.linalg.vector_norm(p.detach().double())) for n, p in base.items()}
    rel = {n: [] for n in base}
    cka = {b: [] for b in blocks}
    correct = {label: [] for label, _ in subsets}
    spectra = []
    capture = _Capture(learner, blocks)
    status = TaskProgress("analyze", stream, enabled=stream is not None)
    started = time.perf_counter()
    try:
        for i in range(len(tasks)):
            xs, ys, xq, yq = tasks[i].to_torch(device, dtype)
            batch = (xs[None], ys[None], xq[None], yq[None])  # one task
            batch = model_layout(batch) if channels_last else batch
            with torch.no_grad(), capture.record() as before:
                logits0 = _logits(learner, xq, base)
            for label, names in subsets:
                if label == "none":
                    correct[label].append(_accuracy(logits0, yq))
                    continue
                _, accuracy = engines[label].score(*batch, steps=steps)
                correct[label].append(float(accuracy[0]))
                if label == "all":
                    fast = engines[label].adapted(*batch[:2], steps=steps)
                    fast = {**base, **{prefix + n: v[0] for n, v in fast.items()}}
                    for n in base:
                        delta = float(torch.linalg.vector_norm((fast[n] - base[n]).double()))
                        rel[n].append(delta / norms[n] if norms[n] > 0 else math.nan)
                    with torch.no_grad(), capture.record() as after:
                        _logits(learner, xq, fast)
                    for b in blocks:
                        cka[b].append(linear_cka(before[b], after[b]))
            if i < spectrum_tasks:
                spectra.append(bottom_preconditioner(learner, xs))
            status.on_progress(i + 1, len(tasks), time.perf_counter() - started)
    finally:
        capture.close()

    def mean_or_none(values):
        values = np.asarray(values, dtype=np.float64)
        return None if values.size == 0 or not np.all(np.isfinite(values)) else float(values.mean())

    block_cka = {b: mean_or_none(cka[b]) for b in blocks}
    layers = [{"name": n, "block": owner[n], "adapted": n in adaptable, "shape": list(base[n].shape),
               "relative_update": mean_or_none(rel[n]), "cka": block_cka.get(owner[n])} for n in base]
    ablation = []
    for label, names in subsets:
        accuracy, ci95 = mean_ci95(np.asarray(correct[label]) * 100.0)
        ablation.append({"label": label, "adapted": list(names), "accuracy": accuracy, "ci95": ci95})
    return {"layers": layers, "blocks": [{"name": b, "cka": block_cka[b]} for b in blocks], "ablation": ablation,
            "preconditioner": summarize_spectra(learner, spectra), "tasks": len(tasks), "steps": steps}


def bottom_preconditioner(learner, x_support) -> dict | None:
    """Θ = J U Jᵀ and J Jᵀ of the bottom adapted weight on one support set (module docstring):
    ``{"parameter", "eigenvalues" (Θ's symmetric part, descending), "eigenvalues_plain" (J Jᵀ)}``;
    None if the learner adapts no weight of ≥ 2 dimensions."""
    base = base_parameters(learner)
    weights = [n for n in adaptable_names(learner) if base[n].ndim >= 2]
    if not weights:
        return None
    name = weights[0]
    key = name[len(_prefix(learner)):]
    w = base[name].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = _logits(learner, x_support, {**{n: p.detach() for n, p in base.items()}, name: w}).reshape(-1)
        rows = []
        for k in range(logits.numel()):
            (g,) = torch.autograd.grad(logits[k], w, retain_graph=k + 1 < logits.numel())
            rows.append(g)
    transform = learner.transform
    with torch.no_grad():
        jac = torch.stack([r.reshape(-1) for r in rows]).double()                         # (n·ways, |W|)
        # The first inner step's map (step 0 from the start state), with the transform's own parameters.
        updated = torch.stack([transform.update({key: r})[key].reshape(-1) for r in rows]).double()
        theta = jac @ updated.T                                                            # Θ_ij = ⟨g_i, U(g_j)⟩
        plain = jac @ jac.T
        symmetric = (theta + theta.T) / 2
    return {"parameter": name,
            "eigenvalues": torch.linalg.eigvalsh(symmetric).flip(0).tolist(),
            "eigenvalues_plain": torch.linalg.eigvalsh(plain).flip(0).tolist()}


def summarize_spectra(learner, spectra) -> dict | None:
    """The mean spectra of :func:`bottom_preconditioner`'s results over tasks, their condition
    numbers, and for a KFO transform the spectra of its factors on that weight; None without any."""
    spectra = [s for s in spectra if s is not None]
    if not spectra:
        return None
    theta = np.mean([s["eigenvalues"] for s in spectra], axis=0)
    plain = np.mean([s["eigenvalues_plain"] for s in spectra], axis=0)
    name = spectra[0]["parameter"]
    out = {"parameter": name, "tasks": len(spectra),
           "definition": "eigenvalues of sym(J U J^T), J = d(support logits)/dW, U the inner-loop transform;"
                         " mean over tasks, descending",
           "eigenvalues": theta.tolist(), "eigenvalues_plain": plain.tolist(),
           "condition": _condition(theta), "condition_plain": _condition(plain)}
    if isinstance(learner.transform, meta.KFO) and learner.transform.hidden_layers == 0:
        left, right = learner.transform.preconditioners(name[len(_prefix(learner)):])
        if not learner.transform.psd:  # L G R: report the psd parts' spectra, LᵀL ~ left, R Rᵀ ~ right
            left, right = left.T @ left, right @ right.T
        out["kfo_left"] = torch.linalg.eigvalsh(left.detach().double()).flip(0).tolist()
        out["kfo_right"] = torch.linalg.eigvalsh(right.detach().double()).flip(0).tolist()
    return out


def _condition(eigenvalues) -> float | None:
    """Largest over smallest eigenvalue above 1e-10 of the largest (the numerically nonzero ones)."""
    values = np.asarray(eigenvalues)
    top = values.max() if values.size else 0.0
    if top <= 0:
        return None
    kept = values[values > 1e-10 * top]
    return float(top / kept.min())


# --- a trained run --------------------------------------------------------------------------------------

#: The settings a result records of its run (the figure's title reads them).
RUN_SETTINGS = ("benchmark", "ways", "shots", "algo", "transform", "linnet", "layers", "hidden", "pool", "inner_lr",
                "test_query")


def run_head_names(run) -> list[str] | None:
    """The head of a run's network, in :func:`network` names: for the built-in ConvNet with MAML, its
    linear head and any LinNet layers after it (what ANIL adapts), found by the modules that hold them;
    None otherwise (ANIL's own head, or the last ``nn.Linear`` of your own model: :func:`head_names`)."""
    learner = run.learner
    if run.config.model is not None or not isinstance(learner, meta.MAML):
        return None
    model = learner.model
    backbone = model.model if isinstance(model, meta.LinNet) else model
    held = {id(p) for p in backbone.head.parameters()}
    if isinstance(model, meta.LinNet):
        held |= {id(p) for p in model.linear.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in held]


def analyze_run(path, *, tasks: int = 600, steps: int | None = None, spectrum_tasks: int = 20, data_root=None,
                splits=None, stream=None, model=None) -> dict:
    """:func:`analyze_learner` on a trained run (:meth:`linmaml.benchmarks.run.Run.open`: a run folder,
    best.pt, last.pt or a snapshot), on the first ``tasks`` fixed test tasks of ``linmaml evaluate``
    (task seed 0, the run's ``test_query`` per class). ``steps`` defaults to the run's ``test_steps``;
    ``model`` as for :func:`~linmaml.benchmarks.loading.load_learner`. Adds ``checkpoint``, the run's
    ``settings`` (:data:`RUN_SETTINGS`) and ``seconds``."""
    tasks = _validate.integer(tasks, "tasks", minimum=2)
    if steps is not None:
        steps = _validate.integer(steps, "steps", minimum=1)
    run = Run.open(path, model)
    steps = run.config.test_steps if steps is None else steps
    task_set = run.tasks("test", count=tasks, data_root=data_root, splits=splits, query_name="test_query")
    started = time.perf_counter()
    # channels-last only for the built-in ConvNet: a user's model may reshape with .view()
    result = analyze_learner(run.learner, task_set, steps=steps, spectrum_tasks=spectrum_tasks,
                             dtype=run.config.torch_dtype, stream=stream, channels_last=run.config.model is None,
                             head=run_head_names(run))
    result["checkpoint"] = str(run.file)
    result["settings"] = run.settings(*RUN_SETTINGS)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result
