"""One way to open a trained run: :class:`Run`. ::

    from linmaml.benchmarks.run import Run
    run = Run.open("runs/maml")                 # a run folder, best.pt / last.pt, or snapshots/iter-<t>.pt
    run.config, run.iteration, run.file         # the settings, the iteration the weights are of, the file read
    tasks = run.tasks("test", count=600)        # the fixed test episodes of the run's benchmark
    losses, accuracies = run.engine().score(*batch, steps=run.config.test_steps)

``load_learner``, ``evaluate_checkpoint``, ``analyze_run``, ``linmaml plot`` (through
:func:`read_curves`) and ``train --resume`` (through :meth:`Run.from_payload`) open runs here and
nowhere else.

**Which checkpoint** (the one rule). A path to a file opens that file: ``best.pt``, ``last.pt``,
``last.prev.pt``, a ``snapshots/iter-<t>.pt`` (``train --snapshot-every``), or any ``.pt`` written by
``linmaml train``. A run folder opens ``best.pt`` (the weights of the best validation) when it exists,
else the newer valid one of ``last.pt`` and ``last.prev.pt`` (by the iteration each records; a
damaged ``last.pt`` falls back to ``last.prev.pt``, as ``--resume`` does). A damaged ``best.pt`` is
an error, never silently replaced by other weights. ``latest=True`` skips ``best.pt`` (what ``train
--resume`` continues). Every file is verified against its checksum
(:class:`~linmaml.benchmarks.checkpoint.CorruptCheckpoint`, naming it).

**Which model**: the run's settings say; a run on your own model needs a freshly built module of the
same class and parameter shapes as ``model=`` (the one check:
:func:`~linmaml.benchmarks.learners.check_model_record`), whose weights become the checkpoint's.

**Which learner**: built from the settings (:func:`~linmaml.benchmarks.config.build_from_config`),
converted to the run's dtype *before* the weights are loaded (a float64 run's weights are never
rounded through float32), on the CPU, in training mode (the mode training validated it in: BatchNorm
normalises with each batch's statistics either way; a model's Dropout stays on).

Errors name ``checkpoint`` and the file: ``FileNotFoundError`` for a missing path or a folder without
a checkpoint, ``ArgumentError`` (a ``ValueError``) for a file that is not a run's checkpoint, holds
unusable settings, non-finite weights, or weights that do not fit the network its settings build.
"""
from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from linmaml import _io
from linmaml.benchmarks import checkpoint, episodes
from linmaml.benchmarks import data as datasets  # datasets.load_splits looked up at call time: tests swap it
from linmaml.benchmarks.config import (TrainConfig, build_from_config, check_model_matches, check_task_fits,
                                       data_options, make_engine)
from linmaml.benchmarks.learners import check_user_model
from linmaml.benchmarks.run_files import BEST, LAST, LAST_PREV, METRICS, run_folder_of
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.engine import Engine

__all__ = ["Run", "checkpoint_file", "check_run_payload", "RunCurves", "read_curves", "read_runs"]

SPLITS = ("train", "val", "test")


def checkpoint_file(path, *, latest: bool = False) -> tuple[Path, dict]:
    """``(file, verified payload)`` of the checkpoint ``path`` names (the module docstring's rule)."""
    if not isinstance(path, (str, Path)):
        raise ArgumentTypeError("checkpoint", f"expected a path (str or Path), got {type(path).__name__}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    if not path.is_dir():
        return path, checkpoint.load(path)
    if not latest and (path / BEST).exists():
        return path / BEST, checkpoint.load(path / BEST)
    found = checkpoint.latest(path)  # the newer valid of last.pt and last.prev.pt
    if found is None:
        raise FileNotFoundError(f"checkpoint: {path} holds no checkpoint ({'' if latest else BEST + ', '}{LAST} or "
                                f"{LAST_PREV})")
    payload, file = found
    return file, payload


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


def _load_weights(learner: torch.nn.Module, weights: dict, file) -> None:
    """``learner.load_state_dict(weights)``, a mismatch (another architecture, a missing or extra
    weight, a wrong shape) refused as an :class:`ArgumentError` naming ``checkpoint`` and the file."""
    try:
        learner.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
        detail = " ".join(str(error).split())[:300] if str(error).strip() else type(error).__name__
        raise ArgumentError("checkpoint", f"{file}: the weights do not fit the network its settings build "
                                          f"({detail})") from None


def _iteration_of(payload: dict) -> int:
    """The iteration a checkpoint records, -1 when it records none (or not a whole number)."""
    value = payload.get("iteration")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else -1


class Run:
    """A trained run opened from one checkpoint (module docstring): :meth:`open` or :meth:`from_payload`.

    Attributes: ``file`` (the checkpoint read), ``folder`` (the run folder: ``config.json``,
    ``metrics.jsonl``), ``payload`` (the verified checkpoint), ``config`` (:class:`TrainConfig`),
    ``iteration`` (the outer steps the weights are after; -1 if not recorded), ``image_shape``
    ``(C, H, W)``, ``model`` (the module given for a run on your own model, else None) and
    ``learner`` (the trained ``meta.MAML``/``ANIL``/``ProtoNet``/``R2D2`` with the checkpoint's weights,
    in the run's dtype; :meth:`to` moves it)."""

    def __init__(self, file: Path, payload: dict, config: TrainConfig, learner: torch.nn.Module, model=None):
        self.file, self.payload, self.config, self.learner, self.model = Path(file), payload, config, learner, model
        self.folder = run_folder_of(self.file)
        self.iteration = _iteration_of(payload)
        self.image_shape = tuple(payload["image_shape"])

    @classmethod
    def open(cls, path, model: torch.nn.Module | None = None, *, latest: bool = False) -> "Run":
        """The run a folder or checkpoint file holds (the module docstring's rule); ``model`` for a run
        on your own model; ``latest``: a folder's newest ``last.pt`` instead of its ``best.pt``."""
        file, payload = checkpoint_file(path, latest=latest)
        return cls.from_payload(payload, file, model)

    @classmethod
    def from_payload(cls, payload, file, model: torch.nn.Module | None = None) -> "Run":
        """The run of a checkpoint already read from ``file`` (verified): its settings checked, the
        model checked against the run's record, the learner built in the run's dtype with its weights."""
        config = check_run_payload(payload, file)
        check_model_matches(config, model, where=f"the run in {file}")
        image_shape = tuple(payload["image_shape"])
        if model is not None:
            check_user_model(model, image_shape, config.ways, config.batching, config.randomness)
        # in the run's dtype before loading, so float64 weights are not rounded through float32
        learner = build_from_config(config, image_shape, model).to(dtype=config.torch_dtype)
        _load_weights(learner, payload["learner"], file)
        learner.train()
        return cls(file, payload, config, learner, model)

    def to(self, device) -> "Run":
        """Move the learner to ``device`` (a name or ``torch.device``); returns the run."""
        self.learner.to(device=device)
        return self

    def engine(self, *, strategy: str | None = None, tasks_per_chunk: int | None = None, adapted=None):
        """The engine the run trained and validated with (:func:`~linmaml.benchmarks.config.make_engine`:
        its ``batching``, ``tasks_per_chunk``, ``compile``, estimator), cross-entropy on labels;
        ``strategy``/``tasks_per_chunk`` override the run's, ``adapted`` adapts only these of the
        learner's adapted parameters (:class:`~linmaml.meta.engine.Engine`)."""
        overrides = {k: v for k, v in (("batching", strategy), ("tasks_per_chunk", tasks_per_chunk)) if v is not None}
        config = dataclasses.replace(self.config, **overrides) if overrides else self.config
        if adapted is None:
            return make_engine(self.learner, config)
        return Engine(self.learner, torch.nn.functional.cross_entropy, strategy=config.batching,
                      tasks_per_chunk=config.tasks_per_chunk, adapted=adapted)

    def splits(self, names: Sequence[str] = ("test",), data_root=None) -> dict:
        """``{name: FewShotSplit}`` of the run's benchmark and class split, read from ``data_root``
        (default: ``$LINMAML_DATA``, then the per-user cache)."""
        return datasets.load_splits(self.config.benchmark, tuple(names), data_root, **data_options(self.config))

    def tasks(self, split: str = "test", *, count: int = 600, query: int | None = None, seed: int = 0,
              data_root=None, splits=None, query_name: str = "query"):
        """The fixed evaluation episodes of ``split`` (``"test"``, ``"val"`` or ``"train"``) of the run's
        benchmark: ``count`` tasks, the run's ways and shots, ``query`` query examples per class
        (default the run's ``test_query``), numbered from task seed ``seed``
        (:func:`~linmaml.benchmarks.episodes.evaluation_tasks`: the same tasks for every run).
        ``splits`` may supply ``{split: FewShotSplit}`` instead of reading ``data_root``."""
        if split not in SPLITS:
            raise ArgumentError("split", f"expected train, val or test, got {split!r}")
        query = self.config.test_query if query is None else query
        if splits is None:
            splits = self.splits((split,), data_root)
        if split not in splits:
            raise ArgumentError("splits", f"no {split!r} split given")
        check_task_fits(splits[split], self.config.ways, self.config.shots, query, query_name)
        return episodes.evaluation_tasks(splits[split], self.config.ways, self.config.shots, query, count=count,
                                         seed=seed)

    def settings(self, *names: str) -> dict:
        """``{name: config.name}`` of the settings named (for a result's record of the run)."""
        return {name: getattr(self.config, name) for name in names}


# --- the training curves (metrics.jsonl) ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class RunCurves:
    """One run's metrics. Training arrays have shape ``(n,)`` (one entry per iteration, sorted;
    ``loss``/``accuracy`` NaN where not finite), validation arrays ``(m,)`` (one per validation)."""

    name: str
    folder: Path
    iteration: np.ndarray
    elapsed: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    val_iteration: np.ndarray
    val_elapsed: np.ndarray
    val_accuracy: np.ndarray
    val_ci95: np.ndarray

    def validations(self) -> list[dict]:
        """One ``{"iteration", "elapsed", "accuracy", "ci95"}`` per validation, in iteration order:
        the iteration, the wall seconds of training so far (validation included, resumes added), the
        accuracy over the validation tasks and its 95 % half-width in percent (None where the log has
        no finite value): the form the analyses record curves in."""
        def number(value, scale=1.0):
            return float(scale * value) if np.isfinite(value) else None

        return [{"iteration": int(t), "elapsed": number(e), "accuracy": number(a, 100.0), "ci95": number(c, 100.0)}
                for t, e, a, c in zip(self.val_iteration, self.val_elapsed, self.val_accuracy, self.val_ci95)]


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else math.nan


def read_curves(folder, name: str | None = None) -> RunCurves:
    """The metrics of the run in ``folder`` (``name`` defaults to the folder's name), from its
    ``metrics.jsonl``: one JSON object per iteration with ``iteration``, ``loss`` and ``accuracy`` (the
    meta-batch's mean query loss and accuracy, ``null`` when not finite), ``elapsed`` (wall seconds
    since the run began, resumes included) and, at validations, ``val_accuracy`` and ``val_ci95``.

    Lines that are not JSON objects with an integer ``iteration`` in 0..2**63-1 (a line torn by a
    kill, one nested absurdly deep) are skipped; the file must be a regular file of at most
    :data:`linmaml._io.MAX_TEXT_BYTES` (``OSError`` naming it: never a FIFO that would block); an
    iteration logged twice keeps its last record. ``ArgumentError`` naming ``run`` when ``folder`` is
    not a folder, holds no ``metrics.jsonl``, or records no iteration.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArgumentError("run", f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist")
    path = folder / METRICS
    if not path.is_file():
        raise ArgumentError("run", f"{folder} holds no {METRICS} (not a run folder of linmaml train)")
    records = {}
    with _io.open_regular(path, _io.MAX_TEXT_BYTES) as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"), start=1):
            try:
                record = _io.loads_json(line, f"{path} line {number}")
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iteration"), int) \
                    and not isinstance(record["iteration"], bool) and 0 <= record["iteration"] < 2 ** 63:
                records[record["iteration"]] = record
    if not records:
        raise ArgumentError("run", f"{path} records no iteration yet")
    rows = [records[t] for t in sorted(records)]
    validated = [r for r in rows if "val_accuracy" in r]

    def column(items, key):
        return np.array([_number(r.get(key)) for r in items], dtype=np.float64)

    return RunCurves(name=name or folder.resolve().name, folder=folder,
                     iteration=np.array([r["iteration"] for r in rows], dtype=np.int64),
                     elapsed=column(rows, "elapsed"), loss=column(rows, "loss"), accuracy=column(rows, "accuracy"),
                     val_iteration=np.array([r["iteration"] for r in validated], dtype=np.int64),
                     val_elapsed=column(validated, "elapsed"), val_accuracy=column(validated, "val_accuracy"),
                     val_ci95=column(validated, "val_ci95"))


def read_runs(folders: Sequence) -> list[RunCurves]:
    """:func:`read_curves` of each folder, named by the folder; folders of the same name are told
    apart by their parent (``a/run``, ``b/run``)."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise ArgumentError("run", "expected at least one run folder")
    names = [f.resolve().name for f in folders]
    labels = [f"{f.resolve().parent.name}/{n}" if names.count(n) > 1 else n for f, n in zip(folders, names)]
    return [read_curves(f, label) for f, label in zip(folders, labels)]
