"""From benchmark options to a meta-learner: backbone, algorithm, meta-optimizer, LinNet.

``build_learner(...)`` is the one place where the benchmark commands' words (``--algo anil
--transform kfo --linnet 2``) become objects of :mod:`linmaml.meta`:

=========  ==============================================================================
algo       learner
=========  ==============================================================================
maml       ``meta.MAML(model, lr, steps, transform)``: every parameter adapts, second order
fomaml     the same with ``first_order=True`` (inner gradients treated as constants)
anil       ``meta.ANIL(features, head, ...)``: only the head adapts, on features computed once
=========  ==============================================================================

``transform``: ``none`` (plain gradient steps), ``kfo`` (Kronecker-factored, psd), ``metasgd``
(a learned per-parameter rate), ``metacurvature``. ``linnet K > 0`` appends K bias-free linear layers
of width ``linnet_width`` (default: the number of ways) after the backbone's head, initialised to the
identity (:class:`linmaml.meta.LinNet`); with ANIL those layers belong to the adapted head.

The backbone is :class:`~linmaml.benchmarks.models.ConvNet` (``layers`` blocks of ``hidden``
filters), whose BatchNorm always normalises with the statistics of the batch it sees: the support
set inside the inner loop, the query set when the query loss is computed.
"""
from __future__ import annotations

from torch import nn

from linmaml import _validate, meta
from linmaml.benchmarks.models import ConvNet

ALGOS = ("maml", "fomaml", "anil")
TRANSFORMS = ("none", "kfo", "metasgd", "metacurvature")
POOLS = ("max", "stride")


def make_transform(name: str) -> meta.Transform:
    """The meta-optimizer called ``name`` (one of :data:`TRANSFORMS`), freshly initialised."""
    factories = {"none": meta.Identity, "kfo": meta.KFO, "metasgd": meta.MetaSGD,
                 "metacurvature": meta.MetaCurvature}
    if name not in factories:
        raise ValueError(f"transform: expected one of {', '.join(TRANSFORMS)}, got {name!r}")
    return factories[name]()


def build_learner(*, image_shape, ways: int, algo: str = "maml", transform: str = "none", linnet: int = 0,
                  linnet_width: int | None = None, layers: int = 4, hidden: int = 64, pool: str = "max",
                  inner_lr: float = 0.4, steps: int = 1) -> nn.Module:
    """A fresh meta-learner (an ``nn.Module``) for images of shape ``image_shape = (C, H, W)``.

    Its ``adapt(x_support, y_support, loss_fn, steps=None)`` returns adapted parameters and
    ``learner(x, params=fast)`` gives logits ``(n, ways)``; ``learner.parameters()`` is everything the
    outer loop trains (backbone, LinNet layers, transform). Initial values come from torch's global
    generator: seed it first for reproducible runs.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo: expected one of {', '.join(ALGOS)}, got {algo!r}")
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    try:
        channels, height, width = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape: expected (C, H, W), got {image_shape!r}") from None
    if height != width:
        raise ValueError(f"image_shape: expected square images, got {height}x{width}")
    linnet = _validate.integer(linnet, "linnet", minimum=0)
    inner_lr = _validate.finite_number(inner_lr, "inner_lr")
    steps = _validate.integer(steps, "steps", minimum=1)
    transform_module = make_transform(transform)
    backbone = ConvNet(in_channels=channels, ways=ways, blocks=layers, filters=hidden, image_size=height, pool=pool)
    model: nn.Module = backbone
    if linnet:
        model = meta.LinNet(backbone, layers=linnet, width=linnet_width)
    if algo == "anil":
        head = backbone.head if not linnet else nn.Sequential(backbone.head, model.linear)
        return meta.ANIL(backbone.features, head, lr=inner_lr, steps=steps, transform=transform_module)
    return meta.MAML(model, lr=inner_lr, steps=steps, transform=transform_module, first_order=(algo == "fomaml"))
