"""Loading a trained learner from a run folder or a checkpoint file: :func:`load_learner`.

    from linmaml.benchmarks import load_learner
    learner = load_learner("runs/maml")                  # the run's best.pt (else its newest last.pt)
    fast = learner.adapt(x_support, y_support, F.cross_entropy, steps=3)
    logits = learner(x_query, params=fast)

A checkpoint holds the run's config, so the learner is rebuilt exactly as training built it (the
built-in ConvNet, or around your own model when the run used one: pass a freshly built model of the
same architecture as ``model=``; its weights are replaced by the checkpoint's). The run is opened by
:class:`linmaml.benchmarks.run.Run` (which checkpoint a folder gives, the model check, the learner
build); ``Run.open(path).learner`` is the same learner with the run's settings beside it.
"""
from __future__ import annotations

import torch

from linmaml.benchmarks.run import Run
from linmaml.errors import ArgumentError, ArgumentTypeError

__all__ = ["load_learner"]


def load_learner(run_or_checkpoint, map_location=None, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The trained learner (``meta.MAML`` or ``meta.ANIL``) of a run folder or a checkpoint file.

    ``run_or_checkpoint``: a run folder (its ``best.pt``, else its newest valid ``last.pt``), or a
    ``.pt`` written by ``linmaml train`` (``best.pt``, ``last.pt``, a ``snapshots/iter-<t>.pt``);
    verified against its checksum (:class:`~linmaml.benchmarks.checkpoint.CorruptCheckpoint` if
    damaged; :class:`~linmaml.benchmarks.run.Run` states the rule). ``map_location``: the device to
    put it on (``"cpu"``, ``"cuda:0"``, a ``torch.device``; default CPU). ``model``: required exactly
    when the run trained your own model (``train(model=...)``): a module of the same class and
    parameter shapes, else ``ValueError`` naming ``model``; the returned learner wraps that module,
    whose weights become the checkpoint's.

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
    return Run.open(run_or_checkpoint, model).to(device).learner
