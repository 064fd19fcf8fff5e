"""A differentiable closed-form ridge-regression head (R2-D2: Bertinetto, Henriques, Torr & Vedaldi,
ICLR 2019) as a learner on the engine.

``adapt`` embeds the support set, X = f(x_support) of shape (n, d), and regresses the one-hot labels
Y (n, ways) on it with ridge penalty λ, in the Woodbury (dual) form that solves an n×n system (n, the
support size, is small beside d)::

    W = Xᵀ (X Xᵀ + λ I_n)⁻¹ Y          (d, ways)   [= (XᵀX + λ I_d)⁻¹ XᵀY]

and ``learner(x, params=fast)`` gives the logits α · f(x) W + β. λ, α and β are learned with the
features (``nn.Parameter``\\s of the learner: ``log_lambda`` = log λ, so λ stays positive, ``scale``
= α, ``bias`` = β), and the meta-gradient reaches them and ``features`` through the solve. β shifts
every logit alike, so under softmax cross-entropy its gradient is zero (the loss is invariant to it);
it is there as in the paper, for losses that are not. Initial values: λ = 1, α = 1, β = 0 (choices
of this library; pass ``lam``, ``scale``, ``bias``); freeze one with ``requires_grad_(False)``.
No column of ones is appended to X (the ridge has no intercept).

The calls and conventions (``ways``, labels, ``loss_fn``/``steps`` unused, ``buffers``, ``learner(x)``
the embeddings) are :class:`~linmaml.meta.ProtoNet`'s (:mod:`linmaml.meta.protonets`). ``adapt``
returns ``{"ridge_weight": W}``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from linmaml import _validate
from linmaml.meta.protonets import ClosedFormLearner

__all__ = ["R2D2"]


class R2D2(ClosedFormLearner):
    """Ridge-regression head on learned features (module docstring): W = Xᵀ(XXᵀ + λI)⁻¹Y on the
    support set, logits α·f(x)W + β on the queries.

    ``features``: ``nn.Module`` (n, …) -> embeddings; ``ways``: number of classes (None: from the
    labels, outside vmap only); ``lam`` > 0, ``scale``, ``bias``: initial λ, α, β (all learned);
    ``buffers``: "update" or "frozen".
    """

    adapted_name = "ridge_weight"

    def __init__(self, features: nn.Module, ways: int | None = None, lam: float = 1.0, scale: float = 1.0,
                 bias: float = 0.0, buffers: str = "update"):
        super().__init__(features, ways, buffers)
        lam = _validate.finite_number(lam, "lam", positive=True)
        scale = _validate.finite_number(scale, "scale")
        bias = _validate.finite_number(bias, "bias")
        dtype = next((p.dtype for p in features.parameters()), torch.get_default_dtype())
        self.log_lambda = nn.Parameter(torch.tensor(math.log(lam), dtype=dtype))
        self.scale = nn.Parameter(torch.tensor(scale, dtype=dtype))
        self.bias = nn.Parameter(torch.tensor(bias, dtype=dtype))

    def fit(self, X, Y):
        n = X.shape[0]
        gram = X @ X.T + torch.exp(self.log_lambda) * torch.eye(n, dtype=X.dtype, device=X.device)
        # X Xᵀ + λI is symmetric positive definite: a Cholesky solve is the stable and cheap choice
        factor = torch.linalg.cholesky(gram)
        return X.T @ torch.cholesky_solve(Y, factor)

    def predict(self, z, W):
        return self.scale * (z @ W) + self.bias
