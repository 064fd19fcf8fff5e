"""Deep linear models in torch (float64): an architecture object plus plain lists of weight tensors.

A model is a :class:`LinearChain`, i.e. layer sizes ``(d_0, d_1, …, d_L)``, the task loss and which
layers the inner loop adapts. Its parameters are NOT stored in it: they travel as a list of tensors
``[W1, …, WL]`` (``W1`` applied first, ``Wj`` of shape ``(d_j, d_{j−1})``), optionally with a leading
task axis ``(T, d_j, d_{j−1})`` once the inner loop has adapted them per task. For the inner loop
the chain becomes a torch module (:meth:`LinearChain.module`: ``nn.Sequential`` of bias-free float64
``nn.Linear``, parameter ``"{j}.weight"`` holding ``W_{j+1}``) inside a :class:`linmaml.meta.MAML`
learner (:meth:`LinearChain.learner`) that adapts the layers ``adapt_layers``. The end-to-end map
``W_e = W_L ⋯ W_1`` has shape ``(d_L, d_0)`` and acts on inputs ``X`` of shape ``(n, d_0)`` as
``X W_eᵀ``.

The four models of the paper are all chains:

* :func:`shallow`  — one linear map, squared loss (``d_0 → d_L``);
* :func:`deep`     — the same map factored through hidden widths (same capacity, more depth);
* :func:`logr`     — logistic regression, one linear map to a single logit, logistic loss;
* :func:`linnet`   — any chain with extra linear layers appended to its output (LinNet): the output
  passes through ``d_L → h_1 → … → d_L``, which adds depth without changing what the model can
  represent.

Losses (DESIGN.md): squared ``1/(2n)·‖X W_eᵀ − Y‖²_F`` and logistic, the mean binary cross-entropy on
the logits ``X W_eᵀ`` (``d_L = 1``, ``Y`` in {0, 1}).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from torch import nn

from linmaml import _validate, meta
from linmaml.errors import ArgumentError, ArgumentTypeError

DTYPE = torch.float64


@dataclasses.dataclass(frozen=True)
class LinearChain:
    """A deep linear network's architecture.

    ``sizes`` is ``(d_0, …, d_L)``; ``loss`` is "squared" or "logistic"; ``adapt_layers`` are the
    0-based indices of the layers the inner loop adapts (None: all of them); ``name`` labels plots.
    """

    sizes: tuple[int, ...]
    loss: str = "squared"
    adapt_layers: tuple[int, ...] | None = None
    name: str = "chain"

    def __post_init__(self):
        if isinstance(self.sizes, (str, bytes)) or not isinstance(self.sizes, Sequence):
            raise ArgumentTypeError("sizes", f"expected a sequence of layer sizes, got {self.sizes!r}")
        sizes = tuple(_validate.integer(s, "sizes", minimum=1) for s in self.sizes)
        if len(sizes) < 2:
            raise ArgumentError("sizes", f"expected at least (d_in, d_out), got {sizes}")
        object.__setattr__(self, "sizes", sizes)
        _validate.loss_name(self.loss)
        if self.loss == "logistic" and sizes[-1] != 1:
            raise ArgumentError("sizes", f"the logistic loss needs one output (d_L = 1), got d_L = {sizes[-1]}")
        object.__setattr__(self, "adapt_layers", _validate.layer_indices(self.adapt_layers, len(sizes) - 1))
        if not self.adapt_layers:
            raise ArgumentError("adapt_layers", "expected at least one adapted layer")

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def d_in(self) -> int:
        return self.sizes[0]

    @property
    def d_out(self) -> int:
        return self.sizes[-1]

    def shapes(self) -> list[tuple[int, int]]:
        """``[(d_1, d_0), …, (d_L, d_{L−1})]``."""
        return [(self.sizes[j + 1], self.sizes[j]) for j in range(self.depth)]

    def init(self, seed=0, scale: float = 1.0) -> list[torch.Tensor]:
        """Random float64 weights: entries N(0, scale²/d_{j−1}) (variance-preserving), seeded.

        ``seed`` is an int or a ``numpy.random.Generator``. The returned tensors are leaves with
        ``requires_grad=False``; the trainer switches gradients on itself.
        """
        scale = _validate.finite_number(scale, "scale", nonnegative=True)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        return [torch.as_tensor(scale * rng.standard_normal(s) / np.sqrt(s[1]), dtype=DTYPE) for s in self.shapes()]

    def parameter_names(self, layers: Sequence[int] | None = None) -> list[str]:
        """The module's parameter names (``"{j}.weight"``) of ``layers`` (default: every layer)."""
        return [f"{j}.weight" for j in (range(self.depth) if layers is None else layers)]

    def module(self, weights) -> nn.Sequential:
        """The chain as a torch module holding copies of ``weights`` (2-d, this chain's shapes) as
        its parameters: ``nn.Sequential`` of bias-free float64 ``nn.Linear``, layer j first applied
        j-th, so ``module(X) = X W_eᵀ`` for X of shape (…, n, d_0)."""
        layers = []
        for j, W in enumerate(self.check_weights(weights)):
            if W.ndim != 2:
                raise ArgumentError(f"weights[{j}]", f"expected a matrix of shape {tuple(W.shape[-2:])}, got a task axis")
            # skip_init: the weights are set right below (and torch's global RNG stays untouched).
            linear = nn.utils.skip_init(nn.Linear, W.shape[1], W.shape[0], bias=False, dtype=DTYPE)
            linear.weight = nn.Parameter(W.detach().clone())
            layers.append(linear)
        return nn.Sequential(*layers)

    def learner(self, weights, lr, steps: int, first_order: bool = False) -> meta.MAML:
        """A :class:`linmaml.meta.MAML` learner around :meth:`module` (``weights``) that adapts
        ``adapt_layers`` with ``steps`` plain gradient steps of size ``lr`` (a number or one per
        step), second order unless ``first_order``. Its loss is :func:`loss_function` of ``loss``."""
        return meta.MAML(self.module(weights), lr=lr, steps=steps, first_order=first_order,
                         adapted=self.parameter_names(self.adapt_layers))

    def check_weights(self, weights, name: str = "weights") -> list[torch.Tensor]:
        """``weights`` as a list of float64 tensors of this chain's shapes (a task axis is allowed)."""
        if isinstance(weights, (torch.Tensor, np.ndarray)) or not isinstance(weights, Sequence):
            raise ArgumentTypeError(name, f"expected a list of {self.depth} weight matrices, got {type(weights).__name__}")
        if len(weights) != self.depth:
            raise ArgumentError(name, f"expected {self.depth} weight matrices, got {len(weights)}")
        out = []
        for j, (W, shape) in enumerate(zip(weights, self.shapes())):
            W = torch.as_tensor(W, dtype=DTYPE)
            if tuple(W.shape[-2:]) != shape or W.ndim not in (2, 3):
                raise ArgumentError(f"{name}[{j}]", f"expected shape {shape} (or (T, *{shape})), got {tuple(W.shape)}")
            out.append(W)
        return out


def shallow(d_in: int, d_out: int = 1) -> LinearChain:
    """One linear map ``d_in → d_out`` with the squared loss."""
    return LinearChain((d_in, d_out), "squared", None, "Shallow")


def deep(d_in: int, d_out: int = 1, widths: Sequence[int] = (8,), adapt_layers=None) -> LinearChain:
    """``d_in → widths… → d_out`` with the squared loss; ``len(widths) + 1`` layers."""
    widths = _hidden_widths(widths)
    if not widths:
        raise ArgumentError("widths", "expected at least one hidden width for a deep model")
    return LinearChain((d_in, *widths, d_out), "squared", adapt_layers, f"Deep (L={len(widths) + 1})")


def logr(d_in: int) -> LinearChain:
    """Logistic regression: one linear map ``d_in → 1`` to a logit, logistic loss."""
    return LinearChain((d_in, 1), "logistic", None, "LogR")


def linnet(base: LinearChain, widths: Sequence[int] = (8,), adapt_layers=None) -> LinearChain:
    """``base`` with linear layers ``d_L → widths… → d_L`` appended to its output (LinNet).

    The appended layers do not change what the model can represent (the product is still a
    ``d_L × d_0`` map) but they change how one inner step moves it: they act as a learned
    preconditioner on the output side.
    """
    if not isinstance(base, LinearChain):
        raise ArgumentTypeError("base", f"expected a LinearChain, got {type(base).__name__}")
    widths = _hidden_widths(widths)
    if not widths:
        raise ArgumentError("widths", "expected at least one appended width")
    return LinearChain((*base.sizes, *widths, base.d_out), base.loss, adapt_layers, f"{base.name}+LinNet")


def _hidden_widths(widths) -> tuple[int, ...]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ArgumentTypeError("widths", f"expected a sequence of layer widths, got {widths!r}")
    return tuple(_validate.integer(w, "widths", minimum=1) for w in widths)


def end_to_end(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``W_L ⋯ W_1``, shape ``(d_L, d_0)`` (or ``(T, d_L, d_0)`` if any weight has a task axis)."""
    product = weights[0]
    for W in weights[1:]:
        product = W @ product
    return product


def logits(weights: Sequence[torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Outputs ``X W_eᵀ``: X (n, d_0) or (T, n, d_0) → (…, n, d_L)."""
    return X @ end_to_end(weights).mT


def squared_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1/(2n)·‖output − target‖²_F`` over the last two axes (n, d_L): a scalar per task."""
    return 0.5 * (output - target).pow(2).sum(dim=(-2, -1)) / target.shape[-2]


def logistic_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the logits ``output`` (n, 1) against 0/1 ``target``, per task."""
    # softplus(z) − y·z is the binary cross-entropy on logits, stable for large |z|. Its linear
    # branch starts at z = 40, where σ(z) = 1 in float64: with the default 20 the gradient would be
    # 1 instead of σ(z) = 1 − 2e-9. (logaddexp(0, z) has a NaN second derivative below z ≈ −750.)
    return (nn.functional.softplus(output, threshold=40.0) - target * output).mean(dim=(-2, -1))


LOSSES = {"squared": squared_loss, "logistic": logistic_loss}


def loss_function(loss: str):
    """The loss ``(output, target) -> per-task loss`` named ``loss`` ("squared" or "logistic")."""
    return LOSSES[_validate.loss_name(loss)]


def task_loss(weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-task loss, shape ``(T,)`` for batched X (T, n, d_0), a scalar for X (n, d_0).

    squared: ``1/(2n)·‖X W_eᵀ − Y‖²_F``; logistic: mean binary cross-entropy on the logits.
    """
    return loss_function(loss)(logits(weights, X), Y)


def accuracy(weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Per-task fraction of correct labels for a binary classifier (logit > 0 ↔ label 1)."""
    predicted = (logits(weights, X) > 0).to(X.dtype)
    return (predicted == Y).to(X.dtype).mean(dim=(-2, -1))


def vec(A: torch.Tensor) -> torch.Tensor:
    """Column-major vec of the last two axes: ``(…, m, n) → (…, m·n)``."""
    return A.mT.reshape(*A.shape[:-2], -1)


def implicit_preconditioner(weights: Sequence[torch.Tensor], adapt_layers: Sequence[int] | None = None) -> torch.Tensor:
    """The matrix P with ``vec ΔW_e = −α P vec G + O(α²)`` for one inner step of size α.

    G is the gradient of the task loss with respect to the end-to-end map. Computed by autograd,
    not by a formula: with J the Jacobian of ``vec W_e`` with respect to the adapted parameters,
    a gradient step on them moves ``vec W_e`` by ``−α J Jᵀ vec G`` to first order, so ``P = J Jᵀ``.
    Weights without a task axis give P of shape ``(d_L·d_0, d_L·d_0)``; stacked weights
    ``(S, d_j, d_{j−1})`` (e.g. a trajectory) give ``(S, d_L·d_0, d_L·d_0)``.
    """
    weights = [torch.as_tensor(W, dtype=DTYPE) for W in weights]
    layers = _validate.layer_indices(adapt_layers, len(weights))
    if len({W.ndim for W in weights}) != 1 or weights[0].ndim not in (2, 3):
        raise ArgumentError("weights", "expected all 2-d matrices, or all stacked 3-d with the same leading axis")
    single = weights[0].ndim == 2
    if not layers:  # nothing adapts: one step does not move W_e
        size = weights[0].shape[-1] * weights[-1].shape[-2]
        zeros = torch.zeros(size, size, dtype=DTYPE)
        return zeros if single else zeros.expand(weights[0].shape[0], size, size).clone()
    stacked = [(W.unsqueeze(0) if single else W).detach().clone() for W in weights]
    for j in layers:
        stacked[j].requires_grad_(True)
    with torch.enable_grad():
        flat = vec(end_to_end(stacked))  # (S, d_L·d_0)
        # One backward pass per entry of vec W_e gives that row of J for every stacked point at once
        # (the points do not interact, so the gradient of the sum over them separates).
        rows = []
        for i in range(flat.shape[1]):
            grads = torch.autograd.grad(flat[:, i].sum(), [stacked[j] for j in layers], retain_graph=True)
            rows.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1))
    J = torch.stack(rows, dim=1)  # (S, d_L·d_0, number of adapted parameters)
    P = (J @ J.mT).detach()
    return P[0] if single else P
