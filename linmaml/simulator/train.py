"""Meta-training that records its whole trajectory: a deep linear chain, or any :mod:`linmaml.meta`
learner, meta-trained by MAML on tasks drawn from a :mod:`linmaml.tasks` family.

Every meta-step goes through the one engine: the meta-batch is adapted and scored by
:meth:`linmaml.meta.engine.Engine.task_losses` (vmapped over its tasks), the meta-gradient is torch
autograd through it, and the update is ``torch.optim.Adam`` or ``torch.optim.SGD``. A chain becomes a
:class:`linmaml.meta.MAML` learner around its torch module (:meth:`LinearChain.learner`); a learner
given directly (e.g. ``MAML(linear, transform=KFO())``, ``MAML(LinNet(linear))``) is trained as it is,
in place.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.simulator.maml import mean_query_loss, stacked_tasks
from linmaml.simulator.models import DTYPE, LinearChain, implicit_preconditioner, loss_function

__all__ = ["Trajectory", "meta_train"]


@dataclasses.dataclass(eq=False)
class Trajectory:
    """A meta-training run, recorded at every meta-step.

    ``weights[j]`` has shape ``(S+1, *shape_j)``: parameter ``names[j]`` before meta-step 0, …, after
    the last (for a chain: layer j, shape (d_j, d_{j−1}), named ``"{j}.weight"``; for a learner:
    every parameter of ``learner.named_parameters()``, transform included); ``meta_loss`` (S,) is
    the meta-batch MAML objective at each step (before its update); ``preconditioner_eigenvalues``
    (S+1, d_L·d_0) are the ascending eigenvalues of a chain's implicit preconditioner P (without the
    inner learning rate α) at each recorded point, so α·P is ``lr[0] * preconditioner_eigenvalues``
    (NaN when not recorded, None for a learner); ``settings`` are the arguments of the run;
    ``chain`` is the chain (None for a learner), ``learner`` the trained learner.
    """

    chain: LinearChain | None
    weights: list[np.ndarray]
    meta_loss: np.ndarray
    preconditioner_eigenvalues: np.ndarray | None
    settings: dict
    seconds: float
    names: list[str] = dataclasses.field(default_factory=list)
    learner: nn.Module | None = None

    def weights_at(self, step: int = -1) -> list[torch.Tensor]:
        """The weights after meta-step ``step`` (−1: the final ones) as float64 tensors."""
        return [torch.as_tensor(W[step], dtype=DTYPE) for W in self.weights]

    @property
    def meta_steps(self) -> int:
        return len(self.meta_loss)


def meta_train(model, family, *, lr=None, steps: int | None = None, meta_steps: int = 1000,
               meta_batch: int = 32, meta_lr: float = 0.01, optimizer: str = "adam",
               first_order: bool | None = None, init=None, init_scale: float = 1.0, seed: int = 0,
               record_preconditioner: bool = True, loss: str | None = None,
               schedule: str | None = None) -> Trajectory:
    """Meta-train ``model`` with MAML on tasks drawn from ``family`` (a :mod:`linmaml.tasks` family).

    ``model`` is a :class:`LinearChain` (then ``lr``, ``steps`` (default 1) and ``first_order``
    (default False) set its inner loop, and its weights start at ``init``, default ``chain.init``
    with ``init_scale``) or a :mod:`linmaml.meta` learner, which brings its own inner loop, weights
    and meta-parameters (``lr``, ``steps``, ``first_order``, ``init`` must then be left unset) and is
    updated in place. ``loss`` names the task loss: the chain's own, or for a learner "squared"
    (default) or "logistic".

    Each meta-step draws ``meta_batch`` fresh tasks, takes the meta-gradient of the mean query loss
    after adaptation (exact second order unless first order) and updates every parameter with
    ``optimizer`` ("adam" or "sgd", torch.optim defaults otherwise) at rate ``meta_lr``. Seeded: the
    start from ``SeedSequence(seed).spawn(2)[0]``, the tasks from ``spawn(2)[1]``.

    ``schedule``: None (default) keeps ``meta_lr`` constant; "cosine" anneals it from ``meta_lr`` to 0
    over the ``meta_steps`` (``torch.optim.lr_scheduler.CosineAnnealingLR``), a stated end point for
    training to convergence rather than stopping mid-descent at a fixed rate.
    """
    meta_steps = _validate.integer(meta_steps, "meta_steps", minimum=0)
    meta_batch = _validate.integer(meta_batch, "meta_batch", minimum=1)
    meta_lr = _validate.finite_number(meta_lr, "meta_lr", positive=True)
    if optimizer not in ("adam", "sgd"):
        raise ArgumentError("optimizer", f"expected adam or sgd, got {optimizer!r}")
    if schedule not in (None, "cosine"):
        raise ArgumentError("schedule", f"expected None or 'cosine', got {schedule!r}")
    init_seq, task_seq = np.random.SeedSequence(_validate.integer(seed, "seed", minimum=0)).spawn(2)
    if isinstance(model, LinearChain):
        learner, net, settings = _chain_learner(model, family, lr, steps, first_order, init, init_scale, init_seq,
                                                loss)
        names = model.parameter_names()
    elif isinstance(model, nn.Module) and callable(getattr(model, "adapt", None)):
        for value, name in ((lr, "lr"), (steps, "steps"), (first_order, "first_order"), (init, "init")):
            if value is not None:
                raise ArgumentError(name, "a linmaml.meta learner brings its own; leave it unset")
        learner = net = model
        loss = _validate.loss_name("squared" if loss is None else loss)
        settings = dict(learner=type(model).__name__, loss=loss)
        names = [n for n, _ in net.named_parameters()]
    else:
        raise ArgumentTypeError("model", f"expected a LinearChain or a linmaml.meta learner, got {type(model).__name__}")
    loss_fn = loss_function(settings["loss"])
    params = list(net.parameters())
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(params, lr=meta_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(meta_steps, 1)) if schedule else None
    task_rng = np.random.default_rng(task_seq)

    began = time.perf_counter()
    history = [[p.detach().clone() for p in params]]
    losses = np.empty(meta_steps)
    for step in range(meta_steps):
        batch = stacked_tasks(family.sample(meta_batch, task_rng))
        with torch.enable_grad():
            value = mean_query_loss(learner, net, loss_fn, batch)
            opt.zero_grad(set_to_none=True)
            value.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses[step] = float(value.detach())
        history.append([p.detach().clone() for p in params])
    stacked = [torch.stack([h[j] for h in history]) for j in range(len(params))]
    eigs = None
    if isinstance(model, LinearChain):
        if record_preconditioner:
            eigs = torch.linalg.eigvalsh(implicit_preconditioner(stacked, model.adapt_layers)).numpy()
        else:
            eigs = np.full((meta_steps + 1, model.d_in * model.d_out), np.nan)
    settings.update(meta_steps=meta_steps, meta_batch=meta_batch, meta_lr=meta_lr, optimizer=optimizer, seed=seed,
                    schedule=schedule)
    return Trajectory(model if isinstance(model, LinearChain) else None, [s.numpy() for s in stacked], losses, eigs,
                      settings, time.perf_counter() - began, names, learner if learner is not None else net)


def _chain_learner(chain: LinearChain, family, lr, steps, first_order, init, init_scale, init_seq, loss):
    """(learner or None for a 0-step run, the chain's module, the run's settings) for a chain."""
    if lr is None:
        raise ArgumentTypeError("lr", "meta-training a LinearChain needs the inner learning rate")
    steps = _validate.integer(1 if steps is None else steps, "steps", minimum=0)
    rates = _validate.learning_rates(lr, steps)
    first_order = bool(first_order)
    if loss is not None and loss != chain.loss:
        raise ArgumentError("loss", f"the chain's loss is {chain.loss}, got {loss!r}")
    if family.d_in != chain.d_in or family.d_out != chain.d_out:
        raise ArgumentError("family", f"expected d_in={chain.d_in}, d_out={chain.d_out} to match the model, "
                                      f"got d_in={family.d_in}, d_out={family.d_out}")
    start = chain.init(np.random.default_rng(init_seq), init_scale) if init is None else chain.check_weights(init, "init")
    learner = chain.learner(start, rates, steps, first_order) if steps else None
    net = learner.model if learner is not None else chain.module(start)
    settings = dict(lr=rates, steps=steps, first_order=first_order, init_scale=init_scale, sizes=list(chain.sizes),
                    loss=chain.loss, adapt_layers=list(chain.adapt_layers))
    return learner, net, settings
