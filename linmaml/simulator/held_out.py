"""Held-out evaluation: adaptation curves (query loss and accuracy against inner steps) with
mean and 95% confidence intervals over many test tasks.

The confidence interval of a mean over n independent tasks is the Student-t interval
``mean ± t_{(1+level)/2, n−1} · s / √n`` with s the sample standard deviation (ddof = 1).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np
import torch

from linmaml import _validate
from linmaml.errors import ArgumentError
from linmaml.intervals import mean_ci, t_quantile  # noqa: F401 (mean_ci: the simulator's API)
from linmaml.meta import StepsBeyondTrainingWarning
from linmaml.meta.engine import Engine
from linmaml.meta.losses import binary_accuracy
from linmaml.simulator.chains import LinearChain, logits, loss_function, squared_loss


@dataclasses.dataclass(frozen=True)
class AdaptationCurve:
    """Query loss (and accuracy, for classifiers) after 0, 1, …, K inner steps on held-out tasks.

    Arrays have shape (K+1,); ``*_ci`` are the half-widths of the ``level`` confidence intervals;
    accuracy fields are None for the squared loss.
    """

    name: str
    steps: np.ndarray
    loss_mean: np.ndarray
    loss_ci: np.ndarray
    accuracy_mean: np.ndarray | None
    accuracy_ci: np.ndarray | None
    n_tasks: int
    level: float

    @classmethod
    def from_per_task(cls, name: str, per_task: dict, level: float = 0.95) -> "AdaptationCurve":
        """The curve of per-task values ``{"loss": (K+1, T)}`` (plus ``"accuracy"`` (K+1, T)), as
        :func:`learner_curves` and :func:`per_task_curves` give them: the mean over the T tasks and
        its Student-t half-width (:func:`linmaml.intervals.mean_ci`) at every step."""
        loss_mean, loss_ci = mean_ci(per_task["loss"], level, axis=1)
        acc_mean = acc_ci = None
        if "accuracy" in per_task:
            acc_mean, acc_ci = mean_ci(per_task["accuracy"], level, axis=1)
        return cls(name, np.arange(loss_mean.shape[0]), loss_mean, loss_ci, acc_mean, acc_ci,
                   int(np.shape(per_task["loss"])[1]), level)

    def to_dict(self, sizes: bool = True) -> dict:
        """The curve as JSON-ready lists (what :func:`linmaml.plots.curves.adaptation_panel` draws);
        ``sizes=False`` leaves out ``n_tasks`` and ``level`` (a figure records them once, in its settings)."""
        out = {"name": self.name, **({"n_tasks": self.n_tasks, "level": self.level} if sizes else {}),
               "steps": self.steps.tolist(), "loss_mean": self.loss_mean.tolist(), "loss_ci": self.loss_ci.tolist()}
        if self.accuracy_mean is not None:
            out["accuracy_mean"] = self.accuracy_mean.tolist()
            out["accuracy_ci"] = self.accuracy_ci.tolist()
        return out


def learner_curves(learner, tasks, loss_fn, max_steps: int, *, accuracy: bool = False, output=None) -> dict:
    """Per-task query loss after 0…``max_steps`` inner steps of ``learner`` (a :mod:`linmaml.meta`
    learner; its own inner loop and rates), shape (K+1, T); with ``accuracy`` (one logit, float 0/1
    labels) also the per-task query accuracy of the logit's sign (:func:`linmaml.meta.losses.binary_accuracy`).
    The one route of every held-out adaptation curve: the chains' :func:`per_task_curves` and the
    figures' meta-learners.

    ``tasks`` is a stacked :class:`linmaml.tasks.TaskBatch` (numpy or torch; scored in float64),
    ``loss_fn(output, target)`` a scalar per task. The parameters after k ≥ 1 steps are the engine's
    (:meth:`linmaml.meta.engine.Engine.adapted`, the same adaptation :meth:`~linmaml.meta.engine.Engine.score`
    scores); step 0 is the learner's own parameters. Each is scored on the query sets by
    ``output(fast, x)`` with ``fast`` the adapted parameters by the model's own names (``{}`` at step
    0), by default ``learner(x, params=fast)`` as the engine scores (no per-step normalisation
    sets). Steps beyond the
    learner's own are taken without its once-per-learner warning: a curve goes past the trained steps
    on purpose (it shows where a learned transform overshoots)."""
    max_steps = _validate.integer(max_steps, "max_steps", minimum=0)
    T = tasks.torch()
    if accuracy and not (T.Yq.shape[-1] == 1 and bool(((T.Yq == 0) | (T.Yq == 1)).all())):
        raise ArgumentError("tasks", "accuracy needs float 0/1 labels of one logit (a classification family)")
    if output is None:
        def output(fast, x):
            return learner(x, params=fast)
    engine = Engine(learner, loss_fn, strategy="vmap", tasks_per_chunk=None)

    def score(fast, x, y):
        out = output(fast, x)
        return loss_fn(out, y), (binary_accuracy(out, y) if accuracy else torch.zeros((), dtype=torch.float64))

    rows = []
    for k in range(max_steps + 1):
        if k:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StepsBeyondTrainingWarning)
                fast = engine.adapted(T.Xs, T.Ys, steps=k)
        else:
            fast = {}
        with torch.no_grad():
            rows.append(torch.func.vmap(score)(fast, T.Xq, T.Yq))
    out = {"loss": np.stack([loss.numpy() for loss, _ in rows])}
    if accuracy:
        out["accuracy"] = np.stack([acc.numpy() for _, acc in rows])
    return out


def per_task_curves(chain: LinearChain, weights: Sequence[torch.Tensor], tasks, lr, max_steps: int = 10) -> dict:
    """Per-task query loss (and accuracy) of a chain after 0…``max_steps`` plain gradient steps of
    size ``lr`` on the layers ``chain.adapt_layers``: :func:`learner_curves` of the chain's learner
    (:meth:`LinearChain.learner`) with the chain's loss, scored by the end-to-end map as
    :func:`~linmaml.simulator.chains.task_loss` scores (logits X W_eᵀ, the product W_e formed first).

    ``tasks`` is a stacked :class:`linmaml.tasks.TaskBatch` (numpy or torch). Returns
    ``{"loss": (K+1, T)}`` plus ``"accuracy": (K+1, T)`` for the logistic loss.
    """
    max_steps = _validate.integer(max_steps, "max_steps", minimum=0)
    weights = chain.check_weights(weights)
    named = dict(zip(chain.parameter_names(), weights))
    learner = chain.learner(weights, lr, max(max_steps, 1))
    return learner_curves(learner, tasks, loss_function(chain.loss), max_steps, accuracy=chain.loss == "logistic",
                          output=lambda fast, x: logits([fast.get(n, W) for n, W in named.items()], x))


def adaptation_curve(chain: LinearChain, weights: Sequence[torch.Tensor], family, *, lr, max_steps: int = 10,
                     n_tasks: int = 1000, seed: int = 0, level: float = 0.95) -> AdaptationCurve:
    """Mean and confidence band of the held-out adaptation curve over ``n_tasks`` fresh tasks.

    The inner loop takes the same plain gradient steps of size ``lr`` as in meta-training, on the
    layers ``chain.adapt_layers``; tasks come from ``family.sample(n_tasks, seed)``.
    """
    n_tasks = _validate.integer(n_tasks, "n_tasks", minimum=2)
    per_task = per_task_curves(chain, weights, family.sample(n_tasks, seed), lr, max_steps)
    return AdaptationCurve.from_per_task(chain.name, per_task, level)


def ratio_of_means_ci(numerator, denominator, level: float = 0.95) -> tuple[float, float]:
    """``mean(a) / mean(b)`` and its delta-method confidence half-width, for paired samples.

    a and b are per-task values on the same tasks (shape (n,)); the half-width is
    ``t · sqrt(var(a) − 2r·cov(a, b) + r²·var(b)) / (|mean b|·√n)`` with r the ratio.
    """
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ArgumentError("numerator, denominator", f"expected two 1-d arrays of one length, got {a.shape} and {b.shape}")
    n = a.size
    if n < 2:
        raise ArgumentError("numerator", f"expected at least 2 samples, got {n}")
    ratio = a.mean() / b.mean()
    cov = np.cov(a, b, ddof=1)
    variance = cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]
    quantile = t_quantile(n - 1, level)
    return float(ratio), float(quantile * np.sqrt(max(variance, 0.0)) / (abs(b.mean()) * np.sqrt(n)))


# --------------------------------------------------------------------------------------------------
# Paired, exact scoring for the linear regression families


def exact_query_loss(adapted, true, x_cov, noise_std: float) -> np.ndarray:
    """The exact conditional query loss of each task: E over fresh query points and noise of the
    squared loss 1/(2n)·‖X W′ᵀ − Y‖², given the adapted map W′ and the task's true map W_τ, for
    x ~ N(0, Σ) and y = W_τ x + ε, ε ~ N(0, σ² I):

        ½·tr((W′ − W_τ) Σ (W′ − W_τ)ᵀ) + ½·d_out·σ²

    (it does not depend on the number of query points). ``adapted`` and ``true`` have shape
    (T, d_out, d_in) (numpy or torch), ``x_cov`` Σ is (d_in, d_in). Returns (T,) float64.
    """
    A = np.asarray(adapted.detach() if isinstance(adapted, torch.Tensor) else adapted, dtype=np.float64)
    W = np.asarray(true.detach() if isinstance(true, torch.Tensor) else true, dtype=np.float64)
    Sigma = np.asarray(x_cov, dtype=np.float64)
    if A.ndim != 3 or A.shape != W.shape:
        raise ArgumentError("adapted", f"expected two arrays of one shape (T, d_out, d_in), got {A.shape} and {W.shape}")
    if Sigma.shape != (A.shape[2], A.shape[2]):
        raise ArgumentError("x_cov", f"expected shape {(A.shape[2], A.shape[2])}, got {Sigma.shape}")
    noise_std = _validate.finite_number(noise_std, "noise_std", nonnegative=True)
    D = A - W
    return 0.5 * np.einsum("toi,ij,toj->t", D, Sigma, D) + 0.5 * A.shape[1] * noise_std ** 2


def adapted_end_to_end(learner, tasks, steps: int = 1, chunk: int = 4096) -> np.ndarray:
    """The end-to-end linear map (T, d_out, d_in) of a linear :mod:`linmaml.meta` learner after
    ``steps`` inner steps on each task's support set (``tasks`` a :class:`linmaml.tasks.TaskBatch`).

    The adaptation is the engine's own (:meth:`linmaml.meta.engine.Engine.adapted`, squared loss);
    the map is read off by applying the adapted model to the identity input, f(I) = W′ᵀ, which holds
    for any bias-free linear model (a chain, LinNet, a Linear with any transform).
    """
    steps = _validate.integer(steps, "steps", minimum=1)
    engine = Engine(learner, squared_loss, strategy="vmap", tasks_per_chunk=None)
    T = tasks.torch()
    base = {n: p.detach() for n, p in learner.model.named_parameters()}  # the names adapt() uses
    d_in = T.Xs.shape[-1]
    eye = torch.eye(d_in, dtype=T.Xs.dtype)
    out = []
    for start in range(0, T.Xs.shape[0], chunk):
        part = slice(start, start + chunk)
        fast = engine.adapted(T.Xs[part], T.Ys[part], steps=steps)
        with torch.no_grad():
            maps = torch.func.vmap(lambda p: learner(eye, params={**base, **p}))(fast)  # (t, d_in, d_out)
        out.append(maps.transpose(1, 2).numpy())
    return np.concatenate(out)


def paired_exact_losses(maps: dict, family, n_tasks: int, seed: int = 0, chunk: int = 10000) -> dict:
    """Per-task exact conditional query losses of several one-step predictors on the SAME tasks.

    ``maps``: name -> callable(TaskBatch) -> adapted maps (t, d_out, d_in) (e.g. a closure around
    :func:`adapted_end_to_end`, or a closed-form map of the support gradient). ``family`` a
    :class:`linmaml.tasks.RegressionFamily`; the ``n_tasks`` tasks are drawn chunk by chunk from one
    generator seeded by ``seed`` (memory holds one chunk), each chunk handed to every map, and scored
    by :func:`exact_query_loss`. Returns name -> (n_tasks,) float64.
    """
    n_tasks = _validate.integer(n_tasks, "n_tasks", minimum=2)
    chunk = _validate.integer(chunk, "chunk", minimum=1)
    rng = np.random.default_rng(seed)
    out = {name: [] for name in maps}
    done = 0
    while done < n_tasks:
        batch = family.sample(min(chunk, n_tasks - done), rng)
        for name, fn in maps.items():
            out[name].append(exact_query_loss(fn(batch), batch.W, family.x_cov, family.noise_std))
        done += len(batch)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def paired_ratio(model, reference, level: float = 0.95) -> dict:
    """``{"ratio", "ci95"}``: mean(model)/mean(reference) on paired per-task losses (shape (T,)),
    with the delta-method half-width of :func:`ratio_of_means_ci`."""
    ratio, half = ratio_of_means_ci(model, reference, level)
    return {"ratio": ratio, "ci95": half}


def gain_captured(model, baseline, best, level: float = 0.95) -> dict:
    """``{"fraction", "ci95"}``: the fraction of the best map's gain over a baseline that a model
    captures, (L_baseline − L_model)/(L_baseline − L_best), as a ratio of means of the paired per-task
    differences (all three of shape (T,), the same tasks), delta-method half-width. 1 means the model
    reaches the best map, 0 the baseline; it can exceed 1 (beats the "best" map) or fall below 0."""
    b = np.asarray(baseline, dtype=np.float64)
    fraction, half = ratio_of_means_ci(b - np.asarray(model, dtype=np.float64), b - np.asarray(best, dtype=np.float64),
                                       level)
    return {"fraction": fraction, "ci95": half}


def seed_ratio_summary(models, reference, level: float = 0.95) -> dict:
    """Paired ratios of S trained seeds (``models`` (S, T) per-task losses, the same T tasks as
    ``reference``) to a reference, with both sources of uncertainty. ``reference`` is (T,) (a fixed
    map) or (S, T) (another trained model: seed i is paired with seed i).

    ``per_seed``: each seed's ratio and its task half-width (:func:`paired_ratio`);
    ``ratio``: the ratio of the seed-averaged per-task losses;
    ``ci95_tasks``: its delta-method half-width over tasks; ``ci95_seeds``: the Student-t half-width
    of the S per-seed ratios (t with S − 1 degrees of freedom: training-seed variation);
    ``ci95``: sqrt(ci95_tasks² + ci95_seeds²), the interval reported (conservative: the seed term
    already contains some task noise).
    """
    L = np.asarray(models, dtype=np.float64)
    R = np.asarray(reference, dtype=np.float64)
    if L.ndim != 2 or L.shape[0] < 2:
        raise ArgumentError("models", f"expected per-task losses of at least 2 seeds, shape (S, T), got {L.shape}")
    if R.shape not in (L.shape[1:], L.shape):
        raise ArgumentError("reference", f"expected shape {L.shape[1:]} or {L.shape}, got {R.shape}")
    rows = R if R.ndim == 2 else np.broadcast_to(R, L.shape)
    per_seed = [paired_ratio(a, b, level) for a, b in zip(L, rows)]
    pooled = paired_ratio(L.mean(axis=0), rows.mean(axis=0), level)
    _, seeds_half = mean_ci([p["ratio"] for p in per_seed], level)
    seeds_half = float(seeds_half)
    return {"ratio": pooled["ratio"], "ci95": float(np.hypot(pooled["ci95"], seeds_half)),
            "ci95_tasks": pooled["ci95"], "ci95_seeds": seeds_half, "per_seed": per_seed, "seeds": int(L.shape[0])}


def seed_gain_summary(models, baseline, best, level: float = 0.95) -> dict:
    """As :func:`seed_ratio_summary` for :func:`gain_captured`: ``fraction`` of the seed-averaged
    model, ``ci95_tasks``, ``ci95_seeds`` (t over the per-seed fractions), ``ci95`` (both), ``per_seed``."""
    L = np.asarray(models, dtype=np.float64)
    if L.ndim != 2 or L.shape[0] < 2:
        raise ArgumentError("models", f"expected per-task losses of at least 2 seeds, shape (S, T), got {L.shape}")
    per_seed = [gain_captured(row, baseline, best, level) for row in L]
    pooled = gain_captured(L.mean(axis=0), baseline, best, level)
    _, seeds_half = mean_ci([p["fraction"] for p in per_seed], level)
    seeds_half = float(seeds_half)
    return {"fraction": pooled["fraction"], "ci95": float(np.hypot(pooled["ci95"], seeds_half)),
            "ci95_tasks": pooled["ci95"], "ci95_seeds": seeds_half, "per_seed": per_seed, "seeds": int(L.shape[0])}
