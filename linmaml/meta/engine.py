"""The meta-learning engine: adapt a learner on each task, score the query set, meta-gradient of a meta-batch.

This is the one place in linmaml that runs "adapt on the support set, then score the query set"
(training, validation, evaluation and the benchmarks all come here). A meta-batch is M tasks
stacked along a leading axis: ``x_support (M, n_s, …)``, ``y_support (M, n_s, …)``, ``x_query
(M, n_q, …)``, ``y_query (M, n_q, …)``. The learner is any :mod:`linmaml.meta` learner
(``learner.adapt(x, y, loss_fn, steps)``, ``learner(x, params=fast)``, ``learner.adapted_names``).

    engine = Engine(learner, F.cross_entropy, strategy="split", tasks_per_chunk=4)
    loss_sum, accuracy_sum = engine.meta_gradient(x_s, y_s, x_q, y_q, scale=1 / M)  # into .grad
    losses, accuracies = engine.task_losses(x_s, y_s, x_q, y_q)   # (M,), differentiable
    losses, accuracies = engine.score(x_s, y_s, x_q, y_q, steps=3)  # (M,), no outer graph
    fast = engine.adapted(x_s, y_s, steps=3)                        # {name: (M, …)}, detached
    engine.meta_gradient(x_s, y_s, x_q, y_q, scale=1 / M, step_weights=[0.1, 0.2, 0.7])  # MAML++'s multi-step loss

``step_weights`` (training only) weighs the query loss after every inner step (:meth:`Engine.meta_gradient`);
a model with per-step BatchNorm (``norm_steps > 0``, MAML++'s BNWB) is scored after k steps with its set
k − 1 (:func:`linmaml.meta.maml_learners.norm_steps`).

One setting, ``strategy``, says how the tasks are computed; it never changes the result beyond
floating-point rounding (tests/meta/test_meta_engine.py checks every strategy against a per-task
autograd loop written in the test):

=========  =========================================================================================
strategy   computation
=========  =========================================================================================
loop       one task at a time: plain autograd, least memory
split      the inner loops of ``tasks_per_chunk`` tasks as one vmapped computation (support sets are
           small, so batching them saves time), the query sets (most of the work) one task at a time,
           which keeps their activations in cache on a CPU. The meta-gradient is assembled by the
           chain rule: each query loss is differentiated with respect to its adapted parameters φᵢ
           (held as leaves; parameters the learner does not adapt, e.g. ANIL's features, get their
           direct gradient at once), then one backward pass pulls the stacked ∂ℓᵢ/∂φᵢ through the
           chunk's vmapped inner loops: ∇θ = Σᵢ (∂φᵢ/∂θ)ᵀ ∂ℓᵢ/∂φᵢ (+ direct terms).
vmap       chunks of ``tasks_per_chunk`` tasks wholly vmapped (adaptation and query): a GPU's choice
=========  =========================================================================================

``tasks_per_chunk=None`` takes the whole meta-batch as one chunk; a chunk of one task always runs
as "loop" (vmap of one task only costs). Each chunk is backpropagated before the next is computed,
so memory holds one chunk's graph. ``compile=True`` runs the training computations through
``torch.compile`` (built once per shape and step count). torch.compile caches by code object, and
every Engine's functions share theirs: in one process, engines beyond dynamo's recompile limit (8
learners, dtypes or shapes) fall back to eager with one warning from torch; call
``torch._dynamo.reset()`` between unrelated compiled engines (``linmaml bench`` does, per case).

Scoring without the outer graph (:meth:`Engine.score`): the adaptation runs under
``torch.no_grad()``. ``torch.func.grad`` (the inner loop's gradient) ignores an enclosing
``no_grad`` for its own level, so the adapted parameters are exactly those of training, but nothing
is recorded for an outer backward pass: first-order memory at any order, and the learner is never
modified (no flipping of ``learner.first_order``).

Normalisation layers under vmap (why :func:`explicit_normalization` exists)
---------------------------------------------------------------------------
torch's batching rules for the backward of ``batch_norm``, ``instance_norm`` and ``layer_norm`` give
wrong *second* derivatives (torch 2.13; pytorch/functorch#534): vmapping the inner loop of a model
with BatchNorm returns first-order-correct but second-order-wrong meta-gradients, silently. Every
vmapped computation of the engine therefore evaluates these three functions by their textbook
formulas, ``(x − mean)/sqrt(var + eps)·weight + bias`` with the biased variance over the same axes,
whose derivatives of every order vmap handles correctly. Only batch statistics are replaced
(``training=True`` without running statistics, ``use_input_stats``); a layer that updates running
statistics cannot run under vmap anyway, and torch says so.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from linmaml import _validate
from linmaml._strategies import RANDOMNESS, STRATEGIES
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.losses import binary_accuracy
from linmaml.meta.maml_learners import MAX_STEPS, check_task_inputs, named_input_failures, norm_steps

__all__ = ["Engine", "RANDOMNESS", "STRATEGIES", "explicit_normalization"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _channel_shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.ndim - 2)


class _ExplicitNormalization(TorchFunctionMode):
    _BATCH = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    _INSTANCE = ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")
    _LAYER = ("input", "normalized_shape", "weight", "bias", "eps")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            a = {**dict(zip(self._BATCH, args)), **kwargs}
            if a.get("training", False) and a.get("running_mean") is None and a.get("running_var") is None:
                x = a["input"]
                scale, shift = _normalize(x, [0, *range(2, x.ndim)], a.get("eps", 1e-5))
                return _affine(x, scale, shift, a.get("weight"), a.get("bias"), _channel_shape(x))
        elif func is F.instance_norm:
            a = {**dict(zip(self._INSTANCE, args)), **kwargs}
            if a.get("use_input_stats", True) and a.get("running_mean") is None and a.get("running_var") is None:
                x = a["input"]
                scale, shift = _normalize(x, list(range(2, x.ndim)), a.get("eps", 1e-5))
                return _affine(x, scale, shift, a.get("weight"), a.get("bias"), _channel_shape(x))
        elif func is F.layer_norm:
            a = {**dict(zip(self._LAYER, args)), **kwargs}
            x, shape = a["input"], a["normalized_shape"]
            k = 1 if isinstance(shape, int) else len(tuple(shape))
            scale, shift = _normalize(x, list(range(x.ndim - k, x.ndim)), a.get("eps", 1e-5))
            return _affine(x, scale, shift, a.get("weight"), a.get("bias"), tuple(x.shape[x.ndim - k:]))
        return func(*args, **kwargs)


@contextlib.contextmanager
def explicit_normalization(enabled: bool = True):
    """Inside, ``F.batch_norm`` (batch statistics), ``F.instance_norm`` and ``F.layer_norm`` are
    computed by their formulas (module docstring): same values up to rounding, and second
    derivatives that stay correct under ``torch.func.vmap``. ``enabled=False`` does nothing."""
    if not enabled:
        yield
        return
    with _ExplicitNormalization():
        yield


#: Modules whose forward calls one of the three functions that :func:`explicit_normalization` replaces.
_NORM_MODULES = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm)


def has_norm_layers(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm, InstanceNorm or LayerNorm submodule.

    A torch function mode intercepts every torch call in Python, which costs more than the
    arithmetic on tiny models (a deep linear chain of a few units: about a tenth of a vmapped
    meta-step), so the engine enters :func:`explicit_normalization` only for models that need it.
    """
    return any(isinstance(m, _NORM_MODULES) for m in module.modules())


@contextlib.contextmanager
def _randomness_named():
    """torch's error for a random operation under vmap, as an error naming the Engine's argument."""
    try:
        yield
    except RuntimeError as error:
        if "randomness" not in str(error):
            raise
        raise ArgumentError("randomness", "the model draws random numbers under vmap (e.g. Dropout in training "
                            "mode); pass Engine(..., randomness='different') (independent per task, as the loop) "
                            "or 'same', or use strategy='loop'") from error


# --------------------------------------------------------------------------------------------------
# Input checks


def check_batch(x_support, y_support, x_query, y_query) -> int:
    """The number of tasks M of a stacked meta-batch, or raise naming the bad tensor."""
    tensors = {"x_support": x_support, "y_support": y_support, "x_query": x_query, "y_query": y_query}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ArgumentTypeError(name, f"expected a tensor with a leading task axis, got {type(t).__name__}")
        if t.ndim < 1 or t.shape[0] < 1:
            raise ArgumentError(name, f"expected a leading task axis of length >= 1, got shape {tuple(t.shape)}")
    tasks = x_support.shape[0]
    for name, t in tensors.items():
        if t.shape[0] != tasks:
            raise ArgumentError(name, f"expected {tasks} tasks on axis 0 (as x_support), got shape {tuple(t.shape)}")
    for x, y, split in ((x_support, y_support, "support"), (x_query, y_query, "query")):
        if y.ndim < 2 or x.ndim < 2 or x.shape[1] != y.shape[1]:
            raise ArgumentError(f"y_{split}", f"expected one target per example, (M, n, …) beside x_{split} "
                                f"{tuple(x.shape)}, got {tuple(y.shape)}")
        # an empty set has no loss (the query's mean would be NaN); labels below 0 index nothing
        check_task_inputs(x[0], y, f"x_{split}", f"y_{split}")
    return tasks


def _accuracy_kind(y_query: torch.Tensor) -> str | None:
    """How query accuracy is scored: ``"labels"`` for integer class labels (argmax of the last axis),
    ``"binary"`` for float 0/1 targets with a last axis of length 1 (one logit per example, predicted
    class 1 where the logit is positive: binary logistic regression), None for other float targets
    (regression: no accuracy)."""
    if not (y_query.dtype.is_floating_point or y_query.dtype.is_complex):
        return "labels"
    if y_query.dtype.is_floating_point and y_query.shape[-1] == 1 and bool(((y_query == 0) | (y_query == 1)).all()):
        return "binary"
    return None


# --------------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Adaptation, query scoring and meta-gradients of a learner over stacked meta-batches.

    ``Engine(learner, loss_fn=F.cross_entropy, *, strategy="loop", tasks_per_chunk=4, compile=False)``;
    ``loss_fn(output, target)`` is a scalar per task. See the module docstring for the strategies.
    Every method takes an optional ``steps`` (inner steps; default the learner's own).
    ``randomness`` is ``torch.func.vmap``'s: "error" (default) refuses random operations such as a
    train-mode Dropout under the vmapped strategies (an ``ArgumentError`` naming ``randomness``),
    "different" draws independently per task (as the loop does, though not the same numbers) and
    "same" shares the draws across the tasks of a chunk. ``adapted``: adapt only these of the
    learner's ``adapted_names`` (the others keep their meta-learned values; the learner is unchanged).
    """

    def __init__(self, learner, loss_fn: LossFn = F.cross_entropy, *, strategy: str = "loop",
                 tasks_per_chunk: int | None = 4, compile: bool = False,  # noqa: A002
                 explicit_norms: bool | None = None, randomness: str = "error", adapted=None):
        if not callable(loss_fn):
            raise ArgumentTypeError("loss_fn", f"expected a callable (output, target) -> scalar, got "
                                    f"{type(loss_fn).__name__}")
        if strategy not in STRATEGIES:
            raise ArgumentError("strategy", f"expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if tasks_per_chunk is not None:
            tasks_per_chunk = _validate.integer(tasks_per_chunk, "tasks_per_chunk", minimum=1)
        if not isinstance(compile, bool):
            raise ArgumentTypeError("compile", f"expected True or False, got {compile!r}")
        if strategy == "split" and not hasattr(learner, "adapted_names"):
            raise ArgumentTypeError("learner", f"strategy 'split' needs a learner with adapted_names (a "
                                    f"linmaml.meta learner), got {type(learner).__name__}")
        if explicit_norms is not None and not isinstance(explicit_norms, bool):
            raise ArgumentTypeError("explicit_norms", f"expected True, False or None, got {explicit_norms!r}")
        self.learner, self.loss_fn = learner, loss_fn
        self.strategy, self.tasks_per_chunk, self.compile = strategy, tasks_per_chunk, compile
        # None: detect the norm modules. A model that calls F.batch_norm / F.layer_norm without such
        # a module must pass True, or its vmapped second derivatives are wrong (module docstring).
        self.explicit_norms = (has_norm_layers(learner) if isinstance(learner, torch.nn.Module) else True) \
            if explicit_norms is None else explicit_norms
        # vmap's randomness ("error", "different", "same"): a model drawing random numbers (Dropout in
        # training mode) needs "different" (independent per task, as the loop) or "same" under vmap.
        if randomness not in RANDOMNESS:
            raise ArgumentError("randomness", f"expected one of {', '.join(map(repr, RANDOMNESS))}, got {randomness!r}")
        self.randomness = randomness
        # adapted: the engine adapts only these of the learner's adapted names (an ablation of which
        # layers adapt), passed to every adaptation; the learner itself is never changed.
        if adapted is not None:
            if not hasattr(learner, "adapted_subset"):
                raise ArgumentTypeError("adapted", f"choosing what adapts needs a linmaml.meta MAML or ANIL learner, "
                                                   f"got {type(learner).__name__}")
            adapted = list(learner.adapted_subset(adapted))
        self._adapted = adapted  # not .adapted: that is the method
        self._built: dict = {}  # (kind, steps, classification, compiled) -> function

    # -- the per-task pieces: written once, composed by every strategy -----------------------------

    def _adapt(self, steps, trajectory: bool = False):
        """(x_s, y_s) of one task -> the adapted parameters (only the adapted names); with
        ``trajectory``, every step's, stacked on a leading step axis: ``{name: (S, …)}``."""
        learner, loss_fn = self.learner, self.loss_fn
        chosen = {} if self._adapted is None else {"adapted": self._adapted}
        names = self._adapted if self._adapted is not None else getattr(learner, "adapted_names", None)

        def adapt_steps(x_s, y_s):
            visited = learner.adapt_trajectory(x_s, y_s, loss_fn, steps=steps, **chosen)
            return {n: torch.stack([fast[n] for fast in visited]) for n in (list(visited[-1]) if names is None
                                                                            else names)}

        if trajectory:
            return adapt_steps

        def adapt(x_s, y_s):
            fast = learner.adapt(x_s, y_s, loss_fn, steps=steps, **chosen)
            return fast if names is None else {n: fast[n] for n in names}

        return adapt

    def _query(self, classification: str | None):
        """(adapted parameters, x_q, y_q) of one task -> (query loss, query accuracy (float64; 0 for
        regression)); ``classification`` is :func:`_accuracy_kind`'s answer."""
        learner, loss_fn = self.learner, self.loss_fn

        def query(fast, x_q, y_q, step=None):
            # step: the normalisation set of a model with per-step BatchNorm (:meth:`_norm_step`)
            out = learner(x_q, params=fast) if step is None else learner(x_q, params=fast, step=step)
            loss = loss_fn(out, y_q)
            if classification == "labels":
                accuracy = (out.detach().argmax(dim=-1) == y_q).to(torch.float64).mean()
            elif classification == "binary":  # one logit: class 1 where it is positive
                accuracy = binary_accuracy(out.detach(), y_q)
            else:
                accuracy = torch.zeros((), dtype=torch.float64, device=loss.device)
            return loss, accuracy

        return query

    def _query_steps(self, classification: str | None):
        """(every step's adapted parameters ``{name: (S, …)}``, x_q, y_q, weights (S,)) of one task ->
        (Σ_k weights[k]·query loss after step k, query accuracy after the last step): MAML++'s
        multi-step loss (:meth:`meta_gradient`'s ``step_weights``)."""
        query, per_step = self._query(classification), self._norm_step(1) is not None

        def query_steps(stacked, x_q, y_q, weights):
            total = None
            for k in range(weights.shape[0]):
                loss, accuracy = query({n: v[k] for n, v in stacked.items()}, x_q, y_q, k if per_step else None)
                total = weights[k] * loss if total is None else total + weights[k] * loss
            return total, accuracy

        return query_steps

    def _function(self, kind: str, steps, classification: str | None, compiled: bool, msl: bool = False):
        """The built function of ``kind`` ("task", "vmap", "adapt_chunk", "query"), cached; ``msl``:
        the multi-step-loss variant (every step's parameters kept, a weights argument last)."""
        key = (kind, steps, classification, compiled) + (("msl",) if msl else ())
        if key not in self._built:
            if msl:
                adapt, query = self._adapt(steps, trajectory=True), self._query_steps(classification)
            else:
                adapt, step_query, final = self._adapt(steps), self._query(classification), self._norm_step(steps)

                def query(fast, x_q, y_q):
                    return step_query(fast, x_q, y_q, final)

            def task(x_s, y_s, x_q, y_q, *weights):
                return query(adapt(x_s, y_s), x_q, y_q, *weights)

            def vmapped(x_s, y_s, x_q, y_q, *weights):
                in_dims = (0, 0, 0, 0) + (None,) * len(weights)  # the weights are shared by the tasks
                with explicit_normalization(self.explicit_norms), _randomness_named():
                    return torch.func.vmap(task, in_dims=in_dims, randomness=self.randomness)(x_s, y_s, x_q, y_q,
                                                                                              *weights)

            def adapt_chunk(x_s, y_s):
                with explicit_normalization(self.explicit_norms), _randomness_named():
                    return torch.func.vmap(adapt, randomness=self.randomness)(x_s, y_s)

            function = {"task": task, "vmap": vmapped, "adapt_chunk": adapt_chunk, "query": query}[kind]
            self._built[key] = torch.compile(function, dynamic=False) if compiled else function
        return self._built[key]

    def _norm_step(self, steps):
        """The normalisation set that scores the parameters after ``steps`` inner steps (default the
        learner's) for a model with per-step BatchNorm (MAML++'s BNWB,
        :func:`linmaml.meta.maml_learners.norm_steps`): ``steps − 1``, the set of the last step (the model
        clamps it to its sets; 0 before adaptation, ``steps=0``); None for every other model."""
        if not norm_steps(getattr(self.learner, "model", None)):
            return None
        return max((self.learner.steps if steps is None else steps) - 1, 0)

    def _chunks(self, tasks: int) -> list[slice]:
        size = 1 if self.strategy == "loop" else (tasks if self.tasks_per_chunk is None else self.tasks_per_chunk)
        return [slice(start, min(start + size, tasks)) for start in range(0, tasks, size)]

    def _chunk_losses(self, batch, steps, classification, compiled, weights=None):
        """Per-task (losses (k,), accuracies (k,)) of one chunk, differentiable (graph kept); with
        ``weights`` (a tensor (S,)) the losses are the multi-step losses (:meth:`meta_gradient`)."""
        x_s, y_s, x_q, y_q = batch
        if steps == 0:  # before adaptation: the learner's own parameters ({} adapts nothing), task by task
            query = self._function("query", steps, classification, compiled)
            out = [query({}, x_q[i], y_q[i]) for i in range(x_s.shape[0])]
            return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])
        msl, extra = weights is not None, (() if weights is None else (weights,))
        if x_s.shape[0] == 1:
            loss, accuracy = self._function("task", steps, classification, compiled, msl)(x_s[0], y_s[0], x_q[0],
                                                                                          y_q[0], *extra)
            return loss.unsqueeze(0), accuracy.unsqueeze(0)
        if self.strategy == "vmap":
            return self._function("vmap", steps, classification, compiled, msl)(x_s, y_s, x_q, y_q, *extra)
        stacked = self._function("adapt_chunk", steps, classification, compiled, msl)(x_s, y_s)
        query = self._function("query", steps, classification, compiled, msl)
        # Contiguous slices, as in :meth:`_split_backward` (torch's CPU batch_norm backward and a
        # strided weight): a copy only where vmap left a task's slice strided.
        out = [query({n: v[i].contiguous() for n, v in stacked.items()}, x_q[i], y_q[i], *extra)
               for i in range(x_s.shape[0])]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    def _prepare(self, x_support, y_support, x_query, y_query, steps, minimum_steps: int = 1):
        tasks = check_batch(x_support, y_support, x_query, y_query)
        if getattr(self.learner, "check_finite", False):  # the learner cannot check inside vmap: check here
            for name, t in (("x_support", x_support), ("y_support", y_support)):
                if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
                    raise ArgumentError(name, "contains NaN or infinite values (check_finite=True)")
        if steps is not None:
            steps = _validate.integer(steps, "steps", minimum=minimum_steps, maximum=MAX_STEPS)
        return tasks, steps, _accuracy_kind(y_query)

    @contextlib.contextmanager
    def _named(self, x_support, y_support, x_query, y_query):
        """:func:`~linmaml.meta.maml_learners.named_input_failures` for a meta-batch; a failure inside the
        vmapped strategies (where torch says only "index 7 is out of bounds") is diagnosed after the
        fact: labels at or past the model's number of outputs are named."""
        try:
            with named_input_failures(["x_support", "x_query"], ["y_support", "y_query"], (x_support, x_query)):
                yield
        except (RuntimeError, ArgumentError) as error:
            if isinstance(error, ArgumentError) and error.argument != "y_support, y_query":
                raise
            width = self._output_width(x_support)
            for name, y in (("y_support", y_support), ("y_query", y_query)):
                if width and not (y.dtype.is_floating_point or y.dtype.is_complex) and y.numel() \
                        and int(y.max()) >= width:
                    raise ArgumentError(name, f"class labels must be below the model's {width} outputs, got "
                                              f"{int(y.max())}") from None
            raise

    def _output_width(self, x_support) -> int | None:
        """The size of the learner's last output axis on the first task's support set (None if unknown);
        computed only to explain a failure."""
        try:
            with torch.no_grad():
                out = self.learner(x_support[0])
            return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim >= 2 else None
        except Exception:  # noqa: BLE001 - a diagnosis, never a new failure
            return None

    # -- public methods ----------------------------------------------------------------------------

    def _step_weights(self, step_weights, steps, reference: torch.Tensor):
        """``step_weights`` checked (one finite number per inner step) as a tensor (S,) in the dtype of
        the model's floating inputs, or None."""
        if step_weights is None:
            return None
        if isinstance(step_weights, torch.Tensor) or isinstance(step_weights, (str, bytes)) or \
                not hasattr(step_weights, "__len__"):
            raise ArgumentTypeError("step_weights", f"expected a sequence of numbers, one per inner step, got "
                                    f"{type(step_weights).__name__}")
        count = steps if steps is not None else getattr(self.learner, "steps", None)
        values = [_validate.finite_number(w, f"step_weights[{k}]") for k, w in enumerate(step_weights)]
        if count is not None and len(values) != count:
            raise ArgumentError("step_weights", f"expected one weight per inner step ({count}), got {len(values)}")
        if not hasattr(self.learner, "adapt_trajectory"):
            raise ArgumentTypeError("step_weights", f"the multi-step loss needs a learner with adapt_trajectory (a "
                                    f"linmaml.meta learner), got {type(self.learner).__name__}")
        dtype = reference.dtype if reference.dtype.is_floating_point else torch.get_default_dtype()
        return torch.tensor(values, dtype=dtype, device=reference.device)

    def task_losses(self, x_support, y_support, x_query, y_query, *, steps: int | None = None,
                    step_weights=None):
        """``(losses (M,), accuracies (M,) float64 or None)``: every task's query loss after adaptation,
        differentiable with respect to every parameter of the learner (second order through the inner
        loop unless the learner is first order); accuracies for integer labels and for float 0/1
        targets of one logit (:func:`_accuracy_kind`), None for regression. The whole
        meta-batch's graph is kept: for training, :meth:`meta_gradient` backpropagates chunk by chunk.
        ``step_weights``: the multi-step losses, as in :meth:`meta_gradient`."""
        tasks, steps, classification = self._prepare(x_support, y_support, x_query, y_query, steps)
        weights = self._step_weights(step_weights, steps, x_support)
        with self._named(x_support, y_support, x_query, y_query):
            parts = [self._chunk_losses((x_support[c], y_support[c], x_query[c], y_query[c]), steps, classification,
                                        self.compile, weights) for c in self._chunks(tasks)]
        losses, accuracies = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return losses, (accuracies if classification else None)

    def score(self, x_support, y_support, x_query, y_query, *, steps: int | None = None):
        """``(losses (M,), accuracies (M,) float64 or None)``, detached: the adapted learner's query
        scores without building any graph for an outer backward pass (module docstring). The learner
        is not modified; its mode (train/eval) is the caller's. ``steps=0`` scores the query sets
        before any adaptation (the baseline that adaptation improves on)."""
        tasks, steps, classification = self._prepare(x_support, y_support, x_query, y_query, steps, minimum_steps=0)
        losses, accuracies = [], []
        with torch.no_grad(), self._named(x_support, y_support, x_query, y_query):
            for c in self._chunks(tasks):
                loss, accuracy = self._chunk_losses((x_support[c], y_support[c], x_query[c], y_query[c]), steps,
                                                    classification, compiled=False)
                losses.append(loss)
                accuracies.append(accuracy)
        return torch.cat(losses), (torch.cat(accuracies) if classification else None)

    def adapted(self, x_support, y_support, *, steps: int | None = None) -> dict[str, torch.Tensor]:
        """The adapted parameters of every task, detached: ``{name: (M, …)}`` for the learner's
        adapted names (its ``adapted_names``, or the engine's ``adapted``), computed as :meth:`score` computes them (no outer
        graph). For looking inside an adaptation (how far each tensor moved, the adapted model's
        features); scores come from :meth:`score`."""
        tasks, steps, _ = self._prepare(x_support, y_support, x_support, y_support, steps)
        parts = []
        with torch.no_grad(), self._named(x_support, y_support, x_support, y_support):
            for c in self._chunks(tasks):
                if c.stop - c.start == 1:
                    fast = self._adapt(steps)(x_support[c.start], y_support[c.start])
                    parts.append({n: v.detach().unsqueeze(0) for n, v in fast.items()})
                else:
                    stacked = self._function("adapt_chunk", steps, None, False)(x_support[c], y_support[c])
                    parts.append({n: v.detach() for n, v in stacked.items()})
        return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}

    def meta_gradient(self, x_support, y_support, x_query, y_query, scale: float = 1.0, *,
                      steps: int | None = None, step_weights=None) -> tuple[float, float]:
        """Accumulate ``scale · Σ_i ∇ query-loss_i`` into the learner's ``.grad``, chunk by chunk.

        Returns ``(Σ_i loss_i, Σ_i accuracy_i)`` as floats (unscaled sums; accuracy 0 for regression
        targets; scored as in :meth:`task_losses`). The sums stay on the device until the end: no host synchronisation per task.

        ``step_weights`` (one number w_k per inner step, default None: the last step's loss alone) makes
        each task's loss the multi-step loss of MAML++ (Antoniou, Edwards & Storkey 2019, "How to train
        your MAML"): ``Σ_k w_k · ℓ_query(θ_k)`` over the parameters θ_k after each inner step k = 1..S,
        all from the one inner loop (:meth:`linmaml.meta.MAML.adapt_trajectory`); the accuracy is the
        last step's. The annealing of the weights over training is the caller's
        (:func:`linmaml.benchmarks.config.msl_weights`).
        """
        tasks, steps, classification = self._prepare(x_support, y_support, x_query, y_query, steps)
        scale = _validate.finite_number(scale, "scale")
        weights = self._step_weights(step_weights, steps, x_support)
        loss_sum = torch.zeros((), dtype=torch.float64, device=x_support.device)
        accuracy_sum = torch.zeros((), dtype=torch.float64, device=x_support.device)
        for c in self._chunks(tasks):
            batch = (x_support[c], y_support[c], x_query[c], y_query[c])
            with self._named(x_support, y_support, x_query, y_query):
                if self.strategy == "split" and batch[0].shape[0] > 1:
                    loss, accuracy = self._split_backward(batch, steps, classification, scale, weights)
                else:
                    losses, accuracies = self._chunk_losses(batch, steps, classification, self.compile, weights)
                    loss, accuracy = losses.sum(), accuracies.sum()
                    (loss * scale).backward()
            loss_sum += loss.detach()
            accuracy_sum += accuracy
        return float(loss_sum), float(accuracy_sum)

    def _split_backward(self, batch, steps, classification, scale, weights=None):
        """One "split" chunk backpropagated with each query graph freed as soon as it is used
        (module docstring); returns the sums of its query losses and accuracies (tensors). With
        ``weights`` the stacked parameters carry a step axis, (k, S, …), and the losses are multi-step."""
        x_s, y_s, x_q, y_q = batch
        msl, extra = weights is not None, (() if weights is None else (weights,))
        stacked = self._function("adapt_chunk", steps, classification, self.compile, msl)(x_s, y_s)  # (k, …) per name
        query = self._function("query", steps, classification, self.compile, msl)
        upstream = {n: torch.zeros_like(v) for n, v in stacked.items()}
        loss_sum = torch.zeros((), dtype=torch.float64, device=x_s.device)
        accuracy_sum = torch.zeros((), dtype=torch.float64, device=x_s.device)
        for i in range(x_s.shape[0]):
            # Contiguous leaves: a vmapped update can come out strided (Meta-Curvature's M_out·g of
            # a bias or BatchNorm scale is stored (n, tasks), so task i's slice has stride `tasks`),
            # and torch 2.13's CPU batch_norm backward returns a wrong input gradient for a
            # non-contiguous weight when the input and incoming gradient are channels-last (linmaml
            # train's layout): meta-gradients were a few per cent off (docs/guide/performance.md).
            # A copy only where a slice is not contiguous.
            leaves = {n: v[i].detach().contiguous().requires_grad_() for n, v in stacked.items()}
            loss, accuracy = query(leaves, x_q[i], y_q[i], *extra)
            # Direct terms (parameters used outside the inner loop) accumulate into .grad here; the
            # adapted parameters' gradient stops at the leaves and is pulled back below.
            (loss * scale).backward()
            for n, leaf in leaves.items():
                if leaf.grad is not None:
                    upstream[n][i] = leaf.grad
            loss_sum += loss.detach()
            accuracy_sum += accuracy
        wanted = [n for n, v in stacked.items() if v.requires_grad]
        if wanted:
            torch.autograd.backward([stacked[n] for n in wanted], [upstream[n] for n in wanted])
        return loss_sum, accuracy_sum
