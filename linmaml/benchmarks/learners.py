"""From benchmark options to a meta-learner: backbone, algorithm, meta-optimizer, LinNet.

``build_learner(...)`` is the one place where the benchmark commands' words (``--algo anil
--transform kfo --linnet 2``) become objects of :mod:`linmaml.meta`:

===========  ==============================================================================
algo         learner
===========  ==============================================================================
maml         ``meta.MAML(model, lr, steps, transform)``: every parameter adapts, second order
fomaml       the same with ``first_order=True`` (inner gradients treated as constants)
anil         ``meta.ANIL(features, head, ...)``: only the head adapts, on features computed once
reptile,     ``meta.MAML(model, lr, steps)`` (plain gradient steps) whose meta-gradient is the
imaml,       estimator of that name in :mod:`linmaml.meta.estimators` (Reptile, iMAML, truncated
truncated,   MAML, evolution strategies, Hessian-free MAML), applied by
es, hfmaml   :func:`linmaml.benchmarks.config.make_engine`; validation adapts by plain MAML steps
protonet     ``meta.ProtoNet(features, ways)``: class means of the ConvNet's features, no inner loop
r2d2         ``meta.R2D2(features, ways)``: a closed-form ridge head on them (learned λ, scale, bias)
===========  ==============================================================================

``protonet`` and ``r2d2`` use the ConvNet's ``features`` (its head is not built into the learner);
``transform``, ``linnet``, ``inner_lr`` and ``steps`` do not apply to them (a transform or LinNet
is refused), nor does your own model (use ``meta.ProtoNet`` / ``meta.R2D2`` in Python).

``bn_per_step`` (MAML++'s per-step BatchNorm weights and biases, BNWB; Antoniou, Edwards & Storkey
2019): the ConvNet gets one BatchNorm affine set per inner step (``ConvNet(norm_steps=steps)``,
:mod:`~linmaml.benchmarks.models`), meta-learned and, as in MAML++, not adapted in the inner loop (every
other parameter adapts). Built-in ConvNet and algo ``maml``/``fomaml`` only, without LinNet.

``transform``: ``none`` (plain gradient steps), ``kfo`` (Kronecker-factored, psd), ``metasgd``
(a learned per-parameter rate), ``metacurvature``, ``rates`` (learned per-step rates), ``adam`` (the
inner loop is Adam, :class:`linmaml.meta.Adam`, with ``inner_lr`` as its learning rate and the run's
``adam_beta1``/``adam_beta2``/``adam_eps``; nothing learned, its moments start at zero for every
task). ``linnet K > 0`` appends K bias-free linear layers
of width ``linnet_width`` (default: the number of ways) after the backbone's head, initialised to the
identity (:class:`linmaml.meta.LinNet`); with ANIL those layers belong to the adapted head.

The backbone is :class:`~linmaml.benchmarks.models.ConvNet` (``layers`` blocks of ``hidden``
filters; any height, width and channels), or for feature vectors (``image_shape = (D,)``, your own
data) :class:`~linmaml.benchmarks.models.MLP` (``layers`` hidden layers of ``hidden`` units;
:func:`built_in_model`). The ConvNet's BatchNorm always normalises with the statistics of the batch it sees: the support
set inside the inner loop, the query set when the query loss is computed.

**Your own model** (``model=``): any ``nn.Module`` mapping images ``(n, C, H, W)`` to logits
``(n, ways)`` replaces the ConvNet, and the same learner is built around it (``layers``, ``hidden``
and ``pool`` are then unused). With ``algo="anil"`` the adapted head is the submodule named by
``head`` (e.g. ``"classifier"``; default: the last module, in ``named_modules()`` order, that holds
parameters of its own), and the learner is ``meta.MAML(model, adapt=<the head's parameters>)`` — the
same function and meta-gradient as ANIL, which computes the features once only when the model is
split into ``features`` and ``head`` as the ConvNet is. What the model may hold, and how it runs:

- **buffers, BatchNorm with running statistics**: the learner is built with the buffers policy
  ``buffers="frozen"`` of :mod:`linmaml.meta.maml_learners` (:data:`USER_MODEL_BUFFERS`). Adaptation and
  query passes (the model is in train mode throughout training, validation and evaluation) normalise
  every batch with its own statistics, as MAML and the built-in ConvNet do, and leave the running
  statistics, and every other buffer, as they were: a pretrained backbone keeps its statistics for use
  in eval mode outside meta-learning. Why this policy: the other ("update") changes the running
  statistics at every inner step with each task's few support examples (a mix of all tasks that
  depends on the order they ran in), and cannot run under the vmapped strategies at all; "frozen" runs
  under every strategy and gives them all the same meta-gradient.
- **random layers (Dropout)**: drawn per task under ``batching="loop"``; under "split"/"vmap" with
  ``torch.func.vmap``'s ``randomness`` (the run's setting, default "different": independent draws per
  task, as the loop makes, though not the same numbers; "error" refuses such a model). Draws come from
  torch's generator, seeded per iteration, so a resumed run repeats them. Dropout stays active in
  validation and evaluation (train mode, as for BatchNorm's batch statistics).
- its output for a batch of ``n`` images has shape ``(n, ways)``, checked by :func:`check_user_model`
  (``ArgumentError`` naming ``model``).

:func:`model_fingerprint` (class name and a digest of the parameter and buffer names and shapes) is
recorded in the run's config so a resumed run or :func:`~linmaml.benchmarks.loading.load_learner` can
refuse a different model by name.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from linmaml import _validate, meta
from linmaml.benchmarks.models import MLP, ConvNet
from linmaml.benchmarks.settings import ALGOS, POOLS, TRANSFORMS
from linmaml.errors import ArgumentError, ArgumentTypeError, ModelRequiredError
from linmaml.meta.maml_learners import frozen_buffers

#: The algorithms whose meta-gradient is an estimator of :mod:`linmaml.meta.estimators`.
ESTIMATOR_ALGOS = ("reptile", "imaml", "truncated", "es", "hfmaml")
#: The algorithms whose adaptation is a closed form (no inner loop, no transform).
CLOSED_FORM_ALGOS = {"protonet": meta.ProtoNet, "r2d2": meta.R2D2}


def make_transform(name: str, options=None) -> meta.Transform:
    """The meta-optimizer called ``name`` (one of :data:`TRANSFORMS`), freshly initialised.
    ``options``: keyword arguments of its constructor (``adam``: ``beta1``, ``beta2``, ``eps``)."""
    factories = {"none": meta.Identity, "kfo": meta.KFO, "metasgd": meta.MetaSGD,
                 "metacurvature": meta.MetaCurvature,
                 "rates": meta.LearnedRates,  # per tensor and inner step; built with the learner's steps
                 "adam": meta.Adam}  # inner Adam, nothing learned, its moments fresh for every task
    if name not in factories:
        raise ArgumentError("transform", f"expected one of {', '.join(TRANSFORMS)}, got {name!r}")
    return factories[name](**dict(options or {}))


def model_class_name(model: nn.Module) -> str:
    """``module.QualifiedName`` of the model's class (recorded in a run's config)."""
    kind = type(model)
    return f"{kind.__module__}.{kind.__qualname__}"


def same_model_class(recorded: str | None, model: nn.Module) -> bool:
    """Whether ``model``'s class is the one a run recorded as ``recorded`` (``module.QualifiedName``,
    :func:`model_class_name`), compared by qualified class name only: the module a class is imported
    from changes with the script (``__main__.MyCNN`` while training in ``my_kfo.py``,
    ``my_kfo.MyCNN`` when another script imports it), the class does not. The parameter fingerprint
    (:func:`model_fingerprint`) checks the architecture."""
    if recorded is None:
        return False
    qualname = type(model).__qualname__
    return recorded == qualname or recorded.endswith("." + qualname)


def model_fingerprint(model: nn.Module) -> str:
    """16 hex digits of the sha256 of the model's parameter and buffer names and shapes (not values:
    a freshly built model of the same architecture has the fingerprint of the trained one)."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
    entries = [f"p {n} {tuple(p.shape)}" for n, p in model.named_parameters()]
    entries += [f"b {n} {tuple(b.shape)}" for n, b in model.named_buffers()]
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def check_model_record(recorded, model: nn.Module | None, where: str = "the run") -> dict:
    """The model record ``{"model": class name, "model_fingerprint": ...}`` of ``model`` (both None
    for ``model=None``, the built-in ConvNet), checked against ``recorded``: the one check of a model
    against what a run or its settings record (training a new run with given settings, resuming,
    opening a run with :class:`~linmaml.benchmarks.run.Run`).

    ``recorded``: a mapping with the keys ``model`` and ``model_fingerprint`` (a run's config), or
    None when nothing is recorded yet (any model is accepted). A recorded class name of None means
    the built-in ConvNet, which refuses a model; a recorded class refuses ``model=None`` and a model
    of another class (by qualified name, :func:`same_model_class`) or other parameter shapes
    (:func:`model_fingerprint`). Refusals are ``ArgumentError`` naming ``model`` and ``where``. The
    returned record keeps the recorded class name when the class is the same (imported from another
    module)."""
    if model is not None and not isinstance(model, nn.Module):
        raise ArgumentTypeError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
    record = {"model": None, "model_fingerprint": None} if model is None else \
        {"model": model_class_name(model), "model_fingerprint": model_fingerprint(model)}
    if recorded is None:
        return record
    name, fingerprint = recorded.get("model"), recorded.get("model_fingerprint")
    if name is None:
        if model is not None:
            raise ArgumentError("model", f"{where}: the built-in ConvNet, not a model of your own; leave model out")
        return record
    if model is None:
        raise ModelRequiredError("model", f"{where}: trained on your own model ({name}); pass the same architecture "
                                     f"again (model=...)")
    if not same_model_class(name, model) or (fingerprint is not None and fingerprint != record["model_fingerprint"]):
        raise ArgumentError("model", f"{where}: trained on {name} (fingerprint {fingerprint}), got "
                                     f"{record['model']} (fingerprint {record['model_fingerprint']}): a different "
                                     f"class or parameter shapes")
    return {**record, "model": name}


def resolve_head(model: nn.Module, head: str | None) -> tuple[str, list[str]]:
    """``(submodule name, its parameter names as model.named_parameters() gives them)`` for ANIL.

    ``head``: a submodule name (``model.get_submodule(head)``), or None for the last module in
    ``named_modules()`` order that holds parameters of its own."""
    if head is None:
        owners = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
        if not owners:
            raise ArgumentError("model", "has no parameters")
        head = owners[-1]
    elif not isinstance(head, str):
        raise ArgumentTypeError("head", f"expected a submodule name (str), got {type(head).__name__}")
    try:
        module = model.get_submodule(head)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ArgumentError("head", f"the model has no submodule {head!r}; its submodules are {', '.join(names) or 'none'}")\
            from None
    ids = {id(p) for p in module.parameters() if p.requires_grad}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    if not names:
        raise ArgumentError("head", f"the submodule {head!r} has no parameters that require gradients")
    return head, names


#: The buffers policy of a learner around your own model (module docstring: why "frozen").
USER_MODEL_BUFFERS = "frozen"


def check_user_model(model: nn.Module, image_shape, ways: int, batching: str = "loop",
                     randomness: str = "different") -> None:
    """Refuse, with an ``ArgumentError`` naming the argument, a model that breaks the requirements of
    the module docstring: Dropout under a vmapped strategy with ``randomness="error"`` (naming
    ``randomness``), or logits of the wrong shape on a batch of two zero images of ``image_shape`` (run
    without gradients, its buffers left as they were)."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0 and batching != "loop" \
                and randomness == "error":
            raise ArgumentError("randomness", f"{name or 'the model'} ({type(module).__name__}) draws random numbers, "
                                              f"which batching={batching!r} with randomness 'error' refuses; use "
                                              f"randomness 'different' (or 'same'), or batching='loop'")
    reference = next(iter(model.parameters()), None)
    if reference is None:
        raise ArgumentError("model", "has no parameters")
    x = torch.zeros((2, *image_shape), dtype=reference.dtype, device=reference.device)
    try:
        with torch.no_grad(), frozen_buffers(model):  # the probe must not move running statistics
            out = model(x)
    except Exception as error:  # noqa: BLE001 - reported as the model's, in one line
        first = str(error).splitlines()[0] if str(error) else ""
        raise ArgumentError("model", f"failed on a batch of images of shape {tuple(x.shape)} ({type(error).__name__}: "
                         f"{first})") from error
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, ways):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ArgumentError("model", f"expected logits of shape (n, {ways}) for images (n, {', '.join(map(str, image_shape))}),"
                         f" got {shape} for n = 2")


def build_learner(*, image_shape, ways: int, algo: str = "maml", transform: str = "none", linnet: int = 0,
                  linnet_width: int | None = None, layers: int = 4, hidden: int = 64, pool: str = "max",
                  inner_lr: float = 0.4, steps: int = 1, model: nn.Module | None = None,
                  head: str | None = None, bn_per_step: bool = False, transform_options=None) -> nn.Module:
    """A fresh meta-learner (an ``nn.Module``) for images of shape ``image_shape = (C, H, W)``.

    Its ``adapt(x_support, y_support, loss_fn, steps=None)`` returns adapted parameters and
    ``learner(x, params=fast)`` gives logits ``(n, ways)``; ``learner.parameters()`` is everything the
    outer loop trains (backbone, LinNet layers, transform). Initial values come from torch's global
    generator: seed it first for reproducible runs.
    """
    if algo not in ALGOS:
        raise ArgumentError("algo", f"expected one of {', '.join(ALGOS)}, got {algo!r}")
    if pool not in POOLS:
        raise ArgumentError("pool", f"expected one of {', '.join(POOLS)}, got {pool!r}")
    try:
        image_shape = tuple(int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise ArgumentError("image_shape", f"expected (C, H, W) or (D,), got {image_shape!r}") from None
    if not image_shape or min(image_shape) < 1:
        raise ArgumentError("image_shape", f"expected (C, H, W) or (D,) of positive sizes, got {image_shape!r}")
    if model is None and len(image_shape) not in (1, 3):
        raise ArgumentError("model", f"the built-in models take images (C, H, W) (a ConvNet) or feature vectors "
                                     f"(D,) (an MLP); examples of shape {image_shape} need your own model (model=...)")
    linnet = _validate.integer(linnet, "linnet", minimum=0)
    inner_lr = _validate.finite_number(inner_lr, "inner_lr")
    steps = _validate.integer(steps, "steps", minimum=1)
    transform_module = make_transform(transform, transform_options)
    if not isinstance(bn_per_step, bool):
        raise ArgumentTypeError("bn_per_step", f"expected True or False, got {bn_per_step!r}")
    if bn_per_step:
        if model is None and len(image_shape) != 3:
            raise ArgumentError("bn_per_step", "is built into the ConvNet of images; the MLP of feature vectors has no "
                                               "BatchNorm")
        return _with_per_step_norms(image_shape, ways, algo, transform_module, linnet, layers, hidden, pool,
                                    inner_lr, steps, model)
    if algo in CLOSED_FORM_ALGOS:
        if model is not None:
            raise ArgumentError("model", f"algo {algo!r} runs on the built-in ConvNet's features; with your own network "
                                f"build meta.{CLOSED_FORM_ALGOS[algo].__name__}(features, ways) in Python")
        if transform != "none" or linnet:
            raise ArgumentError("transform" if transform != "none" else "linnet",
                                f"algo {algo!r} has no inner loop: a transform or LinNet layers do not apply")
        backbone = built_in_model(image_shape, ways, layers, hidden, pool)
        return CLOSED_FORM_ALGOS[algo](backbone.features, ways=ways)
    if model is not None:
        return _around_user_model(model, algo, transform_module, linnet, linnet_width, inner_lr, steps, head)
    if head is not None:
        raise ArgumentError("head", "names the adapted submodule of your own model (model=...); the built-in ConvNet's "
                         "head is fixed")
    backbone = built_in_model(image_shape, ways, layers, hidden, pool)
    model: nn.Module = backbone
    if linnet:
        model = meta.LinNet(backbone, layers=linnet, width=linnet_width)
    if algo == "anil":
        head = backbone.head if not linnet else nn.Sequential(backbone.head, model.linear)
        return meta.ANIL(backbone.features, head, lr=inner_lr, steps=steps, transform=transform_module)
    return meta.MAML(model, lr=inner_lr, steps=steps, transform=transform_module, first_order=(algo == "fomaml"))


def built_in_model(image_shape, ways: int, layers: int, hidden: int, pool: str) -> nn.Module:
    """The built-in model for examples of ``image_shape``: a :class:`ConvNet` of ``layers`` blocks of
    ``hidden`` filters for images ``(C, H, W)`` (any height and width), an :class:`MLP` of ``layers``
    hidden layers of ``hidden`` units for feature vectors ``(D,)`` (``pool`` unused)."""
    if len(image_shape) == 1:
        return MLP(image_shape[0], ways=ways, blocks=layers, width=hidden)
    channels, height, width = image_shape
    return ConvNet(in_channels=channels, ways=ways, blocks=layers, filters=hidden,
                   image_size=height if height == width else (height, width), pool=pool)


def _with_per_step_norms(image_shape, ways, algo, transform_module, linnet, layers, hidden, pool, inner_lr,
                         steps, model):
    """MAML on a ConvNet with one BatchNorm affine set per inner step (module docstring: BNWB)."""
    if model is not None:
        raise ArgumentError("bn_per_step", "per-step BatchNorm is built into linmaml's ConvNet; your own model would "
                                           "need it in its forward (see linmaml.benchmarks.models)")
    if algo not in ("maml", "fomaml"):
        raise ArgumentError("bn_per_step", f"needs algo maml or fomaml (the norms of {algo}'s features do not adapt "
                                           f"step by step)")
    if linnet:
        raise ArgumentError("bn_per_step", "is not combined with LinNet layers")
    channels, height, width = image_shape
    backbone = ConvNet(in_channels=channels, ways=ways, blocks=layers, filters=hidden,
                       image_size=height if height == width else (height, width), pool=pool, norm_steps=steps)
    adapted = [n for n, _ in backbone.named_parameters() if ".norm." not in n]  # the per-step sets do not adapt
    return meta.MAML(backbone, lr=inner_lr, steps=steps, transform=transform_module, first_order=(algo == "fomaml"),
                     adapted=adapted)


def _around_user_model(model, algo, transform_module, linnet, linnet_width, inner_lr, steps, head):
    """The learner of :func:`build_learner` around the user's model (module docstring)."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
    if head is not None and algo != "anil":
        raise ArgumentError("head", f"names the submodule that ANIL adapts; algo {algo!r} adapts every parameter")
    adapt = "all"
    if algo == "anil":
        _, adapt = resolve_head(model, head)
    wrapped = model
    if linnet:
        wrapped = meta.LinNet(model, layers=linnet, width=linnet_width)
        if algo == "anil":  # the LinNet layers belong to the adapted head, as with the ConvNet
            adapt = [f"model.{n}" for n in adapt] + [n for n, _ in wrapped.linear.named_parameters(prefix="linear")]
    return meta.MAML(wrapped, lr=inner_lr, steps=steps, transform=transform_module, first_order=(algo == "fomaml"),
                     adapted=adapt, buffers=USER_MODEL_BUFFERS)
