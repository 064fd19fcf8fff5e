"""MAML on deep linear chains in torch: the inner loop, the MAML objective, its meta-gradient by
autograd (second order through every inner step, or first order), and meta-training that records
its whole trajectory.

Everything is batched over the tasks of a meta-batch: support/query inputs carry a leading task
axis ``(T, n, d_0)``, and an adapted layer gets its own copy per task ``(T, d_j, d_{j−1})``, so one
batched matmul serves all tasks. Layers the inner loop does not adapt stay shared (no task axis).

Conventions (DESIGN.md): weights ``[W1, …, WL]``, W1 applied first; a task is ``(Xs, Ys, Xq, Yq)``;
the inner loop is plain gradient descent ``W ← W − α_t ∇_W L_support(W)`` on the adapted layers; the
MAML objective is the mean over tasks of the query loss after adaptation.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
import torch

from linmaml import _validate
from linmaml.simulator.models import DTYPE, LinearChain, implicit_preconditioner, task_loss


def _as_tensor(a) -> torch.Tensor:
    return torch.as_tensor(a, dtype=DTYPE)


def adapt(weights: Sequence[torch.Tensor], Xs, Ys, lr, steps: int, loss: str = "squared",
          adapt_layers: Sequence[int] | None = None, *, first_order: bool = False,
          create_graph: bool = True, return_path: bool = False):
    """``steps`` inner gradient steps on the support loss; returns the adapted weights.

    Shapes: ``weights`` ``[(d_j, d_{j−1})]``; ``Xs`` (n, d_0) and ``Ys`` (n, d_L) for one task, or
    (T, n, d_0) and (T, n, d_L) for T tasks, in which case every adapted layer of the result has a
    task axis ``(T, d_j, d_{j−1})``. ``lr`` is one number or one per step. ``adapt_layers``: 0-based
    layers that adapt (None: all).

    ``create_graph=True`` keeps the graph through every step, so a meta-gradient taken afterwards
    is exact (second order); ``first_order=True`` treats each inner gradient as a constant (FOMAML);
    ``create_graph=False`` detaches everything (evaluation). ``return_path=True`` returns the list of
    weights after 0, 1, …, steps inner steps instead of only the last.
    """
    steps = _validate.integer(steps, "steps", minimum=0)
    rates = _validate.learning_rates(lr, steps)
    _validate.loss_name(loss)
    current = [_as_tensor(W) for W in weights]
    layers = _validate.layer_indices(adapt_layers, len(current))
    Xs, Ys = _as_tensor(Xs), _as_tensor(Ys)
    if Xs.ndim not in (2, 3) or Ys.ndim != Xs.ndim or Xs.shape[:-1] != Ys.shape[:-1]:
        raise ValueError(f"Xs, Ys: expected (n, d_0), (n, d_L) or (T, n, d_0), (T, n, d_L), "
                         f"got {tuple(Xs.shape)} and {tuple(Ys.shape)}")
    keep_graph = create_graph and not first_order
    track = create_graph or first_order  # whether the result must stay differentiable w.r.t. weights
    if Xs.ndim == 3:
        for j in layers:
            if current[j].ndim == 2:
                current[j] = current[j].expand(Xs.shape[0], *current[j].shape)
    if not track:
        current = [W.detach() for W in current]
    path = [list(current)]
    with torch.enable_grad():
        for rate in rates:
            if not layers:  # nothing adapts: every step leaves the weights as they are
                path.append(list(current))
                continue
            if not track or not any(current[j].requires_grad for j in layers):
                # Evaluation (or weights without gradients): fresh leaves to differentiate against.
                for j in layers:
                    current[j] = current[j].detach().clone().requires_grad_(True)
            per_task = task_loss(current, Xs, Ys, loss)
            grads = torch.autograd.grad(per_task.sum(), [current[j] for j in layers], create_graph=keep_graph,
                                        retain_graph=track)
            for j, g in zip(layers, grads):
                step = current[j] - rate * (g if keep_graph else g.detach())
                current[j] = step if track else step.detach()
            path.append(list(current))
    if not track:
        path = [[W.detach() for W in ws] for ws in path]
    return path if return_path else path[-1]


def maml_objective(weights: Sequence[torch.Tensor], tasks, lr, steps: int, loss: str = "squared",
                   adapt_layers: Sequence[int] | None = None, *, first_order: bool = False) -> torch.Tensor:
    """Mean over tasks of the query loss after ``steps`` inner steps (a differentiable scalar).

    ``tasks`` is a :class:`linmaml.tasks.TaskBatch` (numpy or torch) or a tuple of stacked arrays
    ``(Xs, Ys, Xq, Yq)`` with shapes (T, n_s, d_0), (T, n_s, d_L), (T, n_q, d_0), (T, n_q, d_L).
    """
    Xs, Ys, Xq, Yq = _stacked(tasks)
    adapted = adapt(weights, Xs, Ys, lr, steps, loss, adapt_layers, first_order=first_order, create_graph=True)
    return task_loss(adapted, Xq, Yq, loss).mean()


def maml_gradient(weights: Sequence[torch.Tensor], tasks, lr, steps: int, loss: str = "squared",
                  adapt_layers: Sequence[int] | None = None, *,
                  first_order: bool = False) -> tuple[float, list[torch.Tensor]]:
    """The MAML objective and its gradient with respect to every layer, by autograd.

    Returns ``(value, [dF/dW1, …, dF/dWL])``; second order through all inner steps unless
    ``first_order``.
    """
    leaves = [_as_tensor(W).detach().clone().requires_grad_(True) for W in weights]
    with torch.enable_grad():
        value = maml_objective(leaves, tasks, lr, steps, loss, adapt_layers, first_order=first_order)
        grads = torch.autograd.grad(value, leaves)
    return float(value.detach()), [g.detach() for g in grads]


def _stacked(tasks) -> tuple[torch.Tensor, ...]:
    if hasattr(tasks, "Xs"):
        parts = (tasks.Xs, tasks.Ys, tasks.Xq, tasks.Yq)
    else:
        parts = tuple(tasks)
        if len(parts) != 4:
            raise ValueError(f"tasks: expected a TaskBatch or (Xs, Ys, Xq, Yq), got {len(parts)} items")
    parts = tuple(_as_tensor(p) for p in parts)
    if parts[0].ndim == 2:  # a single task
        parts = tuple(p.unsqueeze(0) for p in parts)
    if any(p.ndim != 3 for p in parts) or len({p.shape[0] for p in parts}) != 1:
        raise ValueError("tasks: expected stacked arrays with one leading task axis")
    return parts


@dataclasses.dataclass(eq=False)
class Trajectory:
    """A meta-training run, recorded at every meta-step.

    ``weights[j]`` has shape (S+1, d_j, d_{j−1}): layer j before meta-step 0, …, after the last;
    ``meta_loss`` (S,) is the meta-batch MAML objective at each step (before its update);
    ``preconditioner_eigenvalues`` (S+1, d_L·d_0) are the ascending eigenvalues of the implicit
    preconditioner P (without the inner learning rate α) at each recorded point, so α·P is
    ``lr[0] * preconditioner_eigenvalues``; ``settings`` are the arguments of the run.
    """

    chain: LinearChain
    weights: list[np.ndarray]
    meta_loss: np.ndarray
    preconditioner_eigenvalues: np.ndarray
    settings: dict
    seconds: float

    def weights_at(self, step: int = -1) -> list[torch.Tensor]:
        """The weights after meta-step ``step`` (−1: the final ones) as float64 tensors."""
        return [torch.as_tensor(W[step], dtype=DTYPE) for W in self.weights]

    @property
    def meta_steps(self) -> int:
        return len(self.meta_loss)


def meta_train(chain: LinearChain, family, *, lr, steps: int = 1, meta_steps: int = 1000,
               meta_batch: int = 32, meta_lr: float = 0.01, optimizer: str = "adam",
               first_order: bool = False, init=None, init_scale: float = 1.0, seed: int = 0,
               record_preconditioner: bool = True) -> Trajectory:
    """Meta-train ``chain`` with MAML on tasks drawn from ``family`` (a :mod:`linmaml.tasks` family).

    Each meta-step draws ``meta_batch`` fresh tasks, takes the exact meta-gradient through
    ``steps`` inner steps of size ``lr`` (first order if asked) and updates all layers with
    ``optimizer`` ("adam" or "sgd") at rate ``meta_lr``. ``init`` is a list of starting weights
    (default: ``chain.init`` with ``init_scale``). Seeded: the same arguments give the same run.
    """
    steps = _validate.integer(steps, "steps", minimum=0)
    rates = _validate.learning_rates(lr, steps)
    meta_steps = _validate.integer(meta_steps, "meta_steps", minimum=0)
    meta_batch = _validate.integer(meta_batch, "meta_batch", minimum=1)
    meta_lr = _validate.finite_number(meta_lr, "meta_lr", positive=True)
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer: expected adam or sgd, got {optimizer!r}")
    if family.d_in != chain.d_in or family.d_out != chain.d_out:
        raise ValueError(f"family: expected d_in={chain.d_in}, d_out={chain.d_out} to match the model, "
                         f"got d_in={family.d_in}, d_out={family.d_out}")
    init_seq, task_seq = np.random.SeedSequence(_validate.integer(seed, "seed", minimum=0)).spawn(2)
    start = chain.init(np.random.default_rng(init_seq), init_scale) if init is None else chain.check_weights(init, "init")
    params = [W.detach().clone().requires_grad_(True) for W in start]
    opt = _Adam(params, meta_lr) if optimizer == "adam" else _SGD(params, meta_lr)
    task_rng = np.random.default_rng(task_seq)

    began = time.perf_counter()
    history = [[W.detach().clone() for W in params]]
    losses = np.empty(meta_steps)
    for step in range(meta_steps):
        batch = family.sample(meta_batch, task_rng)
        with torch.enable_grad():
            value = maml_objective(params, batch, rates, steps, chain.loss, chain.adapt_layers, first_order=first_order)
            grads = torch.autograd.grad(value, params)
        opt.step(grads)
        losses[step] = float(value.detach())
        history.append([W.detach().clone() for W in params])
    stacked = [torch.stack([h[j] for h in history]) for j in range(chain.depth)]
    if record_preconditioner:
        P = implicit_preconditioner(stacked, chain.adapt_layers)
        eigs = torch.linalg.eigvalsh(P).numpy()
    else:
        eigs = np.full((meta_steps + 1, chain.d_in * chain.d_out), np.nan)
    settings = dict(lr=rates, steps=steps, meta_steps=meta_steps, meta_batch=meta_batch, meta_lr=meta_lr,
                    optimizer=optimizer, first_order=first_order, init_scale=init_scale, seed=seed,
                    sizes=list(chain.sizes), loss=chain.loss, adapt_layers=list(chain.adapt_layers))
    return Trajectory(chain, [s.numpy() for s in stacked], losses, eigs, settings, time.perf_counter() - began)


class _SGD:
    """Plain gradient descent on a list of leaf tensors."""

    def __init__(self, params: list[torch.Tensor], lr: float):
        self.params, self.lr = params, lr

    @torch.no_grad()
    def step(self, grads) -> None:
        for p, g in zip(self.params, grads):
            p -= self.lr * g


class _Adam:
    """Adam (Kingma & Ba) with the usual defaults β = (0.9, 0.999), ε = 1e-8, bias-corrected.

    Written out rather than torch.optim.Adam, whose first construction imports torch's compiler
    stack (seconds of start-up on a small machine for a few lines of arithmetic).
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            p -= self.lr * m_hat / (v_hat.sqrt() + self.eps)
