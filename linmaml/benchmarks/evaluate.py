"""Few-shot evaluation of a training checkpoint: adapt on each task's support set, score its query
set, report mean ± 95% CI (:mod:`linmaml.benchmarks.scoring` holds the protocol).

The tasks are a fixed, numbered set (:func:`linmaml.benchmarks.episodes.evaluation_tasks`, 600 by
default, task seed 0), so every run and every checkpoint is scored on the same tasks, with 15
query examples per class unless told otherwise. The scoring runs through the run's own engine
strategy (``batching``/``tasks_per_chunk`` of its config), which changes nothing beyond rounding.
"""
from __future__ import annotations

import sys
import time

from linmaml import _validate
from linmaml.benchmarks import distributed
from linmaml.benchmarks.progress import TaskProgress, safe_write
from linmaml.benchmarks.run import SPLITS, Run
from linmaml.benchmarks.scoring import score_tasks, steps_note, summarize
from linmaml.errors import ArgumentError

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(path, *, tasks: int = 600, steps: int | None = None, query: int = 15, split: str = "test",
                        task_seed: int = 0, data_root=None, device: str = "auto", splits=None, model=None,
                        progress: bool = False, stream=None) -> dict:
    """Score a training checkpoint on the fixed evaluation tasks of ``split``.

    ``path``: a ``.pt`` written by ``linmaml train`` or a training folder (its ``best.pt``, else its
    newest ``last.pt``: :class:`~linmaml.benchmarks.run.Run` states the rule).
    ``steps``: inner steps at test time (default: the run's ``test_steps``; 0 scores before adapting). ``splits`` may supply
    ``{split: FewShotSplit}`` directly instead of reading the benchmark from ``data_root``.
    ``model``: for a run on your own model, a module of the same architecture (as for
    :func:`~linmaml.benchmarks.loading.load_learner`). ``progress``: a status line with the tasks
    scored and an ETA on ``stream`` (default stderr).
    Returns ``{"accuracy", "ci95", "loss", "loss_ci95", "tasks", "nonfinite_tasks", "checkpoint",
    "iteration", "settings", "seconds"}``.
    """
    tasks = _validate.integer(tasks, "tasks", minimum=2)
    query = _validate.integer(query, "query", minimum=1)
    task_seed = _validate.integer(task_seed, "task_seed", minimum=0)
    if split not in SPLITS:  # before the checkpoint is read
        raise ArgumentError("split", f"expected train, val or test, got {split!r}")
    run = Run.open(path, model)
    config, learner = run.config, run.learner
    # steps=0 scores the trained start before any adaptation: the baseline adaptation improves on
    steps = config.test_steps if steps is None else _validate.integer(steps, "steps", minimum=0)
    dev = distributed.resolve_device(device)
    task_set = run.tasks(split, count=tasks, query=query, seed=task_seed, data_root=data_root, splits=splits)
    run.to(dev)
    note = steps_note(learner, steps, config.steps)
    if note is not None and progress:  # once, instead of the library's warning
        safe_write(sys.stderr if stream is None else stream, f"linmaml evaluate: note: evaluation {note}\n")
    start = time.perf_counter()
    status = TaskProgress(f"evaluate {split}", sys.stderr if stream is None else stream, enabled=progress)
    accuracies, losses = score_tasks(run.engine(), task_set, steps=steps, device=dev,
                                     dtype=config.torch_dtype, on_progress=status.on_progress,
                                     channels_last=config.model is None)
    result = summarize(accuracies, losses)
    result.update({
        "checkpoint": str(run.file), "iteration": run.iteration,
        "settings": {"benchmark": config.benchmark, "split": split, "ways": config.ways, "shots": config.shots,
                     "class_split": config.class_split,
                     "query": query, "steps": steps, "task_seed": task_seed, "algo": config.algo,
                     "transform": config.transform, "linnet": config.linnet, "layers": config.layers,
                     "hidden": config.hidden, "device": str(dev)},
        "seconds": time.perf_counter() - start})
    return result
