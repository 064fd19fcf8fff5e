"""Meta-batches as one computation: every task of a meta-batch adapted and scored at once.

A meta-batch is M tasks stacked along a leading axis: ``x_support (M, n_s, …)``, ``y_support (M, n_s, …)``,
``x_query (M, n_q, …)``, ``y_query (M, n_q, …)``. :func:`task_losses` runs a learner's own
``adapt`` + query evaluation for all M tasks under ``torch.func.vmap`` — the same pure inner loop
as one task at a time, so the result is exact second-order MAML (or whatever the learner does:
ANIL, KFO, Meta-SGD, first order) — and :func:`meta_batch_loss` averages it:

    loss, accuracy = meta_batch_loss(learner, x_s, y_s, x_q, y_q, F.cross_entropy)
    loss.backward()        # the meta-gradient of the mean query loss, as a loop over tasks gives

:class:`MetaGradient` is the training step built on it: it accumulates ``scale · Σ_i ∇ loss_i`` into
the learner's ``.grad`` a chunk of tasks at a time (``tasks_per_chunk``: 1 = one task at a time, no
vmap; M = the whole meta-batch in one computation), optionally through ``torch.compile``.

Normalisation layers under vmap (why :func:`explicit_normalization` exists)
--------------------------------------------------------------------------
torch's batching rules for the backward of ``batch_norm``, ``instance_norm`` and ``layer_norm`` give
wrong *second* derivatives (torch 2.13; pytorch/functorch#534): vmapping the inner loop of a model
with BatchNorm returns first-order-correct but second-order-wrong meta-gradients, silently (errors
of a few per cent to 100 % in float64). Inside :func:`task_losses` these three functions are
therefore evaluated by their textbook formulas, ``(x − mean)/sqrt(var + eps)·weight + bias`` with the
biased variance over the same axes, whose derivatives of every order vmap handles correctly. Only
batch statistics are replaced (``training=True`` without running statistics, ``use_input_stats``);
a layer that updates running statistics cannot run under vmap anyway, and torch says so.

Speed (see ``analysis/bench.py``): on a GPU one vmapped computation replaces M small launches per
layer. On a small CPU the opposite holds for the 4-block CNN: the whole meta-batch's activations
(hundreds of MB per layer) fall out of cache, and one task at a time (``tasks_per_chunk=1``) with
``compile=True`` is the fastest measured option.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from linmaml import _validate

__all__ = ["task_losses", "meta_batch_loss", "MetaGradient", "explicit_normalization"]


# --------------------------------------------------------------------------------------------------
# Normalisation by formula (vmap-safe to every order)


def _normalize(x: torch.Tensor, dims: list[int], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with (x − mean)/sqrt(var + eps) = x·scale + shift, statistics over ``dims``."""
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    scale = torch.rsqrt(var + eps)
    return scale, -mean * scale


def _affine(x, scale, shift, weight, bias, shape):
    if weight is not None:
        weight = weight.reshape(shape)
        scale, shift = scale * weight, shift * weight
    if bias is not None:
        shift = shift + bias.reshape(shape)
    return torch.addcmul(shift, x, scale)


def _batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
                eps=1e-5):
    dims = [0, *range(2, x.ndim)]
    scale, shift = _normalize(x, dims, eps)
    return _affine(x, scale, shift, weight, bias, [1, -1] + [1] * (x.ndim - 2))


def _instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5):
    scale, shift = _normalize(x, list(range(2, x.ndim)), eps)
    return _affine(x, scale, shift, weight, bias, [1, -1] + [1] * (x.ndim - 2))


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    k = len(tuple(normalized_shape)) if not isinstance(normalized_shape, int) else 1
    scale, shift = _normalize(x, list(range(x.ndim - k, x.ndim)), eps)
    return _affine(x, scale, shift, weight, bias, tuple(x.shape[x.ndim - k:]))


def _bound(args, kwargs, names):
    """The call's arguments by name (positional ones mapped onto ``names``)."""
    return {**dict(zip(names, args)), **kwargs}


class _ExplicitNormalization(TorchFunctionMode):
    _BATCH = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    _INSTANCE = ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")
    _LAYER = ("input", "normalized_shape", "weight", "bias", "eps")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            a = _bound(args, kwargs, self._BATCH)
            if a.get("training", False) and a.get("running_mean") is None and a.get("running_var") is None:
                return _batch_norm(a["input"], None, None, a.get("weight"), a.get("bias"), True,
                                   a.get("momentum", 0.1), a.get("eps", 1e-5))
        elif func is F.instance_norm:
            a = _bound(args, kwargs, self._INSTANCE)
            if a.get("use_input_stats", True) and a.get("running_mean") is None and a.get("running_var") is None:
                return _instance_norm(a["input"], None, None, a.get("weight"), a.get("bias"), True,
                                      a.get("momentum", 0.1), a.get("eps", 1e-5))
        elif func is F.layer_norm:
            a = _bound(args, kwargs, self._LAYER)
            return _layer_norm(a["input"], a["normalized_shape"], a.get("weight"), a.get("bias"), a.get("eps", 1e-5))
        return func(*args, **kwargs)


@contextlib.contextmanager
def explicit_normalization():
    """Inside, ``F.batch_norm`` (batch statistics), ``F.instance_norm`` and ``F.layer_norm`` are
    computed by their formulas (module docstring): same values up to rounding, and second
    derivatives that stay correct under ``torch.func.vmap``."""
    with _ExplicitNormalization():
        yield


# --------------------------------------------------------------------------------------------------
# Batched losses


def _check_batch(x_support, y_support, x_query, y_query) -> int:
    tensors = {"x_support": x_support, "y_support": y_support, "x_query": x_query, "y_query": y_query}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor with a leading task axis, got {type(t).__name__}")
        if t.ndim < 1 or t.shape[0] < 1:
            raise ValueError(f"{name}: expected a leading task axis of length >= 1, got shape {tuple(t.shape)}")
    tasks = x_support.shape[0]
    for name, t in tensors.items():
        if t.shape[0] != tasks:
            raise ValueError(f"{name}: expected {tasks} tasks on axis 0 (as x_support), got shape {tuple(t.shape)}")
    for x, y, split in ((x_support, y_support, "support"), (x_query, y_query, "query")):
        if y.ndim < 2 or x.ndim < 2 or x.shape[1] != y.shape[1]:
            raise ValueError(f"y_{split}: expected one target per example, (M, n, …) beside x_{split} "
                             f"{tuple(x.shape)}, got {tuple(y.shape)}")
    return x_support.shape[0]


def _is_classification(y_query: torch.Tensor) -> bool:
    return not (y_query.dtype.is_floating_point or y_query.dtype.is_complex)


def _one_task(learner, loss_fn, steps, classification):
    """(x_s, y_s, x_q, y_q) of one task -> (query loss, query accuracy) or (query loss,)."""

    def run(x_s, y_s, x_q, y_q):
        fast = learner.adapt(x_s, y_s, loss_fn, steps=steps)
        out = learner(x_q, params=fast)
        loss = loss_fn(out, y_q)
        if not classification:
            return (loss,)
        accuracy = (out.detach().argmax(dim=-1) == y_q).to(torch.float64).mean()
        return loss, accuracy

    return run


def task_losses(learner, x_support, y_support, x_query, y_query,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, steps: int | None = None):
    """Query loss and accuracy of every task of a meta-batch, in one vmapped computation.

    ``learner`` is any :mod:`linmaml.meta` learner (``adapt(x, y, loss_fn, steps)`` and
    ``learner(x, params=fast)``). Inputs are stacked over M tasks (module docstring); ``loss_fn(output,
    target)`` is a scalar per task. Returns ``(losses (M,), accuracies (M,) float64 or None)``:
    accuracies (arg-max of the output equals the label) only for integer labels. ``losses`` is
    differentiable with respect to every parameter of the learner exactly as a loop over the tasks
    would be (second order through the inner loop unless the learner is first order).
    """
    _check_batch(x_support, y_support, x_query, y_query)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable (output, target) -> scalar, got {type(loss_fn).__name__}")
    classification = _is_classification(y_query)
    with explicit_normalization():
        out = torch.func.vmap(_one_task(learner, loss_fn, steps, classification))(x_support, y_support, x_query,
                                                                                   y_query)
    return out[0], (out[1] if classification else None)


def meta_batch_loss(learner, x_support, y_support, x_query, y_query,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, steps: int | None = None):
    """The meta-batch's mean query loss (differentiable scalar) and mean accuracy (float64 scalar
    tensor, or None for non-integer labels). ``loss.backward()`` gives the meta-gradient of the mean
    over tasks; arguments as in :func:`task_losses`."""
    losses, accuracies = task_losses(learner, x_support, y_support, x_query, y_query, loss_fn, steps=steps)
    return losses.mean(), (accuracies.mean() if accuracies is not None else None)


# --------------------------------------------------------------------------------------------------
# The training step


class MetaGradient:
    """A meta-training step: accumulate ``scale · Σ_i ∇ query-loss_i`` into the learner's ``.grad``.

    ``step = MetaGradient(learner, F.cross_entropy, tasks_per_chunk=1, compile=False)``, then per
    meta-iteration ``loss_sum, accuracy_sum = step(x_support, y_support, x_query, y_query, scale)``
    (stacked tensors, module docstring; sums over tasks as floats, accuracy 0 for non-integer labels).

    ``tasks_per_chunk``: tasks computed together. 1 runs the learner's inner loop one task at a
    time (plain autograd, no vmap); k > 1 vmaps chunks of k tasks (:func:`task_losses`); None takes
    the whole meta-batch at once. Each chunk is backpropagated before the next is computed, so memory
    holds one chunk's graph.

    ``query_per_task=True`` splits each chunk in two (for chunks of more than one task): the inner
    loops of its k tasks run as one vmapped computation — the support sets are small, so batching
    them is what saves time — while the query sets, most of a task's work, are scored one task at a
    time, which keeps their activations in cache on a CPU. By the chain rule the meta-gradient is
    then assembled exactly: each task's query loss is differentiated with respect to its adapted
    parameters φᵢ (held as leaves; parameters the learner does not adapt, e.g. ANIL's features,
    receive their query gradient directly), and one backward pass pulls the stacked ∂ℓᵢ/∂φᵢ through
    the chunk's vmapped inner loops: ∇θ = Σᵢ (∂φᵢ/∂θ)ᵀ ∂ℓᵢ/∂φᵢ (+ direct terms). Needs a learner
    with ``adapted_names`` (every :mod:`linmaml.meta` learner has them).

    ``compile=True`` runs each chunk (with ``query_per_task``: the vmapped inner loops and the
    per-task query loss) through ``torch.compile`` (built once, on first use; it recompiles for a new
    shape, e.g. a last chunk shorter than the others). ``steps`` overrides the learner's number of
    inner steps. The gradient equals a loop over tasks up to floating-point rounding.
    """

    def __init__(self, learner, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy, *,
                 tasks_per_chunk: int | None = 1, query_per_task: bool = False, compile: bool = False,  # noqa: A002
                 steps: int | None = None):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable (output, target) -> scalar, got {type(loss_fn).__name__}")
        if tasks_per_chunk is not None:
            tasks_per_chunk = _validate.integer(tasks_per_chunk, "tasks_per_chunk", minimum=1)
        for flag, name in ((compile, "compile"), (query_per_task, "query_per_task")):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected True or False, got {flag!r}")
        if query_per_task and not hasattr(learner, "adapted_names"):
            raise TypeError(f"learner: query_per_task needs a learner with adapted_names (a linmaml.meta learner), "
                            f"got {type(learner).__name__}")
        self.learner, self.loss_fn, self.steps = learner, loss_fn, steps
        self.tasks_per_chunk, self.query_per_task, self.compile = tasks_per_chunk, query_per_task, compile
        self._functions: dict = {}  # (batched, classification) or "split" -> the built (maybe compiled) function

    def _function(self, batched: bool, classification: bool) -> Callable:
        key = (batched, classification)
        if key not in self._functions:
            one = _one_task(self.learner, self.loss_fn, self.steps, classification)

            def chunk(x_s, y_s, x_q, y_q):
                if not batched:
                    out = one(x_s[0], y_s[0], x_q[0], y_q[0])
                    return out[0], (out[1] if classification else None)
                with explicit_normalization():
                    out = torch.func.vmap(one)(x_s, y_s, x_q, y_q)
                return out[0].sum(), (out[1].sum() if classification else None)

            self._functions[key] = torch.compile(chunk, dynamic=False) if self.compile else chunk
        return self._functions[key]

    def __call__(self, x_support, y_support, x_query, y_query, scale: float = 1.0) -> tuple[float, float]:
        tasks = _check_batch(x_support, y_support, x_query, y_query)
        scale = _validate.finite_number(scale, "scale")
        size = tasks if self.tasks_per_chunk is None else min(self.tasks_per_chunk, tasks)
        classification = _is_classification(y_query)
        total_loss = torch.zeros((), dtype=torch.float64, device=x_support.device)
        total_accuracy = torch.zeros((), dtype=torch.float64, device=x_support.device)
        for start in range(0, tasks, size):
            part = slice(start, start + size)
            batched = min(size, tasks - start) > 1
            if batched and self.query_per_task:
                loss, accuracy = self._split_chunk(x_support[part], y_support[part], x_query[part], y_query[part],
                                                   scale, classification)
            else:
                run = self._function(batched=batched, classification=classification)
                loss, accuracy = run(x_support[part], y_support[part], x_query[part], y_query[part])
                (loss * scale).backward()
            total_loss += loss.detach()
            if accuracy is not None:
                total_accuracy += accuracy
        return float(total_loss), float(total_accuracy)

    def _split_functions(self) -> tuple[Callable, Callable]:
        """(vmapped inner loops of a chunk -> stacked adapted parameters, one task's query scoring)."""
        if "split" not in self._functions:
            learner, loss_fn, steps = self.learner, self.loss_fn, self.steps
            names = list(learner.adapted_names)

            def adapt_one(x_s, y_s):
                fast = learner.adapt(x_s, y_s, loss_fn, steps=steps)
                return {n: fast[n] for n in names}

            def adapt_chunk(x_s, y_s):
                with explicit_normalization():
                    return torch.func.vmap(adapt_one)(x_s, y_s)

            def query(fast, x_q, y_q):
                out = learner(x_q, params=fast)
                return loss_fn(out, y_q), out.detach()

            if self.compile:
                adapt_chunk, query = torch.compile(adapt_chunk, dynamic=False), torch.compile(query, dynamic=False)
            self._functions["split"] = (adapt_chunk, query)
        return self._functions["split"]

    def _split_chunk(self, x_s, y_s, x_q, y_q, scale: float, classification: bool):
        """One chunk with ``query_per_task`` (class docstring); backpropagates it, returns the sums
        of its query losses and accuracies (tensors; accuracy None for non-integer labels)."""
        adapt_chunk, query = self._split_functions()
        stacked = adapt_chunk(x_s, y_s)                       # name -> (k, …), graph back to θ
        names = list(stacked)
        upstream = {n: torch.empty_like(v) for n, v in stacked.items()}
        loss_sum = torch.zeros((), dtype=torch.float64, device=x_s.device)
        accuracy_sum = torch.zeros((), dtype=torch.float64, device=x_s.device) if classification else None
        for i in range(x_s.shape[0]):
            leaves = {n: stacked[n][i].detach().requires_grad_() for n in names}
            loss, out = query(leaves, x_q[i], y_q[i])
            # Direct terms (parameters used outside the inner loop) accumulate into .grad here;
            # the adapted parameters' gradient stops at the leaves and is collected below.
            (loss * scale).backward()
            for n in names:
                g = leaves[n].grad
                upstream[n][i] = 0 if g is None else g
            loss_sum += loss.detach()
            if classification:
                accuracy_sum += (out.argmax(dim=-1) == y_q[i]).to(torch.float64).mean()
        wanted = [n for n in names if stacked[n].requires_grad]
        if wanted:
            torch.autograd.backward([stacked[n] for n in wanted], [upstream[n] for n in wanted])
        return loss_sum, accuracy_sum
