"""LinNet: linear layers appended to a model's output, a meta-optimizer living inside the model.

``LinNet(model, layers, width)`` computes ``x ↦ A_layers ⋯ A_1 · model(x)`` with bias-free linear
maps A_1 (width × out), A_2 … A_{layers−1} (width × width) and A_layers (out × width), where ``out``
is the model's output size. Because width ≥ out, the product A_layers ⋯ A_1 can be any out × out
matrix, so the class of functions the model represents does not change — but MAML adapting the
product through its factors moves the end-to-end map by a preconditioned step (DESIGN.md), which is
what lets a shallow model adapt like a deep one.

Initialisation: every A_j is the (rectangular) identity, ``torch.eye(rows, cols)``, so the product
is exactly I_out and a fresh LinNet computes exactly what the inner model computes.
"""
from __future__ import annotations

import torch
from torch import nn

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError

__all__ = ["LinNet", "output_size"]


def output_size(model: nn.Module) -> int:
    """The model's output size: ``out_features`` of its last ``nn.Linear`` in registration order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ArgumentError("model", "LinNet reads the output size from the model's last nn.Linear, and this model "
                                     "has none")
    return linears[-1].out_features


class LinNet(nn.Module):
    """``model`` followed by ``layers`` bias-free linear maps of hidden size ``width`` (default: the
    model's output size, read from its last ``nn.Linear``; must be ≥ it). Parameters:
    ``model.*`` and ``linear.0.weight`` … ``linear.{layers−1}.weight``; initialised to the identity."""

    def __init__(self, model: nn.Module, layers: int = 2, width: int | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
        layers = _validate.integer(layers, "layers", minimum=1)
        out = output_size(model)
        width = out if width is None else _validate.integer(width, "width", minimum=out)
        reference = next(m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)).weight
        dims = [out] + [width] * (layers - 1) + [out]
        maps = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            linear = nn.Linear(d_in, d_out, bias=False, dtype=reference.dtype, device=reference.device)
            with torch.no_grad():
                linear.weight.copy_(torch.eye(d_out, d_in, dtype=reference.dtype, device=reference.device))
            maps.append(linear)
        self.model = model
        self.linear = nn.Sequential(*maps)
        self.layers, self.width, self.out_features = layers, width, out

    def extra_repr(self) -> str:
        return f"layers={self.layers}, width={self.width}, out_features={self.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.model(x))
