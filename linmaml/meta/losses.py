"""DESIGN.md's losses and the binary accuracy on torch outputs, written once for every part that uses
them (the simulator's chains, the engine's scores, the figures).

Shapes: ``output`` and ``target`` of shape (…, n, d) — one task (n, d) or a stack of tasks (T, n, d);
each function reduces the last two axes, so it gives one number per task (a scalar for one task,
shape (T,) for a stack, and per task under ``torch.func.vmap``).
"""
from __future__ import annotations

import torch
from torch import nn


def squared_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1/(2n)·‖output − target‖²_F`` over the last two axes (n, d)."""
    return 0.5 * (output - target).pow(2).sum(dim=(-2, -1)) / target.shape[-2]


def logistic_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the logits ``output`` (n, 1) against 0/1 ``target``, per task."""
    # softplus(z) − y·z is the binary cross-entropy on logits, stable for large |z|. Its linear
    # branch starts at z = 40, where σ(z) = 1 in float64: with the default 20 the gradient would be
    # 1 instead of σ(z) = 1 − 2e-9. (logaddexp(0, z) has a NaN second derivative below z ≈ −750.)
    return (nn.functional.softplus(output, threshold=40.0) - target * output).mean(dim=(-2, -1))


def binary_accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction (float64) of points whose logit sign matches the 0/1 label (logit > 0 ↔ label 1), over
    the last two axes (n, 1), or over the one axis of 1-d targets (n,)."""
    hits = ((output > 0).to(target.dtype) == target).to(torch.float64)
    return hits.mean(dim=(-2, -1) if target.dim() >= 2 else -1)


LOSSES = {"squared": squared_loss, "logistic": logistic_loss}
