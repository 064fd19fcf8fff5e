"""The inner loop as a pure function: (params, transform params, x, y) -> adapted params.

Everything a step needs arrives as an argument and nothing is mutated, so the loop can be batched
over the tasks of a meta-batch with ``torch.func.vmap`` and differentiated by the outer autograd.
(The one exception is module state: a train-mode BatchNorm updates its running statistics in the
buffers it is given, as any forward pass does; under ``vmap`` such a layer needs
``track_running_stats=False``, a torch.func restriction. Beware too that under ``vmap`` torch's
second derivatives of batch, instance and layer norm are silently wrong (pytorch/functorch#534):
batch the tasks through :class:`linmaml.meta.engine.Engine`, which computes those layers from
their formulas, rather than vmapping this function directly.)
The outer ``backward()`` differentiates through the inner gradients (second-order MAML) unless
``first_order`` asks for them to be treated as constants. They are taken with ``torch.autograd.grad``
(``create_graph`` for second order) when the loop runs on its own, the path of a plain per-task loop
and the fastest one, and with ``torch.func.grad``, which composes with ``vmap``, when it runs inside a
function transform or ``torch.compile`` (:func:`run_steps`); both compute the same numbers.

One step k (rate αₖ, transform T with parameters φ):

    Gₖ = ∇_θ ℓ(θₖ₋₁; x, y)
    φₖ = φₖ₋₁ − αₖ ∇_φ ℓ(θₖ₋₁)         only with adapt_transform, for k ≥ 2 (see below)
    θₖ = θₖ₋₁ − αₖ T(Gₖ; φₖ)

With ``adapt_transform`` the transform adapts from the second step on: θₖ₋₁ = θₖ₋₂ − αₖ₋₁ T(Gₖ₋₁; φₖ₋₁)
depends on φₖ₋₁, so ∇_φ ℓ(θₖ₋₁) = −αₖ₋₁ J_T(φₖ₋₁)ᵀ Gₖ, a vector-Jacobian product of the previous
step's transform with the current gradient (Gₖ₋₁ held fixed: it does not depend on φₖ₋₁). The
transform is updated first and the updated one transforms Gₖ.

The transform is called through its protocol (:mod:`linmaml.meta.transforms`) as
``transform.step(Gₖ, φₖ, sₖ₋₁, k − 1) -> (Uₖ, sₖ)``, every transform the same way, with the state s₀
(``transform.initial_state`` unless given) fresh for every call of the loop; with ``adapt_transform``
its vector-Jacobian product is taken at the state it was given, which is held fixed as Gₖ₋₁ is.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.transforms import Transform, tree_leaves, tree_map

Params = dict[str, torch.Tensor]


def inner_loop(forward: Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor],
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               params: Mapping[str, torch.Tensor],
               transform: Transform,
               transform_params: Mapping[str, torch.Tensor],
               x: torch.Tensor,
               y: torch.Tensor,
               lrs: Sequence[float],
               *,
               first_order: bool = False,
               adapt_transform: bool = False,
               buffers: Mapping[str, torch.Tensor] | None = None,
               state=None) -> tuple[Params, object]:
    """Adapt ``params`` with ``len(lrs)`` transformed gradient steps on the support set (x, y).

    ``forward(params, buffers, x)`` returns the model's output with the adapted parameters
    ``params`` (a dict name -> tensor; any other parameters are the forward's own business) and the
    module state ``buffers`` (e.g. BatchNorm running statistics, default none), ``loss_fn(output, y)``
    a scalar. The buffers are an argument rather than captured by ``forward`` because a train-mode
    BatchNorm updates its running statistics in place, which ``torch.func.grad`` allows only on its
    inputs; they are updated as by an ordinary forward pass. ``transform.step(grads,
    transform_params, state, k)`` maps gradients to updates; ``transform_params`` is the transform's
    params tree (``transform.params()``; a dict keyed as ``transform.named_parameters()`` is read as
    that tree), ``state`` the state of the first step (default ``transform.initial_state``).
    Returns the adapted parameters and the (possibly adapted) transform params tree, both
    differentiable with respect to the inputs; ``first_order`` detaches every inner gradient.

    ``lrs`` holds one finite real number per step (a list, tuple or 1-d NumPy array; negative rates
    are gradient ascent and allowed). An empty sequence takes no step and returns the parameters
    unchanged: the 0-step adaptation. Torch tensors are refused: reading their value would
    synchronise with the device, and using them as numbers would silently detach a learned rate
    (learn step sizes with a transform such as ``MetaSGD``). Bad rates raise ``ValueError`` /
    ``TypeError`` naming ``lrs`` before any gradient is taken.
    """
    rates = check_rates(lrs)
    return run_steps(forward, loss_fn, params, transform, transform.as_params(transform_params), x, y, rates,
                     first_order=first_order, adapt_transform=adapt_transform, buffers=buffers, state=state)


def under_function_transform() -> bool:
    """True inside ``torch.func`` transforms (vmap, grad, jvp …) or while ``torch.compile`` traces.

    There the inner gradients must come from ``torch.func.grad``, which composes with the enclosing
    transform; elsewhere plain ``torch.autograd.grad`` computes the same numbers with less overhead.
    """
    return torch._C._functorch.peek_interpreter_stack() is not None or torch.compiler.is_compiling()


def run_steps(forward, loss_fn, params, transform, transform_params, x, y, lrs: list[float], *,
              first_order: bool, adapt_transform: bool, buffers=None, state=None,
              trajectory: bool = False, step_forward: bool = False, batch: int | None = None) -> tuple[Params, object]:
    """:func:`inner_loop` with ``lrs`` already checked (a list of floats) and ``transform_params`` a
    params tree: what the learners call.

    Two code paths compute the same gradients (tested equal in float64): under a function transform
    (:func:`under_function_transform`) they come from ``torch.func.grad``; otherwise from
    ``torch.autograd.grad`` directly, which skips functorch's per-call wrapping. On that path first
    order builds no graph the outer backward would carry: each inner gradient is taken at detached
    copies of the parameters and inputs (its value is all first order uses), so only the updates
    θₖ = θₖ₋₁ − αₖ T(Gₖ) stay on the outer graph. Without grad mode (``torch.no_grad``) the steps
    are taken the same way: there is no outer graph to build. Every transform is called the same
    way, ``transform.step``; with ``adapt_transform`` through ``torch.func.vjp``, whose pullback the
    next step uses.

    ``trajectory=True`` returns, in place of the adapted parameters, the list of the parameters after
    each step ``[θ₁, …, θ_S]`` (one dict per step, the same tensors the loop computes: what MAML++'s
    multi-step loss scores, :meth:`linmaml.meta.Engine.meta_gradient` with ``step_weights``).
    ``step_forward=True`` calls ``forward(params, buffers, x, step=k)`` at step k = 0, 1, … (a model
    with per-step normalisation, MAML++'s BNWB: :func:`linmaml.meta.maml_learners.norm_steps`).

    ``batch=B`` (None: every example at every step): step k's gradient is taken on the minibatch
    :func:`minibatch` ``(x, y, B, k)``, rows ``kB, kB + 1, …, kB + B − 1`` of the support set taken
    modulo its size n (consecutive batches, wrapping around after the last row: one pass over the
    data every n/B steps when B divides n). Shuffle the rows first for random batches (the training
    sampler's ``shuffle_support``). ``x`` and ``y`` must then be tensors with the examples on their
    first axis; B = n is the full batch (the same rows, in the same order).
    """
    buffers = {} if buffers is None else buffers
    visited = []
    params = dict(params)
    tparams = transform_params
    state = transform.initial_state if state is None else state
    adapt_transform = adapt_transform and bool(tree_leaves(tparams))
    batch = _check_batch(batch, x, y)

    def gradients_of(forward, x=x, y=y):
        if under_function_transform():
            return _functorch_gradients(forward, loss_fn, x, y, buffers, first_order)
        return _autograd_gradients(forward, loss_fn, x, y, buffers, graph=torch.is_grad_enabled() and not first_order)

    grad_fn = None if step_forward or batch is not None else gradients_of(forward)
    pullback, previous_lr = None, None
    for k, lr in enumerate(lrs):
        data = (x, y) if batch is None else minibatch(x, y, batch, k)
        if step_forward:  # the step's own forward (its normalisation set k)
            grads = gradients_of(lambda p, b, inputs, k=k: forward(p, b, inputs, step=k), *data)(params)
        elif batch is not None:
            grads = gradients_of(forward, *data)(params)
        else:
            grads = grad_fn(params)
        if pullback is not None:
            (jt_g,) = pullback(grads)
            # ∇_φ ℓ(θₖ₋₁) = −αₖ₋₁ J_Tᵀ Gₖ ; then φ ← φ − αₖ ∇_φ ℓ
            tparams = tree_map(lambda t, j: t + (lr * previous_lr) * (j.detach() if first_order else j), tparams, jt_g)
        if adapt_transform:
            updates, pullback, state = torch.func.vjp(
                lambda tp, g=grads, s=state, k=k: transform.step(g, tp, s, k), tparams, has_aux=True)
            previous_lr = lr
        else:
            updates, state = transform.step(grads, tparams, state, k)
        # One autograd node per tensor (θ − α·U fused) rather than two: the loop is overhead-bound.
        params = {n: torch.sub(params[n], updates[n], alpha=lr) for n in params}
        if trajectory:
            visited.append(params)
    return (visited if trajectory else params), tparams


def minibatch_rows(n: int, batch: int, k: int) -> list[int]:
    """The support rows of inner step ``k`` (0-based) with minibatches of ``batch`` of ``n`` examples:
    ``(kB + j) mod n`` for j = 0 … B − 1."""
    return [(k * batch + j) % n for j in range(batch)]


def minibatch(x: torch.Tensor, y: torch.Tensor, batch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x[rows], y[rows])`` for the rows of :func:`minibatch_rows` (slices where they are one
    consecutive run, the usual case; a concatenation of two where they wrap around)."""
    n = x.shape[0]
    start = (k * batch) % n
    if start + batch <= n:
        return x[start:start + batch], y[start:start + batch]
    rows = minibatch_rows(n, batch, k)
    index = torch.tensor(rows, device=x.device)
    return x.index_select(0, index), y.index_select(0, index)


def _check_batch(batch, x, y) -> int | None:
    """``batch`` checked against the support set: None, or an int in 1 … n for tensors x, y of n rows."""
    if batch is None:
        return None
    batch = _validate.integer(batch, "inner_batch", minimum=1)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ArgumentTypeError("inner_batch", "minibatches need the support inputs and targets as tensors (examples "
                                               "on the first axis)")
    if x.shape[0] != y.shape[0] or batch > x.shape[0]:
        raise ArgumentError("inner_batch", f"expected at most the {x.shape[0]} support examples (and as many targets, "
                                           f"got {y.shape[0]}), got {batch}")
    return batch


def _functorch_gradients(forward, loss_fn, x, y, buffers, first_order):
    """params -> ∇ support loss by ``torch.func.grad`` (composes with vmap and the outer autograd)."""

    def support_loss(p, state):
        return loss_fn(forward(p, state, x), y)

    grad_fn = torch.func.grad(support_loss, argnums=0)
    if not first_order:
        return lambda params: grad_fn(params, buffers)

    def constant_gradients(params):
        # torch.func.grad ignores an enclosing no_grad for its own level, so this still
        # differentiates the support loss, but records nothing for the outer autograd.
        with torch.no_grad():
            return grad_fn(params, buffers)

    return constant_gradients


def _autograd_gradients(forward, loss_fn, x, y, buffers, graph: bool):
    """params -> ∇ support loss by ``torch.autograd.grad``; ``graph``: differentiable (second order).

    A parameter that does not require gradients (a frozen one named in ``adapt``, or any under
    first order) is replaced by a detached leaf that does: its gradient is still wanted, and the
    leaf is a constant as the parameter was. Unused parameters get zero gradients, as
    ``torch.func.grad`` gives them.
    """
    if not graph:  # the gradients are constants: nothing may reach the outer graph through x or y
        # x and y may be any nesting of dicts, tuples and lists (a dict-input model, y=None)
        x, y = (tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, v) for v in (x, y))

    def gradients(params):
        with torch.enable_grad():
            inputs = {n: (p if graph and p.requires_grad else p.detach().requires_grad_()) for n, p in params.items()}
            loss = loss_fn(forward(inputs, buffers, x), y)
            grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=graph, allow_unused=True,
                                        materialize_grads=True)
        return dict(zip(inputs, grads))

    return gradients


def check_rates(lrs, name: str = "lrs") -> list[float]:
    """``lrs`` as a list of Python floats (one per inner step, possibly none), or raise naming it.

    Checked once per call on the host: the rates are hyperparameters, plain numbers, so the check
    costs nothing on the device and ``torch.compile`` sees them as constants.
    """
    if isinstance(lrs, torch.Tensor):
        raise ArgumentTypeError(name, "expected a sequence of numbers, got a torch.Tensor (its values would be read "
                                      f"back from the device and detached; learn step sizes with a transform such as MetaSGD)")
    if isinstance(lrs, np.ndarray):
        if lrs.ndim != 1:
            raise ArgumentError(name, f"expected a 1-d sequence of per-step learning rates, got shape {lrs.shape}")
    elif isinstance(lrs, (str, bytes)) or not isinstance(lrs, Sequence):
        raise ArgumentTypeError(name, "expected a sequence of per-step learning rates (one number per inner step), "
                                      f"got {type(lrs).__name__}")
    rates = []
    for k, rate in enumerate(lrs):
        if isinstance(rate, torch.Tensor):
            raise ArgumentTypeError(f"{name}[{k}]", "expected a number, got a torch.Tensor (learn step sizes with a "
                                                    f"transform such as MetaSGD)")
        if isinstance(rate, (bool, np.bool_)):  # finite_number would read np.True_ as 1.0
            raise ArgumentTypeError(f"{name}[{k}]", f"expected a number, got {type(rate).__name__} {rate!r}")
        rates.append(_validate.finite_number(rate, f"{name}[{k}]"))
    return rates
