"""Meta-training on a few-shot benchmark: Adam outer loop, periodic validation, exact resume.

``train(options, out_dir)`` runs iterations ``1..iterations``. Iteration ``t``:

1. seeds torch with :func:`iteration_seed` ``(seed, t)`` and takes the training tasks numbered
   ``(t−1)·M … t·M−1`` (:class:`~linmaml.benchmarks.episodes.EpisodeSampler`): nothing depends on a
   running random stream, so a resumed run draws exactly what an uninterrupted one would;
2. for each task, adapts on the support set and backpropagates ``query loss / M``
   (:func:`make_meta_step`: by default the inner loops of 4 tasks vmapped together and the query
   sets one task at a time; second order for MAML, exact), summing over processes when distributed;
3. checks the meta-loss and every gradient for non-finite values (stop, or skip the step with
   ``on_nonfinite="skip"``) and takes one Adam step;
4. appends one JSON line to ``metrics.jsonl``; every ``val_every`` iterations scores the fixed
   validation tasks and keeps the best weights in ``best.pt``; every ``checkpoint_every``
   iterations (and at the end, on SIGINT/SIGTERM, and before stopping on a non-finite value)
   writes ``last.pt`` (weights, Adam state, counters).

Resuming loads ``last.pt`` (or ``last.prev.pt`` if the newer one is damaged) and continues with
``t + 1``; the final weights equal an uninterrupted run's bit for bit on CPU (same thread count).

The output folder (``out_dir``) holds ``config.json``, ``metrics.jsonl``, ``last.pt``,
``last.prev.pt``, ``best.pt`` and, while a run owns it, ``run.lock``.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from linmaml import _io, _validate
from linmaml.benchmarks import checkpoint, distributed, episodes
from linmaml.benchmarks.evaluate import mean_ci95, score_tasks
from linmaml.benchmarks.learners import ALGOS, POOLS, TRANSFORMS, build_learner
from linmaml.benchmarks.models import to_channels_last
from linmaml.meta.batched import MetaGradient

BENCHMARKS = ("omniglot", "cifar-fs", "mini-imagenet")
DEFAULT_FILTERS = {"omniglot": 64, "cifar-fs": 32, "mini-imagenet": 32}
#: Omniglot's usual MAML backbone down-samples with stride-2 convolutions (Finn et al. 2017), the
#: others with 2x2 max-pooling; the stride version costs about a quarter of the arithmetic.
DEFAULT_POOL = {"omniglot": "stride", "cifar-fs": "max", "mini-imagenet": "max"}
ON_NONFINITE = ("stop", "skip")
#: How a meta-batch's tasks are computed (:func:`make_meta_step`): one at a time; inner loops vmapped
#: in chunks with the queries one at a time; or chunks wholly vmapped (a GPU's choice).
BATCHING = ("loop", "split", "vmap")
DTYPES = ("float32", "float64")
METRICS = "metrics.jsonl"
CONFIG = "config.json"
#: Files a run writes into its folder; ``overwrite`` removes exactly these.
RUN_FILES = (METRICS, CONFIG, checkpoint.LAST, checkpoint.LAST_PREV, checkpoint.BEST)
#: Exit status of a run stopped by a non-finite meta-loss or gradient.
EXIT_NONFINITE = 3
EXIT_LOST_LOCK = 4


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Defaults: 5-way 1-shot second-order MAML on Omniglot with
    the 4-block CNN, 1 inner step of 0.4 in training and 3 at test, meta-batch 16, Adam 1e-3,
    4,000 iterations (chosen to reach 95% test accuracy on Omniglot within an hour of CPU).
    ``hidden=None`` and ``pool=None`` take the benchmark's usual values (64 filters and stride-2
    convolutions for Omniglot; 32 filters and max-pooling otherwise).

    ``query`` is the number of query examples per class in *training* tasks (default 5: the query
    set is most of a task's cost, and on Omniglot 5 per class learns about as well per iteration as
    15 at a third of the time); validation and test tasks use ``test_query`` (15, the usual protocol).
    """

    benchmark: str = "omniglot"
    ways: int = 5
    shots: int = 1
    query: int = 5
    test_query: int = 15
    algo: str = "maml"
    transform: str = "none"
    linnet: int = 0
    linnet_width: int | None = None
    layers: int = 4
    hidden: int | None = None
    pool: str | None = None
    steps: int = 1
    test_steps: int = 3
    inner_lr: float = 0.4
    outer_lr: float = 1e-3
    meta_batch: int = 16
    iterations: int = 4000
    val_every: int = 250
    val_tasks: int = 200
    checkpoint_every: int = 50
    seed: int = 0
    dtype: str = "float32"
    on_nonfinite: str = "stop"
    batching: str = "split"
    tasks_per_chunk: int = 4
    compile: bool = False

    #: Settings that change the sequence of weights; a resumed run must keep them (the last three
    #: only through floating-point rounding, but a resumed run is bitwise the uninterrupted one).
    IDENTITY = ("benchmark", "ways", "shots", "query", "algo", "transform", "linnet", "linnet_width", "layers",
                "hidden", "pool", "steps", "inner_lr", "outer_lr", "meta_batch", "seed", "dtype",
                "batching", "tasks_per_chunk", "compile")

    def __post_init__(self):
        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")

        choice("benchmark", BENCHMARKS)
        choice("algo", ALGOS)
        choice("transform", TRANSFORMS)
        if self.pool is None:
            object.__setattr__(self, "pool", DEFAULT_POOL.get(self.benchmark, "max"))
        choice("pool", POOLS)
        choice("dtype", DTYPES)
        choice("on_nonfinite", ON_NONFINITE)
        choice("batching", BATCHING)
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile: expected True or False, got {self.compile!r}")
        for name, minimum in (("ways", 2), ("shots", 1), ("query", 1), ("test_query", 1), ("linnet", 0),
                              ("tasks_per_chunk", 1), ("layers", 1), ("steps", 1), ("test_steps", 1), ("meta_batch", 1),
                              ("iterations", 1), ("val_every", 1), ("val_tasks", 2), ("checkpoint_every", 1),
                              ("seed", 0)):
            _validate.integer(getattr(self, name), name, minimum=minimum)
        if self.hidden is None:
            object.__setattr__(self, "hidden", DEFAULT_FILTERS[self.benchmark])
        _validate.integer(self.hidden, "hidden", minimum=1)
        if self.linnet_width is not None:
            _validate.integer(self.linnet_width, "linnet_width", minimum=self.ways)
        # The inner rate may be 0 or negative (ablations); the outer one must be a positive step.
        _validate.finite_number(self.inner_lr, "inner_lr")
        _validate.finite_number(self.outer_lr, "outer_lr", positive=True)
        object.__setattr__(self, "inner_lr", float(self.inner_lr))
        object.__setattr__(self, "outer_lr", float(self.outer_lr))

    @classmethod
    def from_dict(cls, values: Mapping) -> "TrainConfig":
        """A config from a dict of fields; unknown keys are an error (``TypeError`` naming them)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise TypeError(f"{unknown[0]}: not a training setting (settings: {', '.join(sorted(fields))})")
        return cls(**dict(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def resume_config(saved: Mapping, given: Mapping) -> TrainConfig:
    """The config of a resumed run: the saved one, with the settings that do not change the weights
    (``iterations``, validation, checkpointing, ``on_nonfinite``) overridable. A given identity
    setting that differs from the saved one raises ``ValueError`` naming it."""
    saved = TrainConfig.from_dict(saved)
    given_config = dict(given)
    TrainConfig.from_dict({**saved.to_dict(), **given_config})  # validates the given values
    for name in TrainConfig.IDENTITY:
        if name in given_config and given_config[name] is not None and given_config[name] != getattr(saved, name):
            raise ValueError(f"{name}: the run being resumed used {getattr(saved, name)!r}, got {given_config[name]!r}"
                             f" (a resumed run keeps its settings; use a new --out folder to change them)")
    overrides = {k: v for k, v in given_config.items() if k not in TrainConfig.IDENTITY}
    return TrainConfig.from_dict({**saved.to_dict(), **overrides})


def iteration_seed(seed: int, iteration: int) -> int:
    """The torch seed of iteration ``iteration`` (a pure function of both, 63 bits)."""
    state = np.random.SeedSequence([int(seed), 0x6C6D, int(iteration)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def build_from_config(config: TrainConfig, image_shape) -> torch.nn.Module:
    """A fresh learner for ``config`` and images of ``image_shape = (C, H, W)`` (float32, CPU)."""
    return build_learner(image_shape=image_shape, ways=config.ways, algo=config.algo, transform=config.transform,
                         linnet=config.linnet, linnet_width=config.linnet_width, layers=config.layers,
                         hidden=config.hidden, pool=config.pool, inner_lr=config.inner_lr, steps=config.steps)


def task_loss(learner, x_support, y_support, x_query, y_query, steps: int | None = None):
    """One task: adapt on the support set, return ``(query cross-entropy, query accuracy)``.

    Shapes ``x (n, C, H, W)``, ``y (n,)``. The loss is differentiable with respect to every
    parameter of ``learner`` (through the inner loop: second order unless first-order). Kept as
    one function of tensors so that a meta-batch can be batched over tasks.
    """
    fast = learner.adapt(x_support, y_support, F.cross_entropy, steps=steps)
    logits = learner(x_query, params=fast)
    loss = F.cross_entropy(logits, y_query)
    accuracy = (logits.detach().argmax(dim=1) == y_query).double().mean()
    return loss, accuracy


def make_meta_step(learner, config: TrainConfig):
    """The training step for ``config``: ``step(batch, scale) -> (Σ_i loss_i, Σ_i accuracy_i)``,
    accumulating ``scale · Σ_i ∇ query-loss_i`` into the learner's ``.grad`` (batch as in
    :func:`meta_gradient`).

    ``config.batching``: "loop" is :func:`meta_gradient` (one task at a time); "split" vmaps the inner
    loops of ``tasks_per_chunk`` tasks at a time and scores their query sets one task at a time,
    "vmap" vmaps whole chunks (:class:`linmaml.meta.batched.MetaGradient`); ``config.compile``
    runs them through ``torch.compile``. Every choice gives the same meta-gradient up to rounding
    (tests/benchmarks/test_bench_train.py). On a 2-core CPU "split" is the fastest, with less peak
    memory than a plain loop over tasks, hence the default; "loop" needs the least memory; "vmap"
    (and ``compile``) are for a GPU. ``linmaml bench`` measures them side by side.
    Image episodes are first laid out channels-last (:func:`models.to_channels_last`), which the
    CNN runs faster than the default layout (about 1.3× for a meta-iteration here), with the same values.
    """
    if config.batching == "loop" and not config.compile:
        step = (lambda xs, ys, xq, yq, scale: meta_gradient(learner, (xs, ys, xq, yq), scale))
    else:
        chunk = 1 if config.batching == "loop" else config.tasks_per_chunk
        step = MetaGradient(learner, F.cross_entropy, tasks_per_chunk=chunk,
                            query_per_task=config.batching == "split", compile=config.compile)

    def run(batch, scale: float) -> tuple[float, float]:
        xs, ys, xq, yq = batch
        if xs.ndim == 5:  # (M, n, C, H, W) images
            xs, xq = to_channels_last(xs), to_channels_last(xq)
        return step(xs, ys, xq, yq, scale=scale)

    return run


def meta_gradient(learner, batch, scale: float) -> tuple[float, float]:
    """Accumulate ``scale · Σ_i ∇ query-loss_i`` over the tasks of ``batch`` into ``.grad``.

    ``batch = (x_support (m, N·K, C, H, W), y_support (m, N·K), x_query, y_query)``. Each task is
    backpropagated as soon as it is computed, so memory holds one task's graph at a time. Returns
    ``(Σ_i loss_i, Σ_i accuracy_i)`` as floats (unscaled sums).
    """
    xs, ys, xq, yq = batch
    total_loss = torch.zeros((), dtype=torch.float64, device=xs.device)
    total_accuracy = torch.zeros((), dtype=torch.float64, device=xs.device)
    for i in range(xs.shape[0]):
        loss, accuracy = task_loss(learner, xs[i], ys[i], xq[i], yq[i])
        (loss * scale).backward()
        # Accumulated on the device: no host synchronisation per task.
        total_loss += loss.detach()
        total_accuracy += accuracy
    return float(total_loss), float(total_accuracy)


def first_nonfinite(named_parameters) -> str | None:
    """The name of the first parameter whose gradient has a NaN or infinity (None if all finite)."""
    for name, p in named_parameters:
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return name
    return None


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` ended with. ``status``: ``"done"``, ``"interrupted"`` (a signal),
    ``"nonfinite"`` or ``"lost-lock"``; ``exit_code`` is what the CLI exits with."""

    status: str
    iteration: int
    exit_code: int
    message: str = ""
    best: dict | None = None
    skipped: int = 0
    seconds: float = 0.0
    out_dir: str = ""
    writer: bool = True  # False on the ranks > 0 of a distributed run, which print nothing


class _Signals:
    """SIGINT/SIGTERM become a flag checked between iterations; the first one restores the previous
    handlers, so a second signal acts at once (as it would without us)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        self._restore()

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()


class _Progress:
    """One status line on stderr: rewritten in place on a terminal, a line every ``every`` seconds
    otherwise (logs stay short). Running accuracy is the mean over the last 100 iterations."""

    def __init__(self, total: int, stream, enabled: bool, every: float = 30.0):
        self.total, self.stream, self.enabled, self.every = total, stream, enabled, every
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.window = collections.deque(maxlen=100)
        self.last_print = 0.0
        self.started = time.perf_counter()
        self.first_iteration = None

    def update(self, iteration: int, loss: float, accuracy: float, skipped: int, force: bool = False):
        self.window.append(accuracy)
        if self.first_iteration is None:
            self.first_iteration = iteration
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last_print < (0.2 if self.tty else self.every):
            return
        self.last_print = now
        done = iteration - self.first_iteration + 1
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - iteration) / rate if rate > 0 else float("inf")
        text = (f"iter {iteration}/{self.total}  loss {loss:.4f}  acc {np.mean(self.window):.3f} (last "
                f"{len(self.window)})  {1 / rate:.2f} s/it  eta {eta / 60:.1f} min"
                + (f"  skipped {skipped}" if skipped else ""))
        self._emit(text)

    def line(self, text: str):
        if self.enabled:
            self._emit(text, newline=True)

    def _emit(self, text: str, newline: bool = False):
        if self.tty and not newline:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


def _trim_metrics(path: Path, iteration: int) -> None:
    """Keep the metrics of iterations ``<= iteration`` (a resumed run re-runs the later ones) and
    drop a torn last line left by a kill; rewritten atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and int(record.get("iteration", 0)) <= iteration:
            kept.append(line)
    _io.atomic_write_text(path, "".join(line + "\n" for line in kept))


def _prepare_folder(out_dir: Path, resume: bool, overwrite: bool, report) -> dict | None:
    """Checks on the output folder (rank 0, lock held): returns the checkpoint to resume or None."""
    # Temporary files of a killed writer (linmaml._io names them ".<target>.<random>"): we hold the
    # lock, so no live process is writing them.
    for name in RUN_FILES:
        for stale in out_dir.glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
    if resume:
        payload = checkpoint.load_latest(out_dir, report=report)
        if payload is None:
            report(f"resume: no checkpoint in {out_dir} yet; starting from iteration 0")
        return payload
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"out: {out_dir} already holds a run ({', '.join(existing)}); use --resume to continue"
                              f" it or --overwrite to start afresh")
    return None


def train(options: Mapping | TrainConfig, out_dir, *, resume: bool = False, overwrite: bool = False,
          device: str = "auto", data_root=None, splits: Mapping | None = None, progress: bool = True,
          stream=None, threads: int | None = None, on_iteration=None) -> TrainResult:
    """Meta-train and write the run into ``out_dir`` (see the module docstring).

    ``options``: a :class:`TrainConfig` or a dict of its fields (missing ones take the defaults, or
    with ``resume`` the saved run's values). ``splits`` may supply ``{"train": FewShotSplit, "val":
    FewShotSplit}`` instead of reading the benchmark from ``data_root``. Under torchrun the
    meta-batch is split across processes (:mod:`linmaml.benchmarks.distributed`); rank 0 writes.
    Bad settings raise ``ValueError``/``TypeError``; a folder owned by another run or holding an
    old run (without ``resume``/``overwrite``) raises ``FileExistsError``. ``on_iteration(record)``,
    if given, is called on rank 0 with each iteration's metrics record (a dict) after it is logged.
    """
    stream = sys.stderr if stream is None else stream
    given = options.to_dict() if isinstance(options, TrainConfig) else dict(options)
    if not resume:
        TrainConfig.from_dict(given)  # fail on bad settings before touching the folder
    if threads is not None:
        torch.set_num_threads(_validate.integer(threads, "threads", minimum=1))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out: {out_dir} is not a folder")
    ctx = distributed.setup(device)
    # A folder this call creates is removed again if the run fails before writing anything into
    # it (bad data root, say), so bad input leaves no trace.
    created = ctx.is_writer and not out_dir.exists()
    lock, failed = None, False
    try:
        payload, error = None, None
        if ctx.is_writer:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                if not os.access(out_dir, os.W_OK):
                    raise PermissionError(f"out: {out_dir} is not writable")
                lock = checkpoint.RunLock(out_dir).acquire(overwrite=overwrite)
                payload = _prepare_folder(out_dir, resume, overwrite,
                                          report=lambda text: print(f"linmaml train: {text}", file=stream, flush=True))
            except Exception as caught:  # noqa: BLE001 - re-raised on every rank just below
                error = caught
        distributed.raise_if_any_failed(error, ctx)
        payload = distributed.broadcast_object(payload, ctx)
        config = resume_config(payload["config"], given) if payload is not None else TrainConfig.from_dict(given)
        if config.meta_batch < ctx.world_size:
            raise ValueError(f"meta_batch: {config.meta_batch} tasks cannot be shared by {ctx.world_size} processes")
        with _Signals() as signals:
            return _run(config, payload, out_dir, ctx, lock, signals, overwrite=overwrite, data_root=data_root,
                        splits=splits, progress=progress and ctx.is_writer, stream=stream,
                        on_iteration=on_iteration if ctx.is_writer else None)
    except BaseException:
        failed = True
        raise
    finally:
        if lock is not None:
            lock.release()
        if failed and created:
            _remove_if_unused(out_dir)
        distributed.teardown(ctx)


def _remove_if_unused(out_dir: Path) -> None:
    """Remove a run folder that holds nothing but (at most) its lock file."""
    try:
        entries = list(out_dir.iterdir())
        if all(entry.name == checkpoint.LOCK for entry in entries):
            for entry in entries:
                entry.unlink()
            out_dir.rmdir()
    except OSError:
        pass  # best effort: never mask the error that made the run fail


def _run(config: TrainConfig, payload, out_dir: Path, ctx, lock, signals, *, overwrite, data_root, splits,
         progress, stream, on_iteration) -> TrainResult:
    if splits is None:
        from linmaml.benchmarks.data import load_splits

        splits = load_splits(config.benchmark, ("train", "val"), data_root)
    for name in ("train", "val"):
        if name not in splits:
            raise ValueError(f"splits: expected a {name!r} split")
    sampler = episodes.EpisodeSampler(splits["train"], config.ways, config.shots, config.query, seed=config.seed)
    val_tasks = episodes.evaluation_tasks(splits["val"], config.ways, config.shots, config.test_query,
                                          count=config.val_tasks, seed=0)
    image_shape = tuple(int(v) for v in splits["train"].image_shape)
    if splits["val"].image_shape != splits["train"].image_shape:
        raise ValueError("splits: the train and val images differ in shape")

    dev, dtype = ctx.device, config.torch_dtype
    torch.manual_seed(config.seed)
    learner = build_from_config(config, image_shape).to(device=dev, dtype=dtype)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.outer_lr)
    state = {"iteration": 0, "skipped": 0, "elapsed": 0.0, "best": None}
    if payload is not None:
        if tuple(payload["image_shape"]) != image_shape:
            raise ValueError(f"benchmark: the checkpoint's images are {tuple(payload['image_shape'])}, the data's"
                             f" {image_shape}")
        learner.load_state_dict(payload["learner"])
        optimizer.load_state_dict(payload["optimizer"])
        for key in state:
            state[key] = payload[key]

    writer = ctx.is_writer
    metrics_path = out_dir / METRICS
    if writer:
        if payload is None and overwrite:
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
        _io.atomic_write_json(out_dir / CONFIG, {"config": config.to_dict(), "image_shape": list(image_shape),
                                                 "world_size": ctx.world_size, "device": str(dev)})
        _trim_metrics(metrics_path, state["iteration"])
    metrics = open(metrics_path, "a", encoding="utf-8") if writer else None
    bar = _Progress(config.iterations, stream, progress)
    names = [name for name, p in learner.named_parameters() if p.requires_grad]
    meta_step = make_meta_step(learner, config)

    def snapshot(iteration: int, with_optimizer: bool = True) -> dict:
        payload = {"format": "linmaml-train", "iteration": iteration, "config": config.to_dict(),
                   "image_shape": list(image_shape), "learner": learner.state_dict(),
                   **{k: v for k, v in state.items() if k != "iteration"}}
        if with_optimizer:
            payload["optimizer"] = optimizer.state_dict()
        return payload

    def save_last(iteration: int) -> bool:
        if not writer:
            return True
        if lock is not None and not lock.still_owned():
            return False
        metrics.flush()
        os.fsync(metrics.fileno())
        checkpoint.save_last(out_dir, snapshot(iteration))
        return True

    def validate(iteration: int) -> dict:
        """Score the fixed validation tasks (shared across processes); update best.pt; return the
        metrics fields."""
        share = distributed.share(len(val_tasks), ctx.world_size, ctx.rank)
        accuracies, losses = score_tasks(learner, val_tasks, share, steps=config.test_steps, device=dev, dtype=dtype)
        full = np.zeros(2 * len(val_tasks))
        full[share.start:share.stop] = accuracies
        full[len(val_tasks) + share.start:len(val_tasks) + share.stop] = losses
        reduced = distributed.all_reduce_sum(full, ctx).numpy()
        accuracy, ci95 = mean_ci95(reduced[:len(val_tasks)])
        record = {"val_accuracy": accuracy, "val_ci95": ci95, "val_loss": float(np.mean(reduced[len(val_tasks):]))}
        improved = state["best"] is None or accuracy > state["best"]["val_accuracy"]
        if improved:
            state["best"] = {"iteration": iteration, **record}
        if writer:
            if improved:
                checkpoint.save(out_dir / checkpoint.BEST, snapshot(iteration, with_optimizer=False))
            bar.line(f"iter {iteration}: validation accuracy {accuracy:.4f} ± {ci95:.4f} ({len(val_tasks)} tasks)"
                     + ("  [best]" if improved else ""))
        return record

    def log(record: dict) -> None:
        if writer:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    def stop_requested() -> int | None:
        flag = float(signals.received or 0)
        if ctx.distributed:
            flag = float(distributed.all_reduce_sum([flag], ctx).max())
        return int(flag) or None

    start_iteration = state["iteration"]
    started = time.perf_counter()
    elapsed_before = state["elapsed"]
    result = None
    try:
        learner.train()
        M = config.meta_batch
        share = distributed.share(M, ctx.world_size, ctx.rank)
        for t in range(start_iteration + 1, config.iterations + 1):
            received = stop_requested()
            if received:
                result = TrainResult("interrupted", t - 1, 128 + received,
                                     f"stopped by {signal.Signals(received).name} after iteration {t - 1}")
                break
            torch.manual_seed(iteration_seed(config.seed, t))
            optimizer.zero_grad(set_to_none=True)
            first = (t - 1) * M
            batch = sampler.tasks(range(first + share.start, first + share.stop)).to_torch(dev, dtype) \
                if len(share) else None
            loss_sum, accuracy_sum = meta_step(batch, 1.0 / M) if batch is not None else (0.0, 0.0)
            distributed.all_reduce_gradients(learner.parameters(), ctx)
            loss_sum, accuracy_sum = (float(v) for v in distributed.all_reduce_sum([loss_sum, accuracy_sum], ctx))
            loss, accuracy = loss_sum / M, accuracy_sum / M
            bad = None if math.isfinite(loss) else "the meta-loss"
            bad_param = first_nonfinite(learner.named_parameters())
            if bad_param is not None:
                bad = f"the gradient of {bad_param}" if bad is None else f"{bad} and the gradient of {bad_param}"
            skipped_now = False
            if bad is not None:
                if config.on_nonfinite == "stop":
                    state["iteration"] = t - 1
                    state["elapsed"] = elapsed_before + time.perf_counter() - started
                    save_last(t - 1)
                    result = TrainResult("nonfinite", t - 1, EXIT_NONFINITE,
                                         f"iteration {t}: {bad} is not finite (loss {loss}); stopped, last.pt holds"
                                         f" the weights after iteration {t - 1} (lower the learning rates, or use"
                                         f" --on-nonfinite skip)")
                    break
                state["skipped"] += 1
                skipped_now = True
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
                broken = next((n for n, p in learner.named_parameters() if not bool(torch.isfinite(p).all())), None)
                if broken is not None:
                    # The step itself overflowed: the state in memory is lost, last.pt is the last good one.
                    result = TrainResult("nonfinite", state["iteration"], EXIT_NONFINITE,
                                         f"iteration {t}: the Adam step made {broken} non-finite; stopped, last.pt"
                                         f" holds the weights after iteration {state['iteration']}")
                    break
            state["iteration"] = t
            record = {"iteration": t, "loss": _finite_or_none(loss), "accuracy": _finite_or_none(accuracy),
                      "skipped": state["skipped"], "step_skipped": skipped_now}
            bar.update(t, loss, accuracy, state["skipped"], force=(t == config.iterations))
            if t % config.val_every == 0 or t == config.iterations:
                record.update(validate(t))
            record["elapsed"] = round(elapsed_before + time.perf_counter() - started, 3)
            state["elapsed"] = record["elapsed"]
            log(record)
            if on_iteration is not None:
                on_iteration(record)
            if t % config.checkpoint_every == 0 or t == config.iterations or t % config.val_every == 0:
                if not save_last(t):
                    result = TrainResult("lost-lock", t, EXIT_LOST_LOCK,
                                         f"out: another run took over {out_dir} (--overwrite); stopping without"
                                         f" writing")
                    break
        else:
            result = TrainResult("done", config.iterations, 0, f"finished {config.iterations} iterations")
            if start_iteration >= config.iterations:
                result.message = f"nothing to do: the run already has {start_iteration} iterations"
        if result.status == "interrupted":
            save_last(state["iteration"])
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    result.best = state["best"]
    result.skipped = state["skipped"]
    result.seconds = time.perf_counter() - started
    result.out_dir = str(out_dir)
    result.writer = writer
    return result
