"""MAML and ANIL learners for any torch model: functional adaptation, no module cloning.

A learner is an ``nn.Module`` that holds the model and the transform (meta-optimizer), so
``learner.parameters()`` are everything meta-training updates. ``learner.adapt`` returns the
adapted parameters as a dict keyed by the model's own parameter names, and ``learner(x, params=fast)``
evaluates the model with them through ``torch.func.functional_call``. The learner keeps no state
between calls: the adaptation lives only in the returned dict, and the loss of the query set,
backpropagated, reaches the model's and the transform's parameters.

    learner = meta.MAML(model, lr=0.1, steps=5, transform=meta.KFO())
    fast = learner.adapt(x_support, y_support, loss_fn)
    loss_fn(learner(x_query, params=fast), y_query).backward()

Module state (buffers): the policy
----------------------------------
``buffers="update"`` (default): the forwards inside ``adapt`` and ``learner(x, params=fast)`` are
ordinary forward passes, so a train-mode BatchNorm updates its running statistics on every inner
step and every query pass, and a buffer the model assigns in ``forward`` keeps its new value, as
outside meta-learning. Under ``torch.func.vmap`` (the engine's "split" and "vmap" strategies) such
in-place updates are impossible: a train-mode norm layer with running statistics is refused there
with a ``ValueError`` naming the module.
``buffers="frozen"``: adaptation and query passes leave every buffer as it was. Train-mode norm
layers normalise with the batch statistics (as MAML does) without updating their running
statistics; eval-mode ones use their running statistics; any other buffer a forward changes or
reassigns is changed on a copy that is dropped. This works under every engine strategy. Plain
``learner(x)`` (no ``params``) is the model's own forward in either policy.

Errors instead of torch tracebacks: support data whose floating dtype differs from the model's
(``x_support``/``y_support``), transform parameters whose dtype differs from the model's (e.g.
``model.double()`` after wrapping: convert the learner instead), ``lr`` given as a tensor or
``nn.Parameter`` (a fixed number would be read from it: learn rates with :class:`LearnedRates` or
``MetaSGD``). ``check_finite=True`` (opt-in: it reads values back from the device) also refuses a
support set with NaN or infinite entries and an inner loop whose adapted parameters are not finite;
outside function transforms only (under ``vmap`` the engine checks the stacked support set).

Learned transforms are trained for ``steps`` inner steps; ``adapt(..., steps=k)`` with more steps
runs them where they never were trained, and a learned preconditioner tuned to k steps can overshoot
and diverge beyond them. The first such call on a learner with learned transform parameters warns
(:class:`StepsBeyondTrainingWarning`, once per learner).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.inner_loop import run_steps, under_function_transform
from linmaml.meta.transforms import Transform, as_transform, tree_leaves

#: The most inner steps a learner takes (each keeps its graph for the meta-gradient; MAML uses 1-10
#: in training and up to 50 at test time).
MAX_STEPS = 10_000


def check_task_inputs(x, y, x_name: str, y_name: str) -> None:
    """Refuse, naming the argument, an empty set of examples and integer class labels below 0, where
    they are plain tensors (cheap checks outside function transforms; labels beyond the model's outputs are named when the
    loss reports them, see :func:`named_input_failures`)."""
    if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == 0:
        raise ArgumentError(x_name, f"an empty set of examples (shape {tuple(x.shape)}) has no loss to adapt on or "
                                    f"score")
    if isinstance(y, torch.Tensor) and not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool) \
            and y.numel() \
            and not under_function_transform() and bool((y < 0).any()):
        raise ArgumentError(y_name, f"class labels must be 0 .. outputs-1, got {int(y.min())}")


@contextlib.contextmanager
def named_input_failures(x_names, y_names, inputs=()):
    """Turn what torch raises for labels past the model's outputs (``IndexError: Target 7 is out of
    bounds``) and for integer inputs to a floating-point model (a dtype ``RuntimeError``) into an
    :class:`ArgumentError` / :class:`ArgumentTypeError` naming the argument; likewise the ``TypeError``
    of a model handed an input that holds no tensor at all (a NumPy array, a list of numbers): any
    input the model takes is allowed, so only the model's own refusal says the input was wrong."""
    try:
        yield
    except TypeError as error:
        tensorless = [(name, value) for name, value in zip(x_names, inputs)
                      if value is not None and not _tensor_leaves(value)]
        if not tensorless:
            raise
        name, value = tensorless[0]
        raise ArgumentTypeError(name, f"the model could not take a {type(value).__name__} holding no tensor "
                                      f"({str(error).splitlines()[0]}); convert it with torch.as_tensor") from None
    except IndexError as error:
        raise ArgumentError(", ".join(y_names), f"a class label is not below the model's number of outputs "
                                                f"({str(error).splitlines()[0]})") from None
    except RuntimeError as error:
        integer = [name for name, value in zip(x_names, inputs)
                   if isinstance(value, torch.Tensor) and not (value.dtype.is_floating_point or value.dtype.is_complex)]
        if not integer:
            raise
        raise ArgumentTypeError(integer[0], f"the model could not take {inputs[0].dtype} inputs "
                                            f"({str(error).splitlines()[0]}); convert them with .float() or .to(dtype)"
                                ) from None

__all__ = ["MAML", "ANIL", "head_parameter_names", "adapted_parameter_names", "StepsBeyondTrainingWarning",
           "BUFFER_POLICIES"]

#: The module-state policies of the learners (module docstring).
BUFFER_POLICIES = ("update", "frozen")


class StepsBeyondTrainingWarning(UserWarning):
    """``adapt`` ran a learned transform for more inner steps than the learner was trained with."""


def _running_stat_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every train-mode norm layer that updates running statistics in forward."""
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats]


@contextlib.contextmanager
def frozen_buffers(module: nn.Module):
    """Inside, forwards of ``module`` leave its buffers as they were (module docstring, "frozen").

    Train-mode norm layers with running statistics run as if built with
    ``track_running_stats=False`` (batch statistics, nothing updated, which ``vmap`` allows); every
    other buffer is replaced by a copy, so in-place changes and reassignments hit the copy. All is
    put back on exit, also on error.
    """
    layers = _running_stat_layers(module)
    saved = []
    try:
        for _, m in layers:
            m.track_running_stats = False
        for owner in module.modules():
            for attr, b in owner._buffers.items():
                if b is not None:
                    saved.append((owner, attr, b))
                    owner._buffers[attr] = b.clone()
        yield
    finally:
        for owner, attr, b in reversed(saved):
            owner._buffers[attr] = b
        for _, m in layers:
            m.track_running_stats = True


def state_policy(module: nn.Module, policy: str):
    """The context of every forward with adapted parameters under the buffers ``policy`` ("update" or
    "frozen", module docstring): :func:`frozen_buffers`, or nothing — except that under a function
    transform (vmap) a train-mode norm layer with running statistics is refused, naming the layer."""
    if policy == "frozen":
        return frozen_buffers(module)
    if under_function_transform():
        layers = _running_stat_layers(module)
        if layers:
            name, m = layers[0]
            raise ArgumentError("buffers", f"module {name!r} ({type(m).__name__}) updates its running statistics "
                                f"in place, which torch.func.vmap cannot do; pass buffers='frozen' to the "
                                f"learner (batch statistics, running statistics untouched), build the layer with "
                                f"track_running_stats=False, or use the engine's strategy 'loop'")
    return contextlib.nullcontext()


def check_buffers_policy(buffers) -> str:
    if buffers not in BUFFER_POLICIES:
        raise ArgumentError("buffers", f"expected one of {', '.join(map(repr, BUFFER_POLICIES))}, got {buffers!r}")
    return buffers


def head_parameter_names(model: nn.Module, argument: str = "adapted") -> list[str]:
    """Names (as ``model.named_parameters()`` gives them) of the parameters of the model's head.

    The head is the *last* ``nn.Linear`` (subclasses included) in ``model.named_modules()``, i.e. in
    registration order, depth first. For ``nn.Sequential`` models, and for any model that registers
    its output layer last, that is the output layer. Only parameters that require gradients count.
    ``argument``: the name errors give (the learner's argument that asked for the head).
    """
    heads = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ArgumentError(argument, "'head' means the parameters of the model's last nn.Linear, but the model "
                            "has no nn.Linear; pass a list of parameter names instead")
    # A tied parameter appears in named_parameters() once, under its first name: map by identity.
    canonical = {id(p): name for name, p in model.named_parameters()}
    names = [canonical[id(p)] for p in heads[-1].parameters(recurse=False) if p.requires_grad]
    if not names:
        raise ArgumentError(argument, "the model's last nn.Linear has no parameters that require gradients")
    return names


def adapted_parameter_names(model: nn.Module, adapted, argument: str = "adapted") -> list[str]:
    """Resolve ``adapted`` ("all", "head" or a list of parameter names) to parameter names, model order.

    "all" is every parameter that requires gradients (frozen ones stay frozen); a list may name any
    parameter of the model, frozen or not. ``argument``: the name errors give.
    """
    params = dict(model.named_parameters())
    if isinstance(adapted, str):
        if adapted == "all":
            names = [n for n, p in params.items() if p.requires_grad]
            if not names:
                raise ArgumentError(argument, "the model has no parameters that require gradients")
            return names
        if adapted == "head":
            return head_parameter_names(model, argument)
        raise ArgumentError(argument, f"expected 'all', 'head' or a list of parameter names, got {adapted!r}")
    if not isinstance(adapted, Sequence):
        raise ArgumentTypeError(argument, f"expected 'all', 'head' or a list of parameter names, got "
                                f"{type(adapted).__name__}")
    if not adapted:
        raise ArgumentError(argument, "expected at least one parameter name, got an empty list")
    for name in adapted:
        if not isinstance(name, str):
            raise ArgumentTypeError(argument, f"expected parameter names (str), got {name!r}")
        if name not in params:
            raise ArgumentError(argument, f"the model has no parameter named {name!r}; its parameters are "
                                f"{', '.join(params) or 'none'}")
    chosen = set(adapted)
    return [n for n in params if n in chosen]


def parameter_slots(module: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """name -> every (submodule, attribute) holding that parameter, keyed as ``module.named_parameters()``.

    A tied parameter appears once under its first name, with all of its places, so that replacing it
    replaces it everywhere (as ``functional_call`` does by default).
    """
    canonical: dict[int, str] = {}
    slots: dict[str, list[tuple[nn.Module, str]]] = {}
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for attr, p in owner._parameters.items():
            if p is not None:
                name = canonical.setdefault(id(p), f"{prefix}.{attr}" if prefix else attr)
                slots.setdefault(name, []).append((owner, attr))
    return slots


def call_with(module: nn.Module, slots, params, args: tuple, kwargs: dict | None = None):
    """``module(*args)`` with the tensors ``params`` (name -> tensor, names of ``slots``) in place of
    its parameters, which are put back afterwards, also on error.

    What ``torch.func.functional_call`` does (it swaps the same ``_parameters`` entries), without its
    general machinery (pytrees, buffers, name parsing): the per-task loop calls this a few times per
    task, where that machinery costs more than a small model's arithmetic.
    """
    saved = []
    try:
        for name, tensor in params.items():
            for owner, attr in slots[name]:
                saved.append((owner, attr, owner._parameters[attr]))
                owner._parameters[attr] = tensor
        return module(*args, **(kwargs or {}))
    finally:
        for owner, attr, original in reversed(saved):
            owner._parameters[attr] = original


def _refuse_tensor_rates(lr) -> None:
    """A tensor (or nn.Parameter) rate would be read once as a number and never learned: refuse it."""
    values = lr if isinstance(lr, (list, tuple)) else [lr]
    for value in values:
        if isinstance(value, torch.Tensor):
            kind = "an nn.Parameter" if isinstance(value, nn.Parameter) else "a torch.Tensor"
            raise ArgumentTypeError("lr", f"expected a number or one number per step, got {kind}: its value would "
                                    f"be read once and never learned; learn inner rates with a transform "
                                    f"(meta.LearnedRates per tensor and step, meta.MetaSGD per element)")


def _tensor_leaves(value) -> list[torch.Tensor]:
    """The tensors in ``value``: a tensor, or any nesting of dicts, tuples and lists (others ignored)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [leaf for item in value.values() for leaf in _tensor_leaves(item)]
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _tensor_leaves(item)]
    return []


def _check_adapt_call(x_support, y_support, loss_fn, closure) -> None:
    """The two forms of ``adapt``: ``(x_support, y_support, loss_fn)`` or ``closure=`` alone."""
    if closure is not None:
        if not callable(closure):
            raise ArgumentTypeError("closure", f"expected a callable params -> scalar loss, got {type(closure).__name__}")
        given = [name for name, value in (("x_support", x_support), ("y_support", y_support), ("loss_fn", loss_fn))
                 if value is not None]
        if given:
            raise ArgumentError("closure", f"pass either closure=... or (x_support, y_support, loss_fn), not both "
                                f"(got closure and {', '.join(given)})")
        return
    if x_support is None:
        raise ArgumentError("x_support", "missing; pass adapt(x_support, y_support, loss_fn), or for a support loss "
                            "written as a function of the parameters adapt(closure=lambda params: ...)")
    if not callable(loss_fn):
        raise ArgumentTypeError("loss_fn", f"expected a callable (output, target) -> scalar, got "
                                f"{type(loss_fn).__name__}; for a loss of the parameters alone pass closure=")


def _apply(module: nn.Module, params, x, kwargs: dict | None = None):
    """``module(x, **kwargs)`` with the parameters ``params``: the quick swap outside function
    transforms, and ``functional_call`` (names of buffers allowed) inside them or for names it alone
    knows."""
    if not under_function_transform():
        slots = parameter_slots(module)
        if all(n in slots for n in params):
            return call_with(module, slots, params, (x,), kwargs)
    return functional_call(module, params, (x,), kwargs or {})


def norm_steps(module) -> int:
    """The number of per-step normalisation sets of ``module`` (MAML++'s per-step BatchNorm weights
    and biases: a model with ``norm_steps = S > 0`` takes ``forward(x, step=k)`` and normalises with
    its set ``min(k, S − 1)``; :class:`linmaml.benchmarks.models.ConvNet`), 0 for any other model."""
    return int(getattr(module, "norm_steps", 0) or 0)


class _Learner(nn.Module):
    """Shared set-up: inner learning rates, number of steps, transform and flags.

    The rates are checked once here, so the per-task calls do not check them again.
    """

    def __init__(self, lr, steps, transform, first_order, adapt_transform, buffers="update", check_finite=False):
        super().__init__()
        self.steps = _validate.integer(steps, "steps", minimum=1, maximum=MAX_STEPS)
        _refuse_tensor_rates(lr)
        self.lrs = _validate.learning_rates(lr, self.steps, "lr")
        for flag, name in ((first_order, "first_order"), (adapt_transform, "adapt_transform"),
                           (check_finite, "check_finite")):
            if not isinstance(flag, bool):
                raise ArgumentTypeError(name, f"expected True or False, got {flag!r}")
        check_buffers_policy(buffers)
        self.first_order = first_order
        self.adapt_transform = adapt_transform
        # Not ``self.buffers``: that would hide nn.Module.buffers(), which SWA/EMA wrappers
        # (torch.optim.swa_utils.AveragedModel) and nn.DataParallel call.
        self.buffers_policy = buffers
        self.check_finite = check_finite
        self.transform = as_transform(transform)
        self._warned_steps = False
        #: Inner steps on minibatches of this many support examples (None: all of them at every step;
        #: :func:`linmaml.meta.inner_loop.run_steps`'s ``batch``). ``linmaml train --inner-batch`` sets it
        #: while computing meta-gradients only, so validation adapts on the whole support set. The
        #: ``adapt(x, y, loss_fn)`` form only: a closure computes its own loss. ANIL batches the
        #: features, which it computes once on the whole support set.
        self.inner_batch = None

    def __setstate__(self, state):
        # A learner pickled before the policy was renamed kept it as ``buffers``, hiding the method.
        if isinstance(state.get("buffers"), str):
            state = dict(state)
            state["buffers_policy"] = state.pop("buffers")
        super().__setstate__(state)

    def _state_policy(self):
        """The context of every forward with adapted parameters: the buffers policy, enforced."""
        return state_policy(self, self.buffers_policy)

    def _warn_steps(self, steps, tparams, named_params):
        # A transform still at its initialisation (identity KFO factors, unit Meta-SGD rates) is plain
        # MAML, which has no trained step count to overshoot: no warning then.
        if (steps is not None and steps > self.steps and tparams and not self._warned_steps
                and not self.transform.at_initialisation(named_params)):
            self._warned_steps = True
            warnings.warn(f"steps: adapting for {steps} inner steps with a learned transform "
                          f"({type(self.transform).__name__}) trained for {self.steps}: a learned "
                          f"preconditioner is tuned to the steps it was trained for and may overshoot or "
                          f"diverge beyond them (warned once per learner)", StepsBeyondTrainingWarning,
                          stacklevel=4)

    def adapted_subset(self, adapted=None) -> list[str]:
        """The names one adaptation adapts: ``adapted_names`` (``adapted=None``), or ``adapted``, a
        non-empty subset of them (any order; returned in ``adapted_names`` order). The learner is not
        changed: the others keep their meta-learned values in that adaptation, the transform acts on
        the chosen ones as it would in a full adaptation (for an ablation: which layers must adapt)."""
        if adapted is None:
            return self.adapted_names
        if isinstance(adapted, str) or not isinstance(adapted, Sequence):
            raise ArgumentTypeError("adapted", f"expected a list of parameter names, got {type(adapted).__name__}")
        chosen = set(adapted)
        unknown = sorted(n for n in chosen if n not in self.adapted_names)
        if unknown or not chosen:
            raise ArgumentError("adapted", f"expected a non-empty subset of the adapted parameters "
                                           f"({', '.join(self.adapted_names)}), got {unknown or list(adapted)}")
        return [n for n in self.adapted_names if n in chosen]

    def step_rates(self, steps: int | None = None) -> list[float]:
        """The inner learning rate of each step. ``steps`` overrides the number of steps (test time);
        with per-step rates, a longer run repeats the last rate and a shorter one uses the first."""
        if steps is None:
            return list(self.lrs)
        steps = _validate.integer(steps, "steps", minimum=1, maximum=MAX_STEPS)
        return [self.lrs[min(k, len(self.lrs) - 1)] for k in range(steps)]

    def _run_inner_loop(self, module: nn.Module, names: Sequence[str], x, y, loss_fn, steps, closure=None,
                        trajectory=False):
        """The adapted parameters of ``module`` (every name; ``names`` adapted): the support loss is
        ``loss_fn(module(x), y)``, or ``closure(params)`` when a closure is given (then x, y, loss_fn
        are None and ``params`` is the dict of every parameter name, the adapted ones current);
        ``trajectory``: every step's parameters, a list (:meth:`MAML.adapt_trajectory`)."""
        if closure is None and not callable(loss_fn):
            raise ArgumentTypeError("loss_fn", f"expected a callable (output, target) -> scalar, got "
                                    f"{type(loss_fn).__name__}")
        rates = self.lrs if steps is None else self.step_rates(steps)
        slots = parameter_slots(module)
        # The first slot of each name holds the parameter itself: named_parameters() without a second walk.
        base = {n: owner._parameters[attr] for n, ((owner, attr), *_) in slots.items()}
        dtype = base[names[0]].dtype
        # Inputs and targets may be any nesting of dicts, tuples and lists (a dict-input model, y=None):
        # their floating tensors are the ones checked.
        data = [] if closure is not None else [(x, "x_support"), (y, "y_support")]
        for value, name in data:
            for leaf in _tensor_leaves(value):
                if leaf.dtype.is_floating_point and leaf.dtype != dtype:
                    raise ArgumentTypeError(name, f"dtype {leaf.dtype} differs from the model's parameters ({dtype}); "
                                            f"convert the data with .to({dtype})")
        checking = self.check_finite and not under_function_transform()
        if checking:
            for value, name in data:
                for leaf in _tensor_leaves(value):
                    if leaf.dtype.is_floating_point and not bool(torch.isfinite(leaf).all()):
                        raise ArgumentError(name, "contains NaN or infinite values (check_finite=True)")

        def scalar_loss(output, target):
            # The gradient needs a scalar; say which argument is at fault (shapes only: no sync).
            value = closure(output) if closure is not None else loss_fn(output, target)
            if not isinstance(value, torch.Tensor) or value.ndim != 0:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ArgumentError("closure" if closure is not None else "loss_fn",
                                    f"expected a scalar tensor (e.g. a mean over examples), got {shape}")
            return value

        if under_function_transform():
            if closure is not None:
                def forward(fast, buffers, inputs, **kwargs):
                    return {**base, **fast}
            else:
                def forward(fast, buffers, inputs, **kwargs):
                    return functional_call(module, ({**base, **fast}, buffers), (inputs,), kwargs)
            buffers = dict(module.named_buffers())
        else:
            # First order (and no_grad) use the inner gradients' values only: the parameters that
            # do not adapt enter those forwards detached, so no graph is recorded for them either.
            constant = self.first_order or not torch.is_grad_enabled()
            others = {n: p.detach() for n, p in base.items() if n not in names} if constant else {}
            if closure is not None:
                fixed = others or base

                def forward(fast, buffers, inputs, **kwargs):
                    return {**fixed, **fast}
            else:
                def forward(fast, buffers, inputs, **kwargs):
                    return call_with(module, slots, {**others, **fast} if others else fast, (inputs,), kwargs)
            buffers = None  # the module's own buffers, updated in place as by any forward pass

        tparams = self.transform.params()
        leaves = tree_leaves(tparams)
        # one look suffices: a transform is built in one dtype and converted as a whole
        if leaves and leaves[0].dtype != dtype:
            first = next(name for name, _ in self.transform.named_parameters())
            raise ArgumentTypeError("transform", f"parameter {first!r} is {leaves[0].dtype} but the model's parameters "
                                    f"are {dtype} (was the model converted after wrapping? convert the whole "
                                    f"learner, e.g. learner.double(), so the transform follows)")
        self._warn_steps(steps, leaves, {n: base[n] for n in names})
        if closure is None:
            check_task_inputs(x, y, "x_support", "y_support")
        with named_input_failures(["x_support"], ["y_support"], (x,)):
            fast, _ = run_steps(forward, scalar_loss, {n: base[n] for n in names}, self.transform, tparams, x, y,
                                rates, first_order=self.first_order, adapt_transform=self.adapt_transform,
                                buffers=buffers, trajectory=trajectory, step_forward=norm_steps(module) > 0,
                                batch=None if closure is not None else getattr(self, "inner_batch", None))
        if trajectory:  # every step's parameters (MAML++'s multi-step loss); the last one checked below
            visited, fast = fast, fast[-1]
        if checking:
            for n, value in fast.items():
                if not bool(torch.isfinite(value).all()):
                    raise ArgumentError("lr", f"the inner loop diverged: adapted parameter {n!r} is not finite after "
                                        f"{len(rates)} steps (check_finite=True); lower the rate or the steps")
        if trajectory:
            return [{n: step.get(n, p) for n, p in base.items()} for step in visited]
        return {n: fast.get(n, p) for n, p in base.items()}


class MAML(_Learner):
    """Model-agnostic meta-learning (Finn et al. 2017) with a gradient transform.

    Parameters
    ----------
    model: any ``nn.Module``; ``model(x)`` is its output (``x`` a tensor, a dict, …: anything it takes).
    lr: inner learning rate, a number or one number per step. Default 0.1, with ``steps=5``: the
        library's defaults (Finn et al.'s sinusoid setting), which differ from ``linmaml train``'s
        (``--inner-lr 0.4 --steps 1``, the Omniglot setting): pass both explicitly when porting a run.
    steps: inner steps (≥ 1) at training time; ``adapt(..., steps=k)`` overrides it.
    transform: a :mod:`linmaml.meta.transforms` meta-optimizer (default ``Identity()``: plain MAML).
        It is built here for the adapted parameters' shapes.
    first_order: detach the inner gradients (first-order MAML); default second order.
    adapted: which parameters the inner loop adapts: "all" (every parameter requiring gradients),
        "head" (those of the last ``nn.Linear``, see :func:`head_parameter_names`) or a list of
        parameter names. (Called ``adapt`` before, which clashed with the method ``adapt``; that
        keyword still works, with a ``DeprecationWarning``.)
    adapt_transform: also adapt the transform's parameters in the inner loop, from the second step
        on, with the same step size (see :mod:`linmaml.meta.inner_loop`).
    buffers: "update" (default) or "frozen": the module-state policy (module docstring), kept as
        ``learner.buffers_policy`` (``learner.buffers()`` is ``nn.Module.buffers``).
    check_finite: refuse non-finite support sets and diverged adaptations (module docstring; reads
        values back from the device, so off by default).
    """

    def __init__(self, model: nn.Module, lr=0.1, steps: int = 5, transform: Transform | None = None,
                 first_order: bool = False, adapted="all", adapt_transform: bool = False, buffers: str = "update",
                 check_finite: bool = False, *, adapt=None):
        argument = "adapted"
        if adapt is not None:  # the old name of ``adapted``
            if not (isinstance(adapted, str) and adapted == "all"):
                raise ArgumentError("adapt", "is the old name of 'adapted'; pass only adapted")
            warnings.warn("adapt: MAML's argument 'adapt' is now called 'adapted' (it clashed with the method "
                          "learner.adapt); pass adapted=...", DeprecationWarning, stacklevel=2)
            adapted, argument = adapt, "adapt"
        super().__init__(lr, steps, transform, first_order, adapt_transform, buffers, check_finite)
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.adapted_names = adapted_parameter_names(model, adapted, argument)
        params = dict(model.named_parameters())
        self.transform.build({n: params[n] for n in self.adapted_names}, steps=self.steps)

    def adapt(self, x_support: Any = None, y_support: Any = None,
              loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
              steps: int | None = None, *, closure: Callable[[dict], torch.Tensor] | None = None,
              adapted=None) -> dict[str, torch.Tensor]:
        """Adapted parameters for one task: a dict with every name of ``model.named_parameters()``
        (the adapted ones replaced, the others the model's own tensors), differentiable with respect
        to the model's and the transform's parameters.

        Two forms. ``adapt(x_support, y_support, loss_fn)``: the support loss is
        ``loss_fn(model(x_support), y_support)``; ``x_support`` is whatever the model takes (a tensor,
        a dict of tensors, …) and ``y_support`` whatever ``loss_fn`` takes (None included).
        ``adapt(closure=fn)``: the support loss is ``fn(params)``, a scalar, for ``params`` the dict
        of every parameter name with the adapted ones at their current inner-loop values; evaluate the
        model inside with ``learner(inputs, params=params)``. Any loss works: NLP batches, a
        policy-gradient (REINFORCE) surrogate, a regulariser on the weights. ``steps`` as before.
        ``adapted``: adapt only these of ``adapted_names`` this time (:meth:`adapted_subset`).
        """
        _check_adapt_call(x_support, y_support, loss_fn, closure)
        with self._state_policy():
            return self._run_inner_loop(self.model, self.adapted_subset(adapted), x_support, y_support, loss_fn,
                                        steps, closure)

    def adapt_trajectory(self, x_support: torch.Tensor, y_support: torch.Tensor,
                         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         steps: int | None = None, *, adapted=None) -> list[dict[str, torch.Tensor]]:
        """The adapted parameters after each inner step, ``[θ₁, …, θ_S]`` (each a dict as
        :meth:`adapt` returns; the last is :meth:`adapt`'s): the one inner loop, every step kept, for
        MAML++'s multi-step loss (:meth:`linmaml.meta.Engine.meta_gradient`, ``step_weights``)."""
        _check_adapt_call(x_support, y_support, loss_fn, None)
        with self._state_policy():
            return self._run_inner_loop(self.model, self.adapted_subset(adapted), x_support, y_support, loss_fn,
                                        steps, trajectory=True)

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None,
                step: int | None = None) -> torch.Tensor:
        """The model's output on ``x``, with the parameters ``params`` (e.g. from ``adapt``) if given.
        ``step``: for a model with per-step normalisation (:func:`norm_steps`), which step's set to use
        (the parameters after k inner steps are scored with set k − 1, as MAML++ does; default: the
        model's own default); other models take no step."""
        kwargs = None
        if step is not None:
            if not norm_steps(self.model):
                raise ArgumentError("step", f"{type(self.model).__name__} has no per-step normalisation to choose from")
            kwargs = {"step": _validate.integer(step, "step", minimum=0)}
        if params is None:
            return self.model(x, **(kwargs or {}))
        with self._state_policy():
            return _apply(self.model, params, x, kwargs)


class ANIL(_Learner):
    """Almost No Inner Loop (Raghu et al. 2020): only the head adapts, on features computed once.

    ``features`` maps inputs to representations and ``head`` maps those to outputs; the model is
    ``head(features(x))``. ``adapt`` evaluates the features of the support set once per task and runs
    the inner loop on the head alone, so it equals ``MAML(nn.Sequential(features, head),
    adapted="head")`` when ``head`` is an ``nn.Linear``. ``adapt`` returns a dict keyed by
    ``head.named_parameters()`` names; the other arguments are as for :class:`MAML`.

    Porting from learn2learn: its ANIL examples compute ``features`` once on the support and query
    images *together* (one batch) and split the result, so a BatchNorm in ``features`` normalises
    both with their joint statistics. Here ``features`` sees the support set in ``adapt`` and the
    query set in ``learner(x_query, params=fast)``, each normalised with its own statistics (as MAML
    does). The two give different numbers with batch statistics; to reproduce learn2learn exactly,
    compute ``z = features(torch.cat([x_s, x_q]))`` yourself and adapt the head on ``z[:n_s]`` (e.g.
    ``MAML(head)`` or ``adapt(closure=...)``).
    """

    def __init__(self, features: nn.Module, head: nn.Module, lr=0.1, steps: int = 5,
                 transform: Transform | None = None, first_order: bool = False, adapt_transform: bool = False,
                 buffers: str = "update", check_finite: bool = False):
        super().__init__(lr, steps, transform, first_order, adapt_transform, buffers, check_finite)
        for value, name in ((features, "features"), (head, "head")):
            if not isinstance(value, nn.Module):
                raise ArgumentTypeError(name, f"expected a torch.nn.Module, got {type(value).__name__}")
        self.features = features
        self.head = head
        params = dict(head.named_parameters())
        self.adapted_names = [n for n, p in params.items() if p.requires_grad]
        if not self.adapted_names:
            raise ArgumentError("head", "expected a module with parameters that require gradients")
        self.transform.build({n: params[n] for n in self.adapted_names}, steps=self.steps)

    def adapt(self, x_support: Any = None, y_support: Any = None, loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
              steps: int | None = None, *, closure: Callable[[dict], torch.Tensor] | None = None,
              adapted=None) -> dict[str, torch.Tensor]:
        """Adapted head parameters for one task (dict keyed by ``head.named_parameters()`` names).

        The two forms of :meth:`MAML.adapt`. ``(x_support, y_support, loss_fn)``: the features of
        ``x_support`` (any input ``features`` takes) are computed once and the head adapts on them.
        ``closure=fn``: ``fn(head_params)`` is the support loss; ``learner(inputs, params=head_params)``
        inside it recomputes the features at each inner step (cache them in the closure to avoid that).
        ``adapted``: adapt only these of ``adapted_names`` this time (:meth:`adapted_subset`).
        """
        _check_adapt_call(x_support, y_support, loss_fn, closure)
        with self._state_policy():
            features = None if closure is not None else self.features(x_support)
            return self._run_inner_loop(self.head, self.adapted_subset(adapted), features, y_support, loss_fn, steps,
                                        closure)

    def adapt_trajectory(self, x_support, y_support, loss_fn, steps: int | None = None, *,
                         adapted=None) -> list[dict[str, torch.Tensor]]:
        """The adapted head parameters after each inner step (as :meth:`MAML.adapt_trajectory`)."""
        _check_adapt_call(x_support, y_support, loss_fn, None)
        with self._state_policy():
            return self._run_inner_loop(self.head, self.adapted_subset(adapted), self.features(x_support), y_support,
                                        loss_fn, steps, trajectory=True)

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``head(features(x))``, with the head's parameters ``params`` if given."""
        if params is None:
            return self.head(self.features(x))
        with self._state_policy():
            return _apply(self.head, params, self.features(x))
