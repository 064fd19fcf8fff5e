"""Meta-training on a few-shot benchmark: Adam outer loop, periodic validation, exact resume.

``train(options, out_dir)`` takes the run folder (:mod:`~linmaml.benchmarks.run_folder`), builds a
:class:`Trainer` and runs iterations ``1..iterations``. Iteration ``t``:

1. seeds torch with :func:`~linmaml.benchmarks.config.iteration_seed` ``(seed, t)`` and takes the
   training tasks numbered ``(t−1)·M … t·M−1``: nothing depends on a running random stream, so a
   resumed run draws exactly what an uninterrupted one would;
2. accumulates the meta-gradient of the mean query loss through the engine
   (:meth:`linmaml.meta.engine.Engine.meta_gradient`, strategy ``batching``), summed over processes
   when distributed;
3. checks the meta-loss and every gradient for non-finite values (stop, or skip the step with
   ``on_nonfinite="skip"``) and takes one outer step (Adam; plain SGD with ``outer_optimizer="sgd"``);
4. every ``val_every`` iterations (and at the end) scores the fixed validation tasks and keeps the
   best weights in ``best.pt``; appends one JSON line to ``metrics.jsonl``; every
   ``checkpoint_every`` iterations (and at the end, at a validation, on SIGINT/SIGTERM, and before
   stopping on a non-finite value) writes ``last.pt`` (weights, Adam state, counters).

SIGINT/SIGTERM (:mod:`~linmaml.benchmarks.signals`) are answered between iterations and between the
chunks of a validation pass: ``last.pt`` is written and the run exits 130/143. Stopped inside a
validation, the checkpoint holds iteration ``t`` with its validation marked pending, and
``--resume`` runs that validation first, so ``metrics.jsonl`` and ``best.pt`` end as in an
uninterrupted run. Resuming loads ``last.pt`` (or ``last.prev.pt`` if the newer one is damaged) and
continues with ``t + 1``; the final weights equal an uninterrupted run's bit for bit on CPU (same
thread count).

MAML++'s recipe options (:mod:`~linmaml.benchmarks.config`): with ``msl_iterations`` step 2 weighs
the query loss after every inner step (:func:`~linmaml.benchmarks.config.msl_weights`), with
``first_order_iterations`` the early iterations differentiate the inner loop to first order only
(:func:`~linmaml.benchmarks.config.first_order_at`); both depend on ``t`` alone, and the metrics
record each iteration's ``msl_weights`` and ``first_order`` while they are on.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from linmaml import _io, _validate
from linmaml.benchmarks import allocator, checkpoint, distributed, episodes, run_folder, run_settings
from linmaml.benchmarks import data as datasets  # datasets.load_splits looked up at call time: tests swap it
from linmaml.benchmarks.config import (TrainConfig, build_from_config, check_splits, iteration_seed, make_engine,
                                       outer_lr_at, resume_config)
from linmaml.benchmarks.config import OWN_DATA, THREADS_MAX, data_options, first_order_at, msl_weights
from linmaml.benchmarks.data.paths import resolve_data_root
from linmaml.benchmarks.learners import check_model_record, check_user_model
from linmaml.benchmarks.run import Run
from linmaml.benchmarks.progress import Progress, safe_write
from linmaml.benchmarks.config import make_optimizer, train_shots  # the outer optimiser; training tasks' shots
from linmaml.benchmarks.scoring import mean_ci95, model_layout, score_tasks, steps_note
from linmaml.benchmarks.signals import StopSignals
from linmaml.errors import ArgumentError, ArgumentNotADirectoryError

__all__ = ["train", "Trainer", "TrainResult"]

#: Exit status of a run stopped by a non-finite meta-loss or gradient, and of one whose folder was taken.
EXIT_NONFINITE = 3
EXIT_LOST_LOCK = 4


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` ended with. ``status``: ``"done"``, ``"interrupted"`` (a signal),
    ``"nonfinite"`` or ``"lost-lock"``; ``exit_code`` is what the CLI exits with; ``argument``: the
    argument ``message`` is about (``"out"`` for a lost lock), else ``""``."""

    status: str
    iteration: int
    exit_code: int
    message: str = ""
    best: dict | None = None
    skipped: int = 0
    seconds: float = 0.0  # wall time of this call (a resumed run: since it resumed)
    elapsed: float = 0.0  # the run's training seconds since iteration 0, pauses between resumes excluded
    out_dir: str = ""
    writer: bool = True  # False on the ranks > 0 of a distributed run, which print nothing
    argument: str = ""


class _LostFolder(Exception):
    """Raised before a write when another run has taken the folder over (``--overwrite``)."""


def _first_nonfinite(named_parameters) -> str | None:
    """The name of the first parameter whose gradient has a NaN or infinity (None if all finite)."""
    for name, p in named_parameters:
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return name
    return None


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


class Trainer:
    """One training run in a folder that this process has already taken (:func:`train` does that).

    ``Trainer(config, out_dir, splits, ctx, lock=…, payload=…, stream=…, progress=…, on_iteration=…)``
    builds the sampler, the validation tasks, the learner, Adam and the engine (restoring them from
    ``payload``, a ``last.pt``, when resuming); :meth:`run` trains until done, interrupted, diverged or
    dispossessed, and returns a :class:`TrainResult`.
    """

    def __init__(self, config: TrainConfig, out_dir: Path, splits: Mapping, ctx, *, lock=None, payload=None,
                 overwrite: bool = False, stream=None, progress: bool = True, on_iteration=None, model=None,
                 payload_file=None, resumed: Run | None = None):
        for name in ("train", "val"):
            if name not in splits:
                raise ArgumentError("splits", f"expected a {name!r} split")
        if splits["val"].image_shape != splits["train"].image_shape:
            raise ArgumentError("splits", "the train and val images differ in shape")
        check_splits(config, splits)  # names query / test_query / shots / ways when the data cannot supply them
        self.config, self.out_dir, self.ctx, self.lock = config, Path(out_dir), ctx, lock
        self.writer = ctx.is_writer
        # Inner minibatches take consecutive rows of a support set shuffled once per task (by the
        # task's own generator, after its images are drawn: the tasks themselves are unchanged).
        self.sampler = episodes.EpisodeSampler(splits["train"], config.ways, train_shots(config), config.query,
                                               seed=config.seed, shuffle_support=config.inner_batch is not None)
        self.val_tasks = episodes.evaluation_tasks(splits["val"], config.ways, config.shots, config.test_query,
                                                   count=config.val_tasks, seed=0)
        self.image_shape = tuple(int(v) for v in splits["train"].image_shape)
        if model is not None:
            check_user_model(model, self.image_shape, config.ways, config.batching, config.randomness)
        # The built-in ConvNet runs faster on channels-last images; a user's model (given, or rebuilt
        # from its recorded import path) may reshape with .view(), and feature vectors have no channels.
        self.channels_last = config.model is None and model is None and len(self.image_shape) == 3
        torch.manual_seed(config.seed)
        self.payload_file = payload_file or (self.out_dir / checkpoint.LAST)
        if payload is None:
            self.learner = build_from_config(config, self.image_shape, model)
        else:
            # a resumed run's learner is opened as every run is (linmaml.benchmarks.run: model check,
            # build in the run's dtype, weights), after its images are checked against the data's
            if tuple(payload["image_shape"]) != self.image_shape:
                raise ArgumentError("benchmark", f"the checkpoint's images are {tuple(payload['image_shape'])}, the "
                                                 f"data's {self.image_shape}")
            self.learner = (resumed or Run.from_payload(payload, self.payload_file, model)).learner
        self.learner.to(device=ctx.device, dtype=config.torch_dtype)
        self.optimizer = make_optimizer(self.learner.parameters(), config)
        self.engine = make_engine(self.learner, config)
        self.state = {"iteration": 0, "skipped": 0, "elapsed": 0.0, "best": None}
        self.pending: dict | None = None  # the record of an iteration whose validation was interrupted
        self.saved_iteration: int | None = None  # the iteration last.pt holds, None while there is none
        # --overwrite clears the old run's files when this run starts writing (run()), after its
        # ownership of the folder is checked, not while the data is still being read.
        self.clear_first = payload is None and overwrite
        if payload is not None:
            self._restore(payload)
        self.stream = sys.stderr if stream is None else stream
        self.progress = Progress(config.iterations, config.val_every, config.val_tasks, config.meta_batch,
                                 self.stream, progress and self.writer)
        self.on_iteration = on_iteration if self.writer else None
        note = steps_note(self.learner, config.test_steps, config.steps)
        if note is not None and progress and self.writer:  # once, instead of a warning at every validation
            safe_write(self.stream, f"linmaml train: note: validation {note}\n")
        self.metrics = None
        self.signals: StopSignals | None = None
        # recorded in config.json for later commands on the run (linmaml.benchmarks.run_settings)
        self.environment = {"data_root": None, "threads": torch.get_num_threads()}

    def _restore(self, payload: dict) -> None:
        """Load Adam's state and the counters of ``payload`` (checked by
        :func:`run_folder.check_resume_payload`; its weights are already in the learner, opened by
        :class:`~linmaml.benchmarks.run.Run`); a payload that does not fit the run's settings is refused
        naming its file, before any file of the folder is touched."""
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            # Adam's load_state_dict does not compare shapes; a mismatch would fail at the first step
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    for key, value in self.optimizer.state.get(p, {}).items():
                        if key != "step" and (not isinstance(value, torch.Tensor) or value.shape != p.shape):
                            raise ValueError(f"Adam's {key} has shape {tuple(getattr(value, 'shape', ()))}, "
                                             f"its weight {tuple(p.shape)}")
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            raise checkpoint.CorruptCheckpoint(
                f"checkpoint: {self.payload_file} does not fit the run's settings "
                f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})") from None
        for key in self.state:
            self.state[key] = payload[key]
        self.pending = payload.get("pending_validation")
        self.saved_iteration = self.state["iteration"]

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, signals: StopSignals | None = None) -> TrainResult:
        """Train from the current iteration to ``config.iterations`` (see the module docstring)."""
        self.signals = signals
        self.started = time.perf_counter()
        self.elapsed_before = self.state["elapsed"]
        start = self.state["iteration"]
        result = None
        try:
            try:
                self._open_folder_files()
                self.learner.train()
                if start == 0 and self.config.snapshot_every:
                    self._save_snapshot(0)
                result = self._finish_pending() if self.pending is not None else None
                for t in range(start + 1, self.config.iterations + 1):
                    if result is not None:
                        break
                    received = self._stop_requested()
                    if received:
                        result = self._interrupted(f"stopped by {StopSignals.name(received)} after iteration {t - 1}",
                                                   received)
                        break
                    result = self._iteration(t)
            except _LostFolder:
                result = TrainResult("lost-lock", self.state["iteration"], EXIT_LOST_LOCK, f"another run took over "
                                     f"{self.out_dir} (--overwrite); stopped without writing into it again",
                                     argument="out")
            if result is None:
                result = TrainResult("done", self.config.iterations, 0, f"finished {self.config.iterations} iterations")
                if start >= self.config.iterations:
                    result.message = f"nothing to do: the run already has {start} iterations"
        finally:
            self.progress.close()
            if self.metrics is not None:
                self.metrics.close()
        result.best, result.skipped = self.state["best"], self.state["skipped"]
        result.seconds, result.out_dir, result.writer = time.perf_counter() - self.started, str(self.out_dir), self.writer
        result.elapsed = self.state["elapsed"]
        return result

    def _iteration(self, t: int) -> TrainResult | None:
        """Iteration ``t``: meta-gradient, checks, Adam step, validation, log, checkpoint. Returns a
        result when the run must stop, else None."""
        config, M = self.config, self.config.meta_batch
        tick = time.perf_counter()
        torch.manual_seed(iteration_seed(config.seed, t))
        self.optimizer.zero_grad(set_to_none=True)
        loss, accuracy = self._meta_gradient(t)
        bad = None if math.isfinite(loss) else "the meta-loss"
        bad_param = _first_nonfinite(self.learner.named_parameters())
        if bad_param is not None:
            bad = f"the gradient of {bad_param}" if bad is None else f"{bad} and the gradient of {bad_param}"
        skipped_now = bad is not None
        if bad is not None and config.on_nonfinite == "stop":
            self._save_last(t - 1)
            return TrainResult("nonfinite", t - 1, EXIT_NONFINITE, f"iteration {t}: {bad} is not finite (loss {loss});"
                               f" stopped, {self._checkpoint_words()} (lower the learning rates, or use"
                               f" --on-nonfinite skip)")
        if bad is not None:
            self.state["skipped"] += 1
            self.optimizer.zero_grad(set_to_none=True)
        else:
            if config.outer_lr_schedule != "constant":
                for group in self.optimizer.param_groups:  # a pure function of t: resume-safe
                    group["lr"] = outer_lr_at(config, t)
            self.optimizer.step()
            broken = next((n for n, p in self.learner.named_parameters() if not bool(torch.isfinite(p).all())), None)
            if broken is not None:  # the step itself overflowed: the weights in memory are lost
                return TrainResult("nonfinite", self.state["iteration"], EXIT_NONFINITE,
                                   f"iteration {t}: the Adam step made {broken} non-finite; stopped, "
                                   f"{self._checkpoint_words()} (lower --outer-lr)")
        self.state["iteration"] = t
        record = {"iteration": t, "loss": _finite_or_none(loss), "accuracy": _finite_or_none(accuracy),
                  "skipped": self.state["skipped"], "step_skipped": skipped_now}
        if config.outer_lr_schedule != "constant":
            record["outer_lr"] = outer_lr_at(config, t)
        record.update(_recipe_record(config, t))
        self.progress.iteration(t, loss, accuracy, self.state["skipped"], time.perf_counter() - tick,
                                force=(t == config.iterations))
        if t % config.val_every == 0 or t == config.iterations:
            return self._validate_and_log(t, record)
        return self._log_and_checkpoint(t, record)

    def _meta_gradient(self, t: int) -> tuple[float, float]:
        """This process's share of the meta-batch of iteration ``t``, reduced over processes:
        the mean query loss and accuracy; the gradients summed into ``.grad``."""
        M, ctx = self.config.meta_batch, self.ctx
        share = distributed.share(M, ctx.world_size, ctx.rank)
        loss_sum = accuracy_sum = 0.0
        if len(share):
            first = (t - 1) * M
            batch = self.sampler.tasks(range(first + share.start, first + share.stop))
            batch = batch.to_torch(ctx.device, self.config.torch_dtype)
            batch = model_layout(batch) if self.channels_last else tuple(batch)
            weights = msl_weights(self.config, t)
            recipe = {} if weights is None else {"step_weights": weights}  # (the estimator engines take none)
            # only while annealing: every other run keeps its learner's own order (fomaml, the estimators)
            order = first_order_at(self.config, t) if self.config.first_order_iterations else None
            with _derivative_order(self.learner, order), _inner_batches(self.learner, self.config.inner_batch):
                loss_sum, accuracy_sum = self.engine.meta_gradient(*batch, scale=1.0 / M, **recipe)
        distributed.all_reduce_gradients(self.learner.parameters(), ctx)
        loss_sum, accuracy_sum = (float(v) for v in distributed.all_reduce_sum([loss_sum, accuracy_sum], ctx))
        return loss_sum / M, accuracy_sum / M

    def _validate_and_log(self, t: int, record: dict) -> TrainResult | None:
        scores = self._validate(t)
        if scores is None:  # a signal arrived during the pass: keep the iteration, validate on resume
            self.pending = record
            self.state["elapsed"] = self._elapsed()
            received = self._stop_requested() or 15
            return self._interrupted(f"stopped by {StopSignals.name(received)} during the validation after "
                                     f"iteration {t} (--resume runs that validation first)", received)
        record.update(scores, load_average=_load_average())  # logged, not part of the best checkpoint's scores
        return self._log_and_checkpoint(t, record)

    def _finish_pending(self) -> TrainResult | None:
        """On resume: the validation that a signal interrupted, then that iteration's log line."""
        record, self.pending = self.pending, None
        self.progress.line(f"resume: validating iteration {record['iteration']} (interrupted before)")
        return self._validate_and_log(record["iteration"], record)

    def _log_and_checkpoint(self, t: int, record: dict) -> TrainResult | None:
        config = self.config
        record["elapsed"] = self.state["elapsed"] = self._elapsed()
        if self.metrics is not None:
            self._require_folder()
            self.metrics.write(record)
        if self.on_iteration is not None:
            self.on_iteration(record)
        if t % config.checkpoint_every == 0 or t == config.iterations or t % config.val_every == 0:
            self._save_last(t)
        if config.snapshot_every and t % config.snapshot_every == 0:
            self._save_snapshot(t)
        return None

    # -- validation --------------------------------------------------------------------------------

    def _validate(self, iteration: int) -> dict | None:
        """Score the fixed validation tasks (shared across processes), update best.pt, and return the
        metrics fields; None if a signal stopped the pass before every task was scored."""
        ctx, n = self.ctx, len(self.val_tasks)
        share = distributed.share(n, ctx.world_size, ctx.rank)

        def report(done, total, seconds):
            self.progress.validation(iteration, done * ctx.world_size, total * ctx.world_size, seconds)

        def should_stop():
            return self.signals is not None and self.signals.received is not None

        accuracies, losses = score_tasks(self.engine, self.val_tasks, share, steps=self.config.test_steps,
                                         device=ctx.device, dtype=self.config.torch_dtype, should_stop=should_stop,
                                         on_progress=report, channels_last=self.channels_last)
        full = np.zeros(2 * n + 1)
        full[share.start:share.start + len(accuracies)] = accuracies
        full[n + share.start:n + share.start + len(losses)] = losses
        full[-1] = len(accuracies)
        reduced = distributed.all_reduce_sum(full, ctx).numpy()
        if int(reduced[-1]) < n:
            return None
        accuracy, ci95 = mean_ci95(reduced[:n])
        record = {"val_accuracy": accuracy, "val_ci95": ci95, "val_loss": float(np.mean(reduced[n:2 * n]))}
        best = self.state["best"]
        improved = best is None or accuracy > best["val_accuracy"]
        if improved:
            self.state["best"] = {"iteration": iteration, **record}
        if self.writer:
            if improved:
                checkpoint.save(self.out_dir / checkpoint.BEST, self._snapshot(iteration, with_optimizer=False),
                                guard=self._require_folder)
            self.progress.line(f"iter {iteration}: validation accuracy {100 * accuracy:.2f} % ± {100 * ci95:.2f} % "
                               f"({n} tasks)" + ("  [best]" if improved else ""))
        return record

    # -- files, signals --------------------------------------------------------------------------

    def _require_folder(self) -> None:
        """Raise :class:`_LostFolder` unless this process still owns the folder: called before every
        write into it (and by the atomic writers right before a file takes its name), so that after
        another run takes the folder with ``--overwrite`` this one writes nothing more."""
        if self.lock is not None and not self.lock.still_owned():
            raise _LostFolder()

    def _open_folder_files(self) -> None:
        if not self.writer:
            return
        self._require_folder()
        if self.clear_first:
            run_folder.clear(self.out_dir)
        # metrics first: an odd line refuses the resume before config.json is rewritten
        run_folder.trim_metrics(self.out_dir / run_folder.METRICS, self.state["iteration"], guard=self._require_folder)
        _io.atomic_write_json(self.out_dir / run_folder.CONFIG, {
            "config": self.config.to_dict(), "image_shape": list(self.image_shape),
            "world_size": self.ctx.world_size, "device": str(self.ctx.device),
            # the process's malloc settings (linmaml train's --allocator): they change the timings logged
            "allocator": str(allocator.current()),
            # where the data was read and with how many threads: evaluate, analyze, --resume reuse them
            **self.environment}, guard=self._require_folder)
        self._require_folder()
        self.metrics = run_folder.MetricsLog(self.out_dir / run_folder.METRICS)

    def _snapshot(self, iteration: int, with_optimizer: bool = True) -> dict:
        payload = {"format": "linmaml-train", "iteration": iteration, "config": self.config.to_dict(),
                   "image_shape": list(self.image_shape), "learner": self.learner.state_dict(),
                   **{k: v for k, v in self.state.items() if k != "iteration"}}
        if with_optimizer:
            payload["optimizer"] = self.optimizer.state_dict()
            payload["pending_validation"] = self.pending
        return payload

    def _save_last(self, iteration: int) -> None:
        """Write last.pt for ``iteration`` (rank 0); :class:`_LostFolder` if another run has taken the folder."""
        if not self.writer:
            return
        self._require_folder()
        self.metrics.sync()
        checkpoint.save_last(self.out_dir, self._snapshot(iteration), guard=self._require_folder)
        self.saved_iteration = iteration

    def _save_snapshot(self, iteration: int) -> None:
        """Keep this iteration's weights as ``snapshots/iter-<iteration>.pt`` (rank 0; weights only)."""
        if not self.writer:
            return
        self._require_folder()
        (self.out_dir / checkpoint.SNAPSHOTS).mkdir(exist_ok=True)
        checkpoint.save(checkpoint.snapshot_path(self.out_dir, iteration),
                        self._snapshot(iteration, with_optimizer=False), guard=self._require_folder)

    def _checkpoint_words(self) -> str:
        """What the folder holds to resume from, said truthfully."""
        if self.saved_iteration is None:
            return "no checkpoint was written before (there is no last.pt to resume)"
        return f"last.pt holds the weights after iteration {self.saved_iteration}"

    def _interrupted(self, message: str, received: int) -> TrainResult:
        self._save_last(self.state["iteration"])
        return TrainResult("interrupted", self.state["iteration"], 128 + received, message)

    def _stop_requested(self) -> int | None:
        """The signal number received by any process (a collective call when distributed), or None."""
        flag = float((self.signals.received if self.signals is not None else None) or 0)
        if self.ctx.distributed:
            flag = float(distributed.all_reduce_sum([flag], self.ctx).max())
        return int(flag) or None

    def _elapsed(self) -> float:
        return round(self.elapsed_before + time.perf_counter() - self.started, 3)


#: The fields of a ``metrics.jsonl`` record that follow the clock and the machine's load rather than
#: the computation: two runs of the same settings (one resumed, one not) agree on every other field.
CLOCK_FIELDS = ("elapsed", "load_average")


def _load_average() -> float | None:
    """The one-minute system load average (processes running or waiting for a core), None where the
    platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def train(options: Mapping | TrainConfig, out_dir, *, model: torch.nn.Module | None = None, resume: bool = False,
          overwrite: bool = False, device: str = "auto", data_root=None, splits: Mapping | None = None,
          progress: bool = True, stream=None, threads: int | None = None, on_iteration=None) -> TrainResult:
    """Meta-train and write the run into ``out_dir`` (see the module docstring).

    ``options``: a :class:`TrainConfig` or a dict of its fields (missing ones take the defaults, or
    with ``resume`` the saved run's values).

    ``model``: your own ``nn.Module`` mapping images ``(n, C, H, W)`` to logits ``(n, ways)``, used
    instead of the built-in ConvNet (``layers``/``hidden``/``pool`` are then unused); the learner of
    ``algo``/``transform``/``linnet`` is built around it (:mod:`linmaml.benchmarks.learners` states how
    it runs: BatchNorm with running statistics under the buffers policy "frozen" — batch statistics in
    every pass, running statistics left as they were — and Dropout drawn per task, under the vmapped
    strategies with ``options["randomness"]``, default "different").
    With ``algo="anil"``, ``options["head"]`` names the submodule that adapts (default: the last module
    with parameters). The model is trained in place (moved to the run's device and dtype). Its class
    name and parameter-shape fingerprint are recorded in ``config.json``; to resume, pass a freshly
    built model of the same architecture (its weights are replaced by the checkpoint's); a different
    one is refused with a ``ValueError`` naming ``model``. Episodes reach it in the default (contiguous)
    layout. ``splits`` may supply ``{"train": FewShotSplit, "val":
    FewShotSplit}`` instead of reading the benchmark from ``data_root``. Under torchrun the
    meta-batch is split across processes (:mod:`linmaml.benchmarks.distributed`); rank 0 writes.
    ``benchmark="arrays"``/``"folder"`` with ``options["data"]`` trains on your own data
    (:mod:`linmaml.benchmarks.data.own`; the path is recorded absolute, with ``data_name``); arrays in
    memory go in as ``splits=array_splits({"train": (x, y), "val": (x, y)}, name=...)`` with
    ``benchmark="arrays"`` (their name recorded as ``data_name``).
    ``config.json`` records the data root read (None with ``splits``) and the torch threads; a resumed
    run with ``data_root=None`` reads the recorded root (:mod:`linmaml.benchmarks.run_settings`).
    Bad settings raise ``ValueError``/``TypeError``; a folder owned by another run or holding an
    old run (without ``resume``/``overwrite``) raises ``FileExistsError``.

    ``on_iteration(record)``, if given, is called once per completed iteration, on rank 0 only (the
    process that writes; other ranks never call it), right after the record is appended to
    ``metrics.jsonl`` and before that iteration's checkpoint. ``record`` is that line as a dict:
    ``iteration``, ``loss`` and ``accuracy`` (the meta-batch's mean query loss and accuracy; None
    when not finite), ``skipped`` (non-finite steps skipped so far), ``step_skipped``, ``elapsed``
    (training seconds so far, validation included); ``outer_lr`` under a schedule; at a validation
    iteration (every ``val_every`` and the last) also ``val_accuracy``, ``val_ci95``, ``val_loss`` and
    ``load_average`` (the machine's one-minute load average then, None where the system has none: the
    seconds of a run are read beside it);
    ``msl_weights``/``first_order`` while those recipe options are on. A resumed run calls it from
    the first iteration it runs (after a validation a signal interrupted, first for that iteration).
    An exception raised by the hook propagates out of ``train``.
    :mod:`linmaml.benchmarks.loggers` has ready hooks: a CSV file and TensorBoard.
    """
    stream = sys.stderr if stream is None else stream
    given = options.to_dict() if isinstance(options, TrainConfig) else dict(options)
    if model is not None:  # the model's class and fingerprint, checked against any the settings record
        given = {**given, **check_model_record(given if given.get("model") is not None else None, model,
                                               where="these settings")}
    elif given.get("model") is not None:
        check_model_record(given, None, where="these settings")  # settings of a run on your own model
    if splits is not None and given.get("benchmark") in OWN_DATA and not given.get("data") \
            and given.get("data_name") is None and "train" in splits:
        given["data_name"] = getattr(splits["train"], "benchmark", None)  # arrays in memory: their name
    for key in ("data", "data_splits"):  # your own data: recorded absolute, so a resume finds it from anywhere
        if isinstance(given.get(key), (str, Path)) and str(given[key]).strip():
            given[key] = str(Path(given[key]).expanduser().resolve())
    if not resume:
        TrainConfig.from_dict(given)  # fail on bad settings before touching the folder
    if threads is not None:
        torch.set_num_threads(_validate.integer(threads, "threads", minimum=1, maximum=THREADS_MAX))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentNotADirectoryError("out", f"{out_dir} is not a folder")
    ctx = distributed.setup(device)
    # A folder this call creates is removed again if the run fails before writing anything into
    # it (bad data root, say), so bad input leaves no trace.
    created = ctx.is_writer and not out_dir.exists()
    lock, failed, config, payload_file = None, False, None, None
    try:
        payload, error = None, None
        if ctx.is_writer:
            try:
                lock, payload, payload_file = run_folder.open_folder(
                    out_dir, resume=resume, overwrite=overwrite,
                    report=lambda text: safe_write(stream, f"linmaml train: {text}\n"))
            except Exception as caught:  # noqa: BLE001 - re-raised on every rank just below
                error = caught
        distributed.raise_if_any_failed(error, ctx)
        payload = distributed.broadcast_object(payload, ctx)
        resumed = None
        if payload is not None:
            # opened as every run is (linmaml.benchmarks.run.Run): settings, model record, learner, weights
            resumed = Run.from_payload(payload, payload_file or out_dir / checkpoint.LAST, model)
            if model is not None:  # the same class, perhaps imported from another module: keep the recorded name
                given = {**given, "model": payload["config"]["model"]}
        config = resume_config(payload["config"], given) if payload is not None else TrainConfig.from_dict(given)
        if config.meta_batch < ctx.world_size:
            raise ArgumentError("meta_batch", f"{config.meta_batch} tasks cannot be shared by {ctx.world_size} processes")
        root_read = None
        if splits is None:
            if payload is not None and data_root is None:  # a resumed run reads where it read before
                data_root = run_settings.data_root_for(None, out_dir)
            splits = datasets.load_splits(config.benchmark, ("train", "val"), data_root, **data_options(config))
            if config.benchmark not in OWN_DATA + datasets.GENERATED:  # own data: read from config.data; synthetic: made
                root_read = str(resolve_data_root(data_root).resolve())
        trainer = Trainer(config, out_dir, splits, ctx, lock=lock, payload=payload, overwrite=overwrite,
                          stream=stream, progress=progress, on_iteration=on_iteration, model=model,
                          payload_file=payload_file, resumed=resumed)
        trainer.environment["data_root"] = root_read
        with StopSignals() as signals:
            return trainer.run(signals)
    except BaseException as caught:
        failed = True
        if is_out_of_memory(caught):
            raise out_of_memory(config) from caught
        raise
    finally:
        # a folder another run has taken (--overwrite) is that run's: nothing of it is tidied here
        owned = lock is None or lock.still_owned()
        if lock is not None:
            if failed and owned:
                _discard_unstarted(out_dir)
            lock.release()
        if failed and created and owned:
            run_folder.remove_if_unused(out_dir)
        distributed.teardown(ctx, synchronize=not failed)


def _recipe_record(config: TrainConfig, t: int) -> dict:
    """The recipe options in effect at iteration ``t``, for metrics.jsonl (nothing when they are off)."""
    record = {}
    if config.msl_iterations:
        record["msl_weights"] = msl_weights(config, t)
    if config.first_order_iterations:
        record["first_order"] = first_order_at(config, t)
    return record


class _derivative_order:
    """Within: the learner's inner loop differentiated to first order iff ``first_order`` (the learner
    reads its ``first_order`` at every adaptation); its own setting is restored after. None: no change."""

    def __init__(self, learner, first_order: bool):
        self.learner, self.first_order = learner, first_order

    def __enter__(self):
        self.saved = None if self.first_order is None else getattr(self.learner, "first_order", None)
        if self.saved is not None:
            self.learner.first_order = self.first_order

    def __exit__(self, *exc):
        if self.saved is not None:
            self.learner.first_order = self.saved


class _inner_batches:
    """Within: the learner's training inner steps take minibatches of ``batch`` support examples
    (``learner.inner_batch``, read at every adaptation); None: no change. Validation runs outside,
    on the whole support set."""

    def __init__(self, learner, batch: int | None):
        self.learner, self.batch = learner, batch

    def __enter__(self):
        if self.batch is not None:
            self.learner.inner_batch = self.batch

    def __exit__(self, *exc):
        if self.batch is not None:
            self.learner.inner_batch = None


#: What a run out of memory is told when it ran out before its settings were known.
OUT_OF_MEMORY = "out of memory before training began (while reading the data or the checkpoint)"


def out_of_memory(config: TrainConfig | None) -> MemoryError:
    """The ``MemoryError`` a run out of memory raises: it names the settings in play that size the model
    and an iteration (``.settings``, a list of ``(name, value)``; the CLI prints them as flags), not a
    guess at which one was the cause."""
    if config is None:
        error = MemoryError(OUT_OF_MEMORY)
        error.settings = []
        return error
    names = ["meta_batch", "tasks_per_chunk", "query", "test_query", "val_tasks", "steps", "test_steps", "ways",
             "shots"]
    if config.model is None:
        names += ["layers", "hidden"]
    if config.linnet:
        names += ["linnet", "linnet_width"]
    names += ["dtype", "batching"]
    settings = [(name, getattr(config, name)) for name in names]
    error = MemoryError("out of memory: the model and an iteration with these settings need more memory than is "
                        "free (" + ", ".join(f"{n}={v}" for n, v in settings) + "); lower the ones that size your "
                        "run, or use batching='loop'")
    error.settings = settings
    return error


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: Python's or numpy's ``MemoryError``, torch's CUDA
    ``OutOfMemoryError``, or the ``RuntimeError`` of torch's CPU allocator (which has no class of its own)."""
    if isinstance(error, MemoryError):
        return True
    out_of_memory = getattr(torch, "OutOfMemoryError", None)
    if out_of_memory is not None and isinstance(error, out_of_memory):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def _discard_unstarted(out_dir: Path) -> None:
    """After a failed start, remove the ``config.json`` and empty ``metrics.jsonl`` of a run that never
    completed an iteration (no checkpoint, no metrics), so that the folder holds no half-made run."""
    if any((out_dir / name).exists() for name in (checkpoint.LAST, checkpoint.LAST_PREV, checkpoint.BEST)):
        return
    metrics = out_dir / run_folder.METRICS
    try:
        if metrics.exists() and metrics.stat().st_size > 0:
            return
        metrics.unlink(missing_ok=True)
        (out_dir / run_folder.CONFIG).unlink(missing_ok=True)
    except OSError:
        pass  # best effort: never mask the error that made the run fail
