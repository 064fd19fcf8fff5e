"""MAML on deep linear chains through :mod:`linmaml.meta`, under the closed forms' names.

``adapt``, ``maml_loss``, ``maml_grad`` and ``maml_value_and_grad`` take the same arguments as their
namesakes in :mod:`linmaml.closedform.deep_linear` (torch tensors or arrays instead of arrays), so
the two sides of every ``linmaml verify --only simulator`` row are called alike. The simulator keeps
no inner loop of its own: the weights become a :class:`linmaml.meta.MAML` learner around the chain's
torch module (:meth:`LinearChain.learner`), a meta-batch is adapted and scored by the engine's
vmapped :meth:`linmaml.meta.engine.Engine.task_losses`, and meta-gradients are torch autograd through
it (second order unless ``first_order``). What stays independent of the closed forms is everything
that matters for the cross-check: autograd instead of the hand-derived adjoint.

Conventions (DESIGN.md): weights ``[W1, …, WL]``, W1 applied first, ``Wj`` of shape (d_j, d_{j−1});
a task is ``(Xs, Ys, Xq, Yq)``; the inner loop is plain gradient descent
``W ← W − α_t ∇_W L_support(W)`` on the adapted layers (0-based ``adapt_layers``, None: all); the
MAML loss is the mean over tasks of the query loss after adaptation. Zero steps (or no adapted
layer) is the 0-step adaptation: the weights themselves.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.engine import Engine
from linmaml.simulator.models import DTYPE, LinearChain, loss_function

__all__ = ["adapt", "maml_loss", "maml_grad", "maml_value_and_grad", "mean_query_loss", "stacked_tasks"]


def _chain(weights, loss: str, adapt_layers) -> tuple[LinearChain, list[torch.Tensor], tuple[int, ...]]:
    """The chain the weights describe, the weights as float64 tensors, and the adapted layers
    (possibly none, which the chain itself refuses: it then adapts nothing and is built with all)."""
    if isinstance(weights, (torch.Tensor, str, bytes)) or not isinstance(weights, Sequence) or not weights:
        raise ArgumentTypeError("weights", f"expected a non-empty list of weight matrices, got {type(weights).__name__}")
    weights = [torch.as_tensor(W, dtype=DTYPE) for W in weights]
    sizes = (weights[0].shape[-1], *(W.shape[-2] for W in weights))
    layers = _validate.layer_indices(adapt_layers, len(weights))
    chain = LinearChain(sizes, _validate.loss_name(loss), layers or None)
    return chain, chain.check_weights(weights), layers


class _Adapter(nn.Module):
    """``forward(x, y)`` = the learner's adapted parameters for one task. A module so that
    ``functional_call`` can run the learner at any weights (per task, under vmap)."""

    def __init__(self, learner, loss_fn):
        super().__init__()
        self.learner, self.loss_fn = learner, loss_fn

    def forward(self, x, y):
        return self.learner.adapt(x, y, self.loss_fn)


def _steps(chain: LinearChain, weights, Xs, Ys, rates, names):
    """``len(rates)`` inner steps from ``weights`` (each 2-d shared or 3-d per task) on the tasks
    (T, n, ·); returns the adapted layers ``names`` -> (T, d_j, d_{j−1})."""
    shared = [W[0] if W.ndim == 3 else W for W in weights]  # shapes only: the values come below
    adapter = _Adapter(chain.learner(shared, rates, len(rates)), loss_function(chain.loss))
    keys = [f"learner.model.{n}" for n in chain.parameter_names()]

    def one_task(ws, x, y):
        fast = functional_call(adapter, dict(zip(keys, ws)), (x, y))
        return [fast[n] for n in names]

    in_dims = ([0 if W.ndim == 3 else None for W in weights], 0, 0)
    return torch.func.vmap(one_task, in_dims=in_dims)(weights, Xs, Ys)


def adapt(weights, Xs, Ys, lr, steps: int, loss: str = "squared", adapt_layers=None, *,
          create_graph: bool = False, return_path: bool = False):
    """The weights after ``steps`` inner gradient steps on the support set (Xs, Ys).

    Shapes: ``weights`` ``[(d_j, d_{j−1})]``, each possibly with a task axis ``(T, d_j, d_{j−1})``;
    ``Xs`` (n, d_0) and ``Ys`` (n, d_L) for one task, or (T, n, d_0) and (T, n, d_L) for T tasks, in
    which case every adapted layer of the result has a task axis (layers that do not adapt are
    returned as given). ``lr`` is one number or one per step.

    The result is detached unless ``create_graph``, which keeps it differentiable (second order)
    with respect to ``weights``. ``return_path=True`` returns the list of weights after 0, 1, …,
    ``steps`` inner steps instead of only the last.
    """
    steps = _validate.integer(steps, "steps", minimum=0)
    rates = _validate.learning_rates(lr, steps)
    chain, weights, layers = _chain(weights, loss, adapt_layers)
    Xs, Ys = torch.as_tensor(Xs, dtype=DTYPE), torch.as_tensor(Ys, dtype=DTYPE)
    if Xs.ndim not in (2, 3) or Ys.ndim != Xs.ndim or Xs.shape[:-1] != Ys.shape[:-1]:
        raise ArgumentError("Xs, Ys", "expected (n, d_0), (n, d_L) or (T, n, d_0), (T, n, d_L), "
                                      f"got {tuple(Xs.shape)} and {tuple(Ys.shape)}")
    single = Xs.ndim == 2
    if single:
        if any(W.ndim == 3 for W in weights):
            raise ArgumentError("Xs", f"expected a task axis (T, n, d_0) beside weights with one, got {tuple(Xs.shape)}")
        Xs, Ys = Xs.unsqueeze(0), Ys.unsqueeze(0)
    names = chain.parameter_names(layers)
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        current = list(weights)
        path = [list(current)]
        # One learner call per step for a path (each step starts from the last, per task), else one
        # call for all the steps.
        for chunk in ([[r] for r in rates] if return_path else [rates] if rates else []):
            if layers:
                for j, W in zip(layers, _steps(chain, current, Xs, Ys, chunk, names)):
                    current[j] = W
            path.append(list(current))
    if not create_graph:
        path = [[W.detach() for W in ws] for ws in path]
    if single:
        path = [[W[0] if W.ndim == 3 else W for W in ws] for ws in path]
    return path if return_path else path[-1]


def stacked_tasks(tasks) -> tuple[torch.Tensor, ...]:
    """``tasks`` (a :class:`linmaml.tasks.TaskBatch`, numpy or torch, or ``(Xs, Ys, Xq, Yq)``
    stacked (T, n, ·) or for one task (n, ·)) as four float64 tensors with a task axis."""
    if hasattr(tasks, "Xs"):
        parts = (tasks.Xs, tasks.Ys, tasks.Xq, tasks.Yq)
    else:
        parts = tuple(tasks)
        if len(parts) != 4:
            raise ArgumentError("tasks", f"expected a TaskBatch or (Xs, Ys, Xq, Yq), got {len(parts)} items")
    parts = tuple(torch.as_tensor(p, dtype=DTYPE) for p in parts)
    if parts[0].ndim == 2:  # a single task
        parts = tuple(p.unsqueeze(0) for p in parts)
    if any(p.ndim != 3 for p in parts) or len({p.shape[0] for p in parts}) != 1:
        raise ArgumentError("tasks", "expected stacked arrays with one leading task axis")
    return parts


def mean_query_loss(learner, model: nn.Module, loss_fn, tasks) -> torch.Tensor:
    """The MAML loss of a meta-batch (differentiable scalar): the mean of the engine's per-task query
    losses after adaptation (:meth:`linmaml.meta.engine.Engine.task_losses`, the whole meta-batch
    vmapped as one chunk: the chains are tiny), or with ``learner`` None (no adaptation) the query
    loss of ``model`` itself. ``tasks`` as from :func:`stacked_tasks`."""
    if learner is None:
        return loss_fn(model(tasks[2]), tasks[3]).mean()
    return Engine(learner, loss_fn, strategy="vmap", tasks_per_chunk=None).task_losses(*tasks)[0].mean()


def _objective(weights, lr, steps, loss, adapt_layers, first_order=False):
    """(learner or None when nothing adapts, the module whose parameters are the weights, loss_fn)."""
    steps = _validate.integer(steps, "steps", minimum=0)
    rates = _validate.learning_rates(lr, steps)
    chain, weights, layers = _chain(weights, loss, adapt_layers)
    learner = chain.learner(weights, rates, steps, first_order) if steps and layers else None
    model = learner.model if learner is not None else chain.module(weights)
    return learner, model, loss_function(chain.loss)


def maml_value_and_grad(weights, tasks, lr, steps: int, loss: str = "squared", adapt_layers=None,
                        first_order: bool = False) -> tuple[float, list[torch.Tensor]]:
    """``(maml_loss, [∂/∂W1, …, ∂/∂WL])`` by autograd through the learner's inner loop (second order
    unless ``first_order``; layers that do not adapt get their meta-gradient too).

    ``tasks``: a :class:`linmaml.tasks.TaskBatch` or stacked ``(Xs, Ys, Xq, Yq)`` with shapes
    (T, n_s, d_0), (T, n_s, d_L), (T, n_q, d_0), (T, n_q, d_L).
    """
    learner, model, loss_fn = _objective(weights, lr, steps, loss, adapt_layers, first_order)
    with torch.enable_grad():
        value = mean_query_loss(learner, model, loss_fn, stacked_tasks(tasks))
        grads = torch.autograd.grad(value, list(model.parameters()))
    return float(value.detach()), [g.detach() for g in grads]


def maml_loss(weights, tasks, lr, steps: int, loss: str = "squared", adapt_layers=None) -> float:
    """The MAML objective: mean over tasks of the query loss after ``steps`` inner steps."""
    learner, model, loss_fn = _objective(weights, lr, steps, loss, adapt_layers)
    with torch.no_grad():  # torch.func.grad still differentiates the inner loop at its own level
        return float(mean_query_loss(learner, model, loss_fn, stacked_tasks(tasks)))


def maml_grad(weights, tasks, lr, steps: int, loss: str = "squared", adapt_layers=None,
              first_order: bool = False) -> list[torch.Tensor]:
    """The gradient of :func:`maml_loss` with respect to every layer (see :func:`maml_value_and_grad`)."""
    return maml_value_and_grad(weights, tasks, lr, steps, loss, adapt_layers, first_order)[1]
