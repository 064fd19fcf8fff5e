"""CNN backbones for the few-shot benchmarks.

The standard MAML backbone (Finn et al. 2017; Vinyals et al. 2016): ``blocks`` blocks of

    conv 3×3 (padding 1) → BatchNorm → ReLU → 2×2 max-pool      (pool="max")
    conv 3×3 (stride 2, padding 1) → BatchNorm → ReLU            (pool="stride")

followed by a linear head on the flattened features. The max-pool is computed *before* the ReLU:
both are non-decreasing, so max(relu(·)) = relu(max(·)) element for element, and the gradients agree
too (where a window's maximum is ≤ 0 both give it zero gradient; elsewhere both route it to the same
first maximal element) — the same function and derivatives of every order, with the ReLU and its
backward on a quarter of the elements (``tests/benchmarks/test_bench_models.py`` checks this against
the textbook order in float64). 64 filters is the usual width for Omniglot, 32 for CIFAR-FS and
mini-ImageNet; the paper's "too shallow to adapt" models use 1 or 2 blocks.

Memory layout: the network accepts any layout. Inputs in channels-last layout (channel innermost,
:func:`to_channels_last`) keep every activation channels-last, which the CPU's convolution,
BatchNorm and pooling kernels run faster (``linmaml bench --only maml`` times a whole second-order
meta-iteration of the 4-block CNN with and without it). The training step and evaluation convert their episodes
once.

BatchNorm policy (explicit, as DESIGN.md asks): every BatchNorm normalises with the statistics of
the batch it sees — the support set inside the inner loop, the query set when the query loss is
computed — and keeps no running statistics (``track_running_stats=False``). This is what MAML does,
makes the model a pure function of (parameters, input) for ``torch.func.functional_call`` and
``vmap``, and means evaluation uses the same rule as training. Its affine scale and shift are
ordinary parameters that adapt with the rest.

First block: BatchNorm folded into the convolution. A convolution is linear in its input patches
p (the C·3·3 values under the kernel), so the batch statistics of channel o of ``conv(x)`` follow from
the patches' mean μ_p and covariance Σ_p: mean_o = w_o·μ_p + b_o and var_o = w_oᵀ Σ_p w_o. BatchNorm
after the convolution is then one convolution with weight s_o·w_o and bias β_o + s_o·(b_o − mean_o),
s_o = γ_o / sqrt(var_o + eps) — the same function, differentiable to every order, that never
materialises or normalises the full-resolution pre-norm activation. It costs a (C·9)×(C·9)
covariance, cheaper than BatchNorm's passes when C·9 ≤ filters: the first block on Omniglot (C = 1)
and CIFAR/ImageNet (C = 3) images. The block's ``conv`` and ``norm`` parameters are unchanged.

Per-step BatchNorm weights and biases (MAML++'s BNWB, Antoniou, Edwards & Storkey 2019): with
``norm_steps = S > 0`` each block's BatchNorm holds S affine sets, ``norm.weight`` and ``norm.bias`` of
shape (S, filters), and ``forward(x, step=k)`` normalises with set ``min(k, S − 1)`` (default: the last,
S − 1). The inner loop's step k (k = 0, 1, …) uses set k for its support forward, and the parameters
after k + 1 steps are scored on the query set with set k, as in MAML++; the sets are meta-learned and
not adapted in the inner loop (:func:`linmaml.benchmarks.learners.build_learner`). The normalisation
itself (batch statistics) is unchanged. Only this ConvNet has it (``linmaml.meta`` passes ``step`` to
any model whose ``norm_steps`` is positive).

Parameter names are stable and say what they are: ``features.block{i}.conv.weight``,
``features.block{i}.norm.weight``, ``head.weight`` … so ``adapted="head"`` and ANIL find the head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from linmaml import _validate
from linmaml.errors import ArgumentError


class ConvBlock(nn.Module):
    """conv 3×3 → BatchNorm (batch statistics) → [2×2 max-pool] → ReLU; module docstring.

    ``fold_norm`` (set when ``in_channels·9 ≤ out_channels``): compute BatchNorm∘conv as one
    convolution from the input patches' statistics (:meth:`_folded_conv_norm`)."""

    def __init__(self, in_channels: int, out_channels: int, pool: str, norm_steps: int = 0):
        super().__init__()
        stride = 2 if pool == "stride" else 1
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm = nn.BatchNorm2d(out_channels, track_running_stats=False)
        self.norm_steps = norm_steps
        if norm_steps:
            # One affine set per inner step (module docstring), rows of (S, C) parameters. The module
            # stays a BatchNorm2d (never called itself: forward passes a row to F.batch_norm) so that
            # the engine still finds a norm layer and computes it by formula under vmap.
            self.norm.weight = nn.Parameter(torch.ones(norm_steps, out_channels))
            self.norm.bias = nn.Parameter(torch.zeros(norm_steps, out_channels))
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.Identity()
        self.fold_norm = in_channels * 9 <= out_channels

    def forward(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        if self.norm_steps:
            k = self.norm_steps - 1 if step is None else min(step, self.norm_steps - 1)
            weight, bias = self.norm.weight[k], self.norm.bias[k]
            if self.fold_norm:
                y = self._folded_conv_norm(x, weight, bias)
            else:
                y = F.batch_norm(self.conv(x), None, None, weight, bias, training=True, eps=self.norm.eps)
        else:
            y = self._folded_conv_norm(x) if self.fold_norm else self.norm(self.conv(x))
        # Pool, then ReLU: equal to ReLU then pool (module docstring), on a quarter of the elements.
        return torch.relu(self.pool(y))

    def _folded_conv_norm(self, x: torch.Tensor, weight=None, bias=None) -> torch.Tensor:
        """``norm(conv(x))`` with batch statistics, as one convolution (module docstring); ``weight``
        and ``bias``: the affine set (default the norm's own)."""
        conv, norm = self.conv, self.norm
        if weight is None:
            weight, bias = norm.weight, norm.bias
        patches = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (N, C·9, L)
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])                   # (N·L, C·9)
        mean = patches.mean(dim=0)
        centred = patches - mean
        covariance = centred.T @ centred / patches.shape[0]
        w = conv.weight.flatten(1)                                                        # (out, C·9)
        conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(w[:, 0])
        out_mean = w @ mean + conv_bias
        out_var = ((w @ covariance) * w).sum(dim=1)
        scale = torch.rsqrt(out_var + norm.eps)
        if weight is not None:
            scale = scale * weight
        shift = scale * (conv_bias - out_mean)  # the conv bias cancels exactly, as in BatchNorm
        if bias is not None:
            shift = shift + bias
        return F.conv2d(x, conv.weight * scale[:, None, None, None], shift, stride=conv.stride,
                        padding=conv.padding)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x (…, C, H, W)`` with the same values laid out channel-innermost (strides ``(…, 1, W·C, C)``).

    Any number of leading axes (a meta-batch ``(M, n, C, H, W)`` too: each image of it is then
    channels-last, so per-task slices and their reshapes feed the convolutions in that layout).
    ``torch.channels_last`` itself takes 4-d tensors only and leaves a one-channel image as it is,
    since its strides already pass as channels-last; here C = 1 is re-strided too, which is what
    makes the first convolution choose the channels-last kernel. Returns ``x`` itself when it
    already has that layout.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise ArgumentError("x", f"expected a tensor (…, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    if x.stride(-3) == 1 and x.movedim(-3, -1).is_contiguous():
        return x
    # Copy into fresh channel-innermost storage: ``.contiguous()`` on the permuted view would be a
    # no-op for C = 1 (a size-1 axis's stride does not count for contiguity).
    out = torch.empty(x.movedim(-3, -1).shape, dtype=x.dtype, device=x.device).movedim(-1, -3)
    return out.copy_(x)


def feature_size(image_size: int, blocks: int, pool: str) -> int:
    """Spatial side length after ``blocks`` blocks (max-pool floors, stride-2 conv rounds up)."""
    side = image_size
    for _ in range(blocks):
        side = side // 2 if pool == "max" else (side + 1) // 2
    return side


class ConvNet(nn.Module):
    """``blocks`` conv blocks and a linear head.

    Input (batch, in_channels, H, W) with ``image_size = H = W`` (an int) or ``(H, W)`` (any, also
    non-square); output logits (batch, ways). ``features`` maps the input to (batch, filters·h·w),
    h and w the sides after the blocks (:func:`feature_size`), and ``head`` is the last ``nn.Linear``.
    """

    def __init__(self, in_channels: int = 1, ways: int = 5, blocks: int = 4, filters: int = 64,
                 image_size=28, pool: str = "max", norm_steps: int = 0):
        super().__init__()
        _validate.integer(in_channels, "in_channels", minimum=1)
        _validate.integer(ways, "ways", minimum=2)
        _validate.integer(blocks, "blocks", minimum=1)
        _validate.integer(filters, "filters", minimum=1)
        if isinstance(image_size, (tuple, list)):
            if len(image_size) != 2:
                raise ArgumentError("image_size", f"expected a side or (height, width), got {image_size!r}")
            height, width = (_validate.integer(v, "image_size", minimum=1) for v in image_size)
        else:
            height = width = _validate.integer(image_size, "image_size", minimum=1)
        if pool not in ("max", "stride"):
            raise ArgumentError("pool", f"expected 'max' or 'stride', got {pool!r}")
        self.norm_steps = _validate.integer(norm_steps, "norm_steps", minimum=0)
        rows, columns = feature_size(height, blocks, pool), feature_size(width, blocks, pool)
        if min(rows, columns) < 1:
            raise ArgumentError("blocks", f"{blocks} blocks of 2× down-sampling do not fit a {height}x{width}-pixel "
                                          f"image (use fewer blocks, or pool 'stride')")
        self.features = nn.Sequential()
        channels = in_channels
        for i in range(blocks):
            self.features.add_module(f"block{i}", ConvBlock(channels, filters, pool, norm_steps))
            channels = filters
        self.features.add_module("flatten", nn.Flatten())
        self.head = nn.Linear(filters * rows * columns, ways)
        self.config = dict(in_channels=in_channels, ways=ways, blocks=blocks, filters=filters,
                           image_size=height if height == width else [height, width], pool=pool)
        if norm_steps:
            self.config["norm_steps"] = norm_steps

    def forward(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """Logits; ``step`` chooses the per-step BatchNorm set (module docstring; only with
        ``norm_steps > 0``, default the last set)."""
        if not self.norm_steps:
            return self.head(self.features(x))
        for module in self.features:
            x = module(x, step) if isinstance(module, ConvBlock) else module(x)
        return self.head(x)


class MLP(nn.Module):
    """The built-in model for flat feature vectors (your own data of shape ``(D,)`` per example):
    ``blocks`` hidden layers ``Linear → ReLU`` of ``width`` units, then a linear head.

    Input (batch, in_features); output logits (batch, ways). ``features`` is everything before the
    head (for ANIL, ProtoNets and R2-D2, as with :class:`ConvNet`), ``head`` the last ``nn.Linear``.
    No normalisation layer: a pure function of (parameters, input)."""

    def __init__(self, in_features: int, ways: int = 5, blocks: int = 4, width: int = 64):
        super().__init__()
        _validate.integer(in_features, "in_features", minimum=1)
        _validate.integer(ways, "ways", minimum=2)
        _validate.integer(blocks, "blocks", minimum=1)
        _validate.integer(width, "width", minimum=1)
        self.features = nn.Sequential()
        size = in_features
        for i in range(blocks):
            self.features.add_module(f"layer{i}", nn.Sequential(nn.Linear(size, width), nn.ReLU()))
            size = width
        self.head = nn.Linear(size, ways)
        self.config = dict(in_features=in_features, ways=ways, blocks=blocks, width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, ways)`` of features ``x (batch, in_features)``."""
        return self.head(self.features(x))
