"""Where adaptation happens in a meta-trained network, layer by layer (``linmaml analyze``).

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
  Blocks are the CNN's conv blocks (``…block{i}``), then every module that holds parameters
  directly (the linear head, LinNet's layers), in model order; a parameter's CKA is its block's.
* **Adaptation ablation**: query accuracy (percent, mean and 95% CI over tasks) when only a subset
  of the parameters adapts and the others stay at θ: all, the head (everything after the last conv
  block: the linear head and any LinNet layers, i.e. what ANIL adapts), all but the head, each
  conv block alone, and none (0 steps: the accuracy before adaptation). The subset is adapted by
  the learner's own inner loop (same steps, rates and transform, restricted to those tensors). An
  ANIL learner can only adapt its head; rows it cannot run are left out.
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
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linmaml import _validate, meta
from linmaml.errors import ArgumentError, ArgumentTypeError

__all__ = ["linear_cka", "accuracy_before_adaptation", "block_names", "parameter_blocks", "base_parameters", "adapt_subset", "analyze_learner",
           "bottom_preconditioner", "load_run", "analyze_run", "format_table"]


# --- the measurements ---------------------------------------------------------------------------------

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


def _model(learner) -> nn.Module:
    """The network whose parameters the analysis names: MAML's model, or ANIL's features + head."""
    if isinstance(learner, meta.MAML):
        return learner.model
    if isinstance(learner, meta.ANIL):
        return nn.ModuleDict({"features": learner.features, "head": learner.head})
    raise ArgumentTypeError("learner", f"expected a linmaml.meta MAML or ANIL learner, got {type(learner).__name__}")


def _prefix(learner) -> str:
    """How ``learner.adapt``'s keys map into :func:`_model`'s names (ANIL's are the head's own)."""
    return "head." if isinstance(learner, meta.ANIL) else ""


def base_parameters(learner) -> dict[str, torch.Tensor]:
    """The meta-learned parameters θ, keyed by :func:`_model` names (``features.block0.conv.weight`` …)."""
    return dict(_model(learner).named_parameters())


def block_names(learner) -> list[str]:
    """The blocks whose outputs CKA compares (module docstring), in model order."""
    blocks = []
    for name, module in _model(learner).named_modules():
        if not name or any(name.startswith(b + ".") for b in blocks):
            continue
        if type(module).__name__ == "ConvBlock" or any(True for _ in module.parameters(recurse=False)):
            blocks.append(name)
    return blocks


def parameter_blocks(learner) -> dict[str, str]:
    """Parameter name -> the block that holds it (longest matching block prefix)."""
    blocks = block_names(learner)
    out = {}
    for name in base_parameters(learner):
        owners = [b for b in blocks if name.startswith(b + ".")]
        out[name] = max(owners, key=len) if owners else None
    return out


def head_names(learner) -> list[str]:
    """Everything after the last conv block: the linear head and any LinNet layers (ANIL's head)."""
    names = list(base_parameters(learner))
    if isinstance(learner, meta.ANIL):
        return [n for n in names if n.startswith("head.")]
    conv = [b for b in block_names(learner) if b.rsplit(".", 1)[-1].startswith("block")]
    if not conv:
        return meta.head_parameter_names(learner.model)
    last = max(i for i, n in enumerate(names) if any(n.startswith(b + ".") for b in conv))
    return names[last + 1:]


def adaptable_names(learner) -> list[str]:
    """The parameters the learner's inner loop adapts, in :func:`_model` names."""
    return [_prefix(learner) + n for n in learner.adapted_names]


@contextlib.contextmanager
def adapt_subset(learner, names):
    """Within the block, ``learner.adapt`` adapts only ``names`` (:func:`_model` names, a subset of
    :func:`adaptable_names`) with its own inner loop and transform; restored on exit."""
    allowed = adaptable_names(learner)
    missing = [n for n in names if n not in allowed]
    if missing or not names:
        raise ArgumentError("names", f"expected a non-empty subset of the adapted parameters, got {missing or names}")
    previous = learner.adapted_names
    prefix = _prefix(learner)
    learner.adapted_names = [n[len(prefix):] for n in allowed if n in set(names)]
    try:
        yield learner
    finally:
        learner.adapted_names = previous


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
        modules = dict(_model(learner).named_modules())
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


def ablation_subsets(learner) -> list[tuple[str, list[str]]]:
    """``(label, names)`` of the ablation rows this learner can run (module docstring); ``[]`` is none."""
    adaptable = adaptable_names(learner)
    head = [n for n in head_names(learner) if n in adaptable]
    rows = [("all", adaptable)]
    if head and head != adaptable:
        rows.append(("head", head))
        rows.append(("all but head", [n for n in adaptable if n not in head]))
    owner = parameter_blocks(learner)
    for block in block_names(learner):
        if not block.rsplit(".", 1)[-1].startswith("block"):
            continue
        names = [n for n in adaptable if owner[n] == block]
        if names and names != adaptable:
            rows.append((block, names))
    rows.append(("none", []))
    return rows


def _progress(stream, label, total):
    """``tick(done)``: a line on ``stream`` at most every 10 s with the tasks done and an ETA measured
    past the first task (:class:`~linmaml.benchmarks.progress.RemainingTime`: none before 3 tasks)."""
    from linmaml.benchmarks.progress import RemainingTime, eta_words

    started = time.perf_counter()
    last = [started]  # the first line after 10 s, not after the first (warm-up) task
    remaining = RemainingTime(total)

    def tick(done):
        now = time.perf_counter()
        eta = remaining.update(done, now - started)
        if stream is None or (now - last[0] < 10 and done < total):
            return
        last[0] = now
        from linmaml.benchmarks.progress import safe_write

        safe_write(stream, f"{label}: {done}/{total} tasks  {now - started:.0f} s"
                           + ("" if done == total else f"  {eta_words(eta)}") + "\n")
    return tick


def analyze_learner(learner, tasks, *, steps: int, spectrum_tasks: int = 20, device=None, dtype=None,
                    stream=None, channels_last: bool = False) -> dict:
    """Every measurement of the module docstring over ``tasks`` (a sequence of episodes with
    ``to_torch(device, dtype)``; ``x (n, C, H, W)``, ``y (n,)``).

    Adaptation and scoring go through the engine (:meth:`Engine.score` for every ablation row,
    :meth:`Engine.adapted` for the adapted weights behind the updates and CKA); ``channels_last``
    lays the images out channels-last for the engine (the built-in ConvNet's faster layout; same values).

    Returns ``{"layers": [{"name", "block", "adapted", "relative_update", "cka"}], "blocks": [{"name",
    "cka"}], "ablation": [{"label", "adapted", "accuracy", "ci95"}], "preconditioner": {...} | None,
    "tasks", "steps"}``, accuracies in percent.
    """
    from linmaml.benchmarks.scoring import mean_ci95, model_layout
    from linmaml.meta.engine import Engine

    from linmaml import meta

    if isinstance(learner, (meta.ProtoNet, meta.R2D2)):
        # a closed-form head has no inner loop: no update, no preconditioner, nothing adapts layer by layer
        raise ArgumentError("learner", f"{type(learner).__name__} has no inner loop to analyse (its head is "
                                       f"computed in closed form from the support features); analyze takes MAML- "
                                       f"and ANIL-style learners")
    steps = _validate.integer(steps, "steps", minimum=1)
    spectrum_tasks = _validate.integer(spectrum_tasks, "spectrum_tasks", minimum=0)
    if len(tasks) < 2:
        raise ArgumentError("tasks", f"a confidence interval needs at least 2 tasks, got {len(tasks)}")
    learner.train()  # BatchNorm with batch statistics, as in training
    base = {n: p.detach() for n, p in base_parameters(learner).items()}
    blocks, owner = block_names(learner), parameter_blocks(learner)
    adaptable = set(adaptable_names(learner))
    subsets = ablation_subsets(learner)
    norms = {n: float(torch.linalg.vector_norm(p.detach().double())) for n, p in base.items()}
    rel = {n: [] for n in base}
    cka = {b: [] for b in blocks}
    correct = {label: [] for label, _ in subsets}
    spectra = []
    engine, prefix = Engine(learner, F.cross_entropy, strategy="loop"), _prefix(learner)
    capture = _Capture(learner, blocks)
    tick = _progress(stream, "analyze", len(tasks))
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
                with adapt_subset(learner, names):
                    _, accuracy = engine.score(*batch, steps=steps)
                    fast = engine.adapted(*batch[:2], steps=steps) if label == "all" else None
                correct[label].append(float(accuracy[0]))
                if fast is not None:
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
            tick(i + 1)
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
            "preconditioner": _summarize_spectra(learner, spectra), "tasks": len(tasks), "steps": steps}


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


def _summarize_spectra(learner, spectra) -> dict | None:
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


# --- runs ----------------------------------------------------------------------------------------------

def load_run(path, model=None):
    """``(config, learner, file)`` from a run folder (its ``best.pt``, else the newest valid ``last.pt``)
    or a checkpoint file written by ``linmaml train``. Missing → FileNotFoundError; corrupt or foreign
    → ValueError, each naming the path. ``model``: a freshly built module of the architecture a run on
    your own model trained (``train(model=...)``; ValueError naming ``model`` if it does not match)."""
    from linmaml.benchmarks import checkpoint
    from linmaml.benchmarks.config import build_from_config, check_model_matches

    path = Path(path)
    if path.is_dir():
        file = path / checkpoint.BEST
        if file.exists():
            payload = checkpoint.load(file)
        else:
            found = checkpoint.latest(path)
            if found is None:
                raise FileNotFoundError(f"run: {path} holds no checkpoint ({checkpoint.BEST} or {checkpoint.LAST})")
            payload, file = found
    elif path.exists():
        file, payload = path, checkpoint.load(path)
    else:
        raise FileNotFoundError(f"run: {path} does not exist")
    from linmaml.benchmarks.loading import check_run_payload, load_weights

    try:
        # the same checks as evaluate: settings, image shape, weights finite and fitting the network
        config = check_run_payload(payload, file)
        check_model_matches(config, model, where=f"the run in {file}")
        # in the run's dtype before loading, so float64 weights are not rounded through float32
        learner = build_from_config(config, tuple(payload["image_shape"]), model).to(dtype=config.torch_dtype)
        load_weights(learner, payload, file)
    except ArgumentError as error:
        if error.argument != "checkpoint":
            raise
        raise ArgumentError("run", error.detail) from None
    return config, learner.to(dtype=config.torch_dtype), file


def analyze_run(path, *, tasks: int = 600, steps: int | None = None, spectrum_tasks: int = 20, data_root=None,
                splits=None, stream=None, model=None) -> dict:
    """:func:`analyze_learner` on a trained run, on the first ``tasks`` fixed test tasks of
    ``linmaml evaluate`` (task seed 0, the run's ``test_query`` per class). ``steps`` defaults to the
    run's ``test_steps``; ``model`` as in :func:`load_run`. Adds ``run``, ``checkpoint``,
    ``iteration``-free ``settings``."""
    from linmaml.benchmarks import episodes

    tasks = _validate.integer(tasks, "tasks", minimum=2)
    config, learner, file = load_run(path, model)
    steps = config.test_steps if steps is None else _validate.integer(steps, "steps", minimum=1)
    if splits is None:
        from linmaml.benchmarks.config import data_options
        from linmaml.benchmarks.data import load_splits

        splits = load_splits(config.benchmark, ("test",), data_root, **data_options(config))
    task_set = episodes.evaluation_tasks(splits["test"], config.ways, config.shots, config.test_query, count=tasks,
                                         seed=0)
    started = time.perf_counter()
    # channels-last only for the built-in ConvNet: a user's model may reshape with .view()
    result = analyze_learner(learner, task_set, steps=steps, spectrum_tasks=spectrum_tasks, dtype=config.torch_dtype,
                             stream=stream, channels_last=config.model is None)
    result["checkpoint"] = str(file)
    result["settings"] = {k: getattr(config, k) for k in ("benchmark", "ways", "shots", "algo", "transform", "linnet",
                                                          "layers", "hidden", "pool", "inner_lr", "test_query")}
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def format_table(result: dict) -> str:
    """The analysis as plain-text tables (per layer, ablation, preconditioner spectrum)."""
    def num(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [f"{'parameter':<34} {'shape':<16} {'|dθ|/|θ|':>10} {'CKA(block)':>11}"]
    for row in result["layers"]:
        lines.append(f"{row['name']:<34} {'x'.join(map(str, row['shape'])):<16} "
                     f"{num(row['relative_update'], '.4f'):>10} {num(row['cka'], '.4f'):>11}")
    lines.append("")
    lines.append(f"{'adapted':<34} {'accuracy %':>11} {'ci95':>7}")
    for row in result["ablation"]:
        lines.append(f"{row['label']:<34} {row['accuracy']:>11.2f} {row['ci95']:>7.2f}")
    pre = result.get("preconditioner")
    if pre:
        top = ", ".join(f"{v:.3g}" for v in pre["eigenvalues"][:5])
        plain = ", ".join(f"{v:.3g}" for v in pre["eigenvalues_plain"][:5])
        lines += ["", f"bottom-layer preconditioner on {pre['parameter']} ({pre['tasks']} tasks):",
                  f"  sym(J U J^T) top eigenvalues {top}  condition {num(pre['condition'], '.3g')}",
                  f"  J J^T        top eigenvalues {plain}  condition {num(pre['condition_plain'], '.3g')}"]
        if "kfo_left" in pre:
            lines.append(f"  KFO L^T L eigenvalues {min(pre['kfo_left']):.3g}..{max(pre['kfo_left']):.3g}, "
                         f"R^T R {min(pre['kfo_right']):.3g}..{max(pre['kfo_right']):.3g}")
    return "\n".join(lines)


ALGO_WORDS = {"maml": "second-order MAML (every parameter adapts)", "fomaml": "first-order MAML (every parameter "
              "adapts)", "anil": "ANIL (only the head adapts)"}
TRANSFORM_WORDS = {"none": "plain gradient inner step", "kfo": "KFO inner step (LᵀL)G(RᵀR)",
                   "metasgd": "Meta-SGD inner step", "metacurvature": "Meta-Curvature inner step",
                   "rates": "learned per-step inner rates"}


def describe_run(result: dict) -> str:
    """The figure's title in words (not the settings' keys): algorithm, inner step, network, tasks, steps."""
    s, steps = result.get("settings", {}), result["steps"]
    algo, transform = s.get("algo", ""), s.get("transform", "")
    words = [ALGO_WORDS.get(algo, algo), TRANSFORM_WORDS.get(transform, transform)]
    if s.get("linnet"):
        words.append(f"{s['linnet']} LinNet layers")
    return (", ".join(w for w in words if w) + f"; {s.get('layers', '?')} conv blocks × {s.get('hidden', '?')} filters; "
            f"{result['tasks']} test tasks, {steps} inner step{'' if steps == 1 else 's'}")


def draw(result: dict, path) -> None:
    """The analysis as a PNG: relative updates, block CKA, ablation with CIs, preconditioner spectrum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linmaml.plots.figure import save_figure

    fig, axes = plt.subplots(1, 4, figsize=(19, 5.2), gridspec_kw={"width_ratios": [1.6, 1, 1.2, 1]})

    def tick_labels(ax, labels, rotation, fontsize):
        # rotated labels anchored at their right end, so each ends under its own bar
        ax.set_xticks(range(len(labels)), labels, rotation=rotation, fontsize=fontsize, ha="right",
                      rotation_mode="anchor")

    layers = result["layers"]
    ax = axes[0]
    values = [r["relative_update"] or 0.0 for r in layers]
    ax.bar(range(len(layers)), values, color=["C0" if r["adapted"] else "0.7" for r in layers])
    tick_labels(ax, [r["name"] for r in layers], 60, 6)
    ax.set_yscale("symlog", linthresh=1e-4)
    top = max(values, default=1.0)
    ax.set_ylim(0, 4 * max(top, 1e-4))  # room above the tallest bar (the head's, 2.7 in the README's run)
    for i, value in enumerate(values):
        if value == top and value > 0:
            ax.annotate(f"{value:.2g}", (i, value), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel(r"$\|\Delta\theta\| / \|\theta\|$ (mean over tasks)")
    ax.set_title("inner-loop update per tensor (0: does not move; grey: not adapted)", fontsize=9)
    ax = axes[1]
    blocks = result["blocks"]
    ax.bar(range(len(blocks)), [b["cka"] or 0.0 for b in blocks], color="C2")
    tick_labels(ax, [b["name"] for b in blocks], 30, 7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear CKA, query features before vs after")
    ax.set_title("feature reuse (1) vs rapid learning (<1)", fontsize=10)
    ax = axes[2]
    rows = result["ablation"]
    ax.bar(range(len(rows)), [r["accuracy"] for r in rows], yerr=[r["ci95"] for r in rows], capsize=3, color="C1")
    tick_labels(ax, [r["label"] for r in rows], 30, 7)
    low = min(r["accuracy"] - r["ci95"] for r in rows)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_ylabel("query accuracy % (95% CI)")
    ax.set_title("accuracy when only these parameters adapt", fontsize=10)
    ax = axes[3]
    pre = result.get("preconditioner")
    if pre:
        ax.semilogy(np.maximum(pre["eigenvalues"], 1e-12), "o-", ms=3, label=r"sym($J U J^T$)")
        ax.semilogy(np.maximum(pre["eigenvalues_plain"], 1e-12), "s--", ms=3, label=r"$J J^T$")
        ax.legend(fontsize=7)
        ax.set_xlabel("index")
        ax.set_title(f"bottom-layer preconditioner: {pre['parameter']}", fontsize=8)
    else:
        ax.axis("off")
    fig.suptitle(describe_run(result), fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
