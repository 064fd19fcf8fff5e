"""Loading a trained learner from a run folder or a checkpoint file: :func:`load_learner`.

    from linmaml.benchmarks import load_learner
    learner = load_learner("runs/maml")                  # the run's best.pt (else last.pt)
    fast = learner.adapt(x_support, y_support, F.cross_entropy, steps=3)
    logits = learner(x_query, params=fast)

A checkpoint holds the run's config, so the learner is rebuilt exactly as training built it (the
built-in ConvNet, or around your own model when the run used one: pass a freshly built model of the
same architecture as ``model=``; its weights are replaced by the checkpoint's).
"""
from __future__ import annotations

from pathlib import Path

import torch

from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.config import TrainConfig, build_from_config
from linmaml.errors import ArgumentError, ArgumentTypeError

__all__ = ["load_learner", "checkpoint_file", "load_run_checkpoint", "check_run_payload", "load_weights"]


def checkpoint_file(path) -> Path:
    """The checkpoint a path names: a file as is; a training folder's ``best.pt`` (else ``last.pt``,
    else ``last.prev.pt``)."""
    if not isinstance(path, (str, Path)):
        raise ArgumentTypeError("checkpoint", f"expected a path (str or Path), got {type(path).__name__}")
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (checkpoint.BEST, checkpoint.LAST, checkpoint.LAST_PREV):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"checkpoint: {path} holds no {checkpoint.BEST} or {checkpoint.LAST}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    return path


def load_run_checkpoint(path) -> tuple[Path, dict, TrainConfig]:
    """``(file, payload, config)`` of the verified checkpoint that ``path`` names (:func:`checkpoint_file`);
    ``ValueError`` if the file was not written by ``linmaml train``."""
    file = checkpoint_file(path)
    payload = checkpoint.load(file)
    return file, payload, check_run_payload(payload, file)


def check_run_payload(payload, file) -> TrainConfig:
    """The settings of ``payload``, a checkpoint written by ``linmaml train`` read from ``file``;
    ``ArgumentError`` naming ``checkpoint`` and the file when it is not one, holds unusable settings
    or an unusable image shape, or weights that are not a dict of finite tensors."""
    if not isinstance(payload, dict) or "config" not in payload or "learner" not in payload \
            or "image_shape" not in payload:
        raise ArgumentError("checkpoint", f"{file} was not written by linmaml train")
    shape = payload["image_shape"]
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 8 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in shape):
        raise ArgumentError("checkpoint", f"{file} holds an unusable image shape ({shape!r})")
    if not isinstance(payload["learner"], dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["learner"].items()):
        raise ArgumentError("checkpoint", f"{file} holds weights that are not a dict of tensors")
    try:
        config = TrainConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise ArgumentError("checkpoint", f"{file} holds unusable settings ({str(error).splitlines()[0]})") from None
    for name, value in payload["learner"].items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArgumentError("checkpoint", f"{file}: the weights are not finite (NaN or infinity in {name}); "
                                              f"the run diverged before it was saved, nothing to score")
    return config


def load_weights(learner: torch.nn.Module, payload: dict, file) -> torch.nn.Module:
    """``learner.load_state_dict(payload["learner"])``, with a payload that does not fit the learner
    its settings build (another architecture, a missing or extra weight, a wrong shape) refused as
    an :class:`ArgumentError` naming ``checkpoint`` and the file instead of torch's traceback."""
    try:
        learner.load_state_dict(payload["learner"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
        detail = " ".join(str(error).split())[:300] if str(error).strip() else type(error).__name__
        raise ArgumentError("checkpoint", f"{file}: the weights do not fit the network its settings build "
                                          f"({detail})") from None
    return learner


def load_learner(run_or_checkpoint, map_location=None, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The trained learner (``meta.MAML`` or ``meta.ANIL``) of a run folder or a checkpoint file.

    ``run_or_checkpoint``: a run folder (its ``best.pt``, else ``last.pt``) or a ``.pt`` written by
    ``linmaml train``; verified against its checksum (:class:`~linmaml.benchmarks.checkpoint.CorruptCheckpoint`
    if damaged). ``map_location``: the device to put it on (``"cpu"``, ``"cuda:0"``, a
    ``torch.device``; default CPU). ``model``: required exactly when the run trained your own model
    (``train(model=...)``): a module of the same class and parameter shapes, else ``ValueError``
    naming ``model``; the returned learner wraps that module, whose weights become the checkpoint's.

    The learner is in the run's dtype and in **training mode**, the mode in which training validated
    it and ``linmaml evaluate`` scores it: the built-in ConvNet's BatchNorm normalises with each batch's
    own statistics in either mode, and a model with Dropout keeps it on, as in validation (call
    ``.eval()`` to switch it off). Use it as in training:
    ``fast = learner.adapt(xs, ys, F.cross_entropy, steps=config_test_steps)``, then
    ``learner(xq, params=fast)`` gives logits ``(n, ways)``; images ``(n, C, H, W)``.
    """
    if map_location is not None and not isinstance(map_location, (str, torch.device)):
        raise ArgumentTypeError("map_location", f"expected a device name or torch.device, got {type(map_location).__name__}")
    try:
        device = torch.device("cpu" if map_location is None else map_location)
    except RuntimeError as error:
        raise ArgumentError("map_location", f"{map_location!r} is not a device ({str(error).splitlines()[0]})") from None
    file, payload, config = load_run_checkpoint(run_or_checkpoint)
    learner = build_from_config(config, tuple(payload["image_shape"]), model)
    learner.to(dtype=config.torch_dtype)
    load_weights(learner, payload, file)
    learner.train()
    return learner.to(device=device)
