"""Real results: on real Omniglot (5-way 1-shot) with a CNN too shallow to adapt, does
MAML gain from LinNet or KFO, and how does it compare with ANIL (with and without KFO)?

Five configurations of one backbone, trained with the SAME budget (iterations, meta-batch, inner
and outer learning rates, inner steps, query size, validation schedule and seed) through
:func:`linmaml.benchmarks.train.train`, then scored on the same 600 fixed test tasks
(:func:`linmaml.benchmarks.evaluate.evaluate_checkpoint`, each run's ``best.pt`` by validation
accuracy, 3 inner steps, mean ± 95% CI):

=============  ==========================================================================
maml           second-order MAML; every parameter adapts (conv, BatchNorm, head)
maml-linnet    MAML on the backbone followed by 2 bias-free linear layers (5×5, identity at
               start) that adapt with the rest: the implicit preconditioner of DESIGN.md
maml-kfo       MAML whose inner step is U(G) = (LᵀL) G (RᵀR) on every adapted parameter
anil           only the head adapts, on features computed once per task
anil-kfo       ANIL with KFO on the head's weight and bias
=============  ==========================================================================

The backbone: 2 blocks (conv 3×3 stride 2, BatchNorm, ReLU) of 32 filters and a linear head on the
7×7×32 features. Two blocks are the paper's "too shallow to adapt" case (1 and 2 blocks are;
one block is out of reach for KFO: its head's right factor would be 12,544² = 157 M numbers). 32
rather than 64 filters keeps KFO's head factor R (a (32·49)² = 1568² matrix, 2.5 M numbers,
meta-trained and differentiated through per task) at a cost where all five runs fit one budget of
CPU time: KFO applies its factors as Lᵀ(L G) and (G Rᵀ) R, never forming RᵀR (1568³ flops in every
inner step). The committed figures/omniglot_comparison.json records each run's training seconds
(600 iterations, meta-batch 16, one thread, two runs at a time: MAML 65.7 s, MAML+KFO 127.2 s);
``--measure N`` times any configuration on the machine at hand.
``--layers`` and ``--hidden`` change the backbone for every configuration alike.

Runs live in ``<runs>/<name>/`` (``linmaml train``'s folder layout). A finished run is not
retrained; a partial one is resumed exactly (``resume=True``). A folder holding a run with other
settings, or with more iterations than asked, is an error (use another ``--runs``).
``--jobs N`` trains up to N configurations at once in separate processes (each with ``--threads``
torch threads), longest first. ``--measure N`` times N iterations of each configuration (in a
temporary folder) and proposes ``--iterations`` for a wall-time target instead of running.

Writes ``<out>/omniglot_comparison.png`` (bar chart, 95% CI error bars) and
``<out>/omniglot_comparison.json`` (settings, per-configuration accuracy ± CI, iterations, wall
times, the exact command), both atomically, and prints a Markdown table on stdout.

Run: ``python analysis/omniglot_comparison.py [--runs DIR] [--out DIR] [--iterations N] [--jobs N]
[--threads N] [--only NAME,...] [--quick] [--data-root DIR]``. Not a ``fig_*`` script: it trains
models, which ``linmaml reproduce`` must not wait for.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import math
import multiprocessing
import os
import pathlib
import shlex
import sys
import tempfile
import time

NAME = "omniglot_comparison"
REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_RUNS = REPO / "runs" / "omniglot-comparison"
DEFAULT_OUT = REPO / "figures"

#: The default budget; ``--measure N`` times N iterations of each configuration on the machine at hand
#: and says how long the whole comparison would take there (KFO evaluated as Lᵀ(L G) and (G Rᵀ) R;
#: see the module docstring).
DEFAULT_ITERATIONS = 1250
DEFAULT_TEST_TASKS = 600

#: Settings shared by every configuration: the same budget for all (TrainConfig fields).
COMMON = {
    "benchmark": "omniglot", "ways": 5, "shots": 1, "query": 5, "test_query": 15,
    "layers": 2, "hidden": 32, "pool": "stride",
    "steps": 1, "test_steps": 3, "inner_lr": 0.4, "outer_lr": 1e-3, "meta_batch": 16,
    "iterations": DEFAULT_ITERATIONS, "val_every": 250, "val_tasks": 200, "checkpoint_every": 50,
    "seed": 0, "dtype": "float32", "on_nonfinite": "stop",
}

#: name -> (label, what is adapted in the inner loop, the settings that differ).
VARIANTS = {
    "maml": ("MAML", "all (conv, BatchNorm, head)", {"algo": "maml", "transform": "none", "linnet": 0}),
    "maml-linnet": ("MAML+LinNet", "all + 2 linear layers", {"algo": "maml", "transform": "none", "linnet": 2}),
    "maml-kfo": ("MAML+KFO", "all, step (LᵀL)G(RᵀR)", {"algo": "maml", "transform": "kfo", "linnet": 0}),
    "anil": ("ANIL", "head", {"algo": "anil", "transform": "none", "linnet": 0}),
    "anil-kfo": ("ANIL+KFO", "head, step (LᵀL)G(RᵀR)", {"algo": "anil", "transform": "kfo", "linnet": 0}),
}
#: Training order with several jobs: longest first (KFO's head factor dominates), so the
#: processes finish at about the same time.
LONGEST_FIRST = ("maml-kfo", "anil-kfo", "maml", "maml-linnet", "anil")

#: Quick mode: a tiny backbone and a handful of iterations (seconds). 2 blocks of 8 filters rather
#: than 1 block: KFO's head factor is then 392² instead of 1568².
QUICK = {"layers": 2, "hidden": 8, "iterations": 4, "meta_batch": 2, "val_every": 4, "val_tasks": 4,
         "checkpoint_every": 2}
QUICK_TEST_TASKS = 20
PROGRESS_EVERY = 60.0  # seconds between status lines while parallel jobs run


def configurations(*, quick: bool = False, iterations: int | None = None, layers: int | None = None,
                   hidden: int | None = None, only=None) -> dict[str, dict]:
    """The training settings of each configuration (``TrainConfig`` fields), in table order.

    ``only``: names among :data:`VARIANTS` (a comma-separated string or a sequence); default all.
    ``iterations``, ``layers``, ``hidden`` override the common settings for every configuration.
    """
    from linmaml import _validate
    from linmaml.benchmarks.config import TrainConfig

    names = _selected(only)
    common = {**COMMON, **(QUICK if quick else {})}
    for key, value in (("iterations", iterations), ("layers", layers), ("hidden", hidden)):
        if value is not None:
            common[key] = _validate.integer(value, key, minimum=1)
    out = {}
    for name in names:
        options = {**common, **VARIANTS[name][2]}
        TrainConfig.from_dict(options)  # every setting checked before anything runs
        out[name] = options
    return out


def _selected(only) -> list[str]:
    if only is None:
        return list(VARIANTS)
    if isinstance(only, str):
        only = [part.strip() for part in only.split(",") if part.strip()]
    names = list(dict.fromkeys(only))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"only: expected names among {', '.join(VARIANTS)}, got "
                         f"{', '.join(map(repr, unknown)) if unknown else 'none'}")
    return [n for n in VARIANTS if n in names]


def train_command(options: dict, run_dir, threads: int | None, device: str) -> str:
    """The ``linmaml train`` command line equivalent to training ``options`` into ``run_dir``."""
    words = ["linmaml", "train"]
    for key, value in options.items():
        words += [f"--{key.replace('_', '-')}", str(value)]
    # no --resume: the command starts the run afresh in a new folder (which --resume refuses); rerun in
    # the same folder with --resume added to continue an interrupted run
    words += ["--out", str(run_dir)]
    if threads is not None:
        words += ["--threads", str(threads)]
    if device != "auto":
        words += ["--device", device]
    return shlex.join(words)


def plan_run(run_dir: pathlib.Path, options: dict) -> tuple[str, int]:
    """What a configuration's folder needs: ``("done", iterations)``, ``("resume", iteration)``
    (a checkpoint, or leftovers of a run killed before its first one: iteration 0) or
    ``("new", 0)``. A run with other settings or more iterations than asked raises ValueError."""
    from linmaml.benchmarks import checkpoint
    from linmaml.benchmarks.config import resume_config
    from linmaml.benchmarks.run_folder import RUN_FILES

    if not run_dir.exists():
        return "new", 0
    payload = checkpoint.load_latest(run_dir)
    if payload is None:
        return ("resume" if any((run_dir / f).exists() for f in RUN_FILES) else "new"), 0
    try:
        resume_config(payload["config"], options)
    except ValueError as error:
        raise ValueError(f"runs: {run_dir} holds a run with other settings ({error})") from None
    done = int(payload["iteration"])
    if done > options["iterations"]:
        raise ValueError(f"runs: {run_dir} already holds {done} iterations, more than the {options['iterations']}"
                         f" asked; use the same --iterations or another --runs folder")
    return ("done" if done == options["iterations"] else "resume"), done


def _run_summary(run_dir: pathlib.Path) -> dict:
    """From ``metrics.jsonl``: iterations logged, wall seconds of training (all sessions), best
    validation accuracy and its iteration, status of the last session."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    validations = [r for r in records if "val_accuracy" in r]
    best = max(validations, key=lambda r: r["val_accuracy"]) if validations else None
    return {"iterations": records[-1]["iteration"] if records else 0,
            "train_seconds": records[-1]["elapsed"] if records else 0.0,
            "best_val_accuracy": best["val_accuracy"] if best else None,
            "best_val_ci95": best["val_ci95"] if best else None,
            "best_val_iteration": best["iteration"] if best else None,
            "final_train_accuracy_last100": (sum(r["accuracy"] for r in records[-100:] if r["accuracy"] is not None)
                                             / max(1, len(records[-100:]))) if records else None}


def _meta_parameters(options: dict) -> int:
    from linmaml.benchmarks.config import TrainConfig, build_from_config

    learner = build_from_config(TrainConfig.from_dict(options), (1, 28, 28))
    return sum(p.numel() for p in learner.parameters())


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _train_serial(configs, runs, plans, *, test_tasks, threads, device, data_root, progress, splits=None):
    """Train, then evaluate, one configuration after another in this process (data loaded once)."""
    from linmaml.benchmarks.data import load_splits
    from linmaml.benchmarks.evaluate import evaluate_checkpoint
    from linmaml.benchmarks.train import train

    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if splits is None:
        splits = load_splits("omniglot", ("train", "val", "test"), data_root)
    results, evaluations = {}, {}
    for name, options in configs.items():
        state, done = plans[name]
        if state != "done":
            _log(f"== {name}: training {'from iteration ' + str(done) if done else 'from scratch'} to"
                 f" {options['iterations']} ==")
            result = train(options, runs / name, resume=(state == "resume"), device=device, splits=splits,
                           threads=threads, progress=progress)
            results[name] = result
            if result.status == "interrupted":
                raise KeyboardInterrupt(f"{name}: {result.message}")
        evaluations[name] = evaluate_checkpoint(runs / name, tasks=test_tasks, device=device,
                                                splits={"test": splits["test"]})
    return results, evaluations


def _train_parallel(configs, runs, plans, *, test_tasks, jobs, threads, device, data_root):
    """Up to ``jobs`` trainings at once in spawned processes (each loads the data itself), longest
    first; each configuration is evaluated in the pool as soon as its training ends."""
    from linmaml.benchmarks.evaluate import evaluate_checkpoint
    from linmaml.benchmarks.train import train

    import torch

    order = sorted(configs, key=LONGEST_FIRST.index)
    results, evaluations = {}, {}
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    initializer, initargs = (torch.set_num_threads, (threads,)) if threads is not None else (None, ())
    with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=initializer,
                                     initargs=initargs) as pool:
        running = {}

        def evaluate(name):
            running[pool.submit(evaluate_checkpoint, runs / name, tasks=test_tasks, device=device,
                                data_root=data_root)] = ("evaluate", name)

        for name in order:
            state, done = plans[name]
            if state == "done":
                continue
            _log(f"== {name}: training {'from iteration ' + str(done) if done else 'from scratch'} to"
                 f" {configs[name]['iterations']} (background process) ==")
            running[pool.submit(train, configs[name],
                                runs / name, resume=(state == "resume"), device=device, data_root=data_root,
                                threads=threads, progress=False)] = ("train", name)
        for name in order:
            if plans[name][0] == "done":
                evaluate(name)
        try:
            while running:
                finished, _ = futures.wait(running, timeout=PROGRESS_EVERY, return_when=futures.FIRST_COMPLETED)
                for future in finished:
                    kind, name = running.pop(future)
                    value = future.result()
                    if kind == "train":
                        results[name] = value
                        _log(f"== {name}: {value.status}, {value.message} ({value.seconds / 60:.1f} min) ==")
                        if value.status == "interrupted":
                            raise KeyboardInterrupt(f"{name}: {value.message}")
                        evaluate(name)
                    else:
                        evaluations[name] = value
                        _log(f"== {name}: test accuracy {100 * value['accuracy']:.2f} ± {100 * value['ci95']:.2f}%"
                             f" ==")
                if not finished:
                    _log("progress: " + ", ".join(
                        f"{name} {_logged_iterations(runs / name)}/{configs[name]['iterations']}"
                        for kind, name in running.values() if kind == "train"))
        except BaseException:
            for future in running:
                future.cancel()
            raise
    return results, evaluations


def _logged_iterations(run_dir: pathlib.Path) -> int:
    try:
        with open(run_dir / "metrics.jsonl", "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return 0


def run(out_dir=DEFAULT_OUT, quick: bool = False, *, runs=None, iterations: int | None = None,
        threads: int | None = None, jobs: int = 1, only=None, data_root=None, device: str = "auto",
        layers: int | None = None, hidden: int | None = None, test_tasks: int | None = None,
        progress: bool = True, splits=None) -> dict:
    """Train (or resume) every selected configuration into ``<runs>/<name>/``, evaluate each on the
    fixed test tasks, write ``<out_dir>/omniglot_comparison.png`` and ``.json``; return the JSON's
    dict ``{"figure", "settings", "numbers": {name: {...}}, "configs", "command", ...}``.

    ``splits``: Omniglot's ``{"train", "val", "test"}`` :class:`FewShotSplit` s already loaded, for
    the in-process path (``jobs=1``); the processes of ``jobs > 1`` read ``data_root`` themselves.
    """
    from linmaml import _io, _validate

    began = time.perf_counter()
    out_dir = pathlib.Path(out_dir)
    runs = pathlib.Path(runs) if runs is not None else DEFAULT_RUNS
    jobs = _validate.integer(jobs, "jobs", minimum=1)
    if threads is not None:
        threads = _validate.integer(threads, "threads", minimum=1)
    elif jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)  # parallel runs must not oversubscribe the cores
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {device!r}")
    test_tasks = _validate.integer(test_tasks if test_tasks is not None else
                                   (QUICK_TEST_TASKS if quick else DEFAULT_TEST_TASKS), "test_tasks", minimum=2)
    configs = configurations(quick=quick, iterations=iterations, layers=layers, hidden=hidden, only=only)
    if runs.exists() and not runs.is_dir():
        raise NotADirectoryError(f"runs: {runs} is not a folder")
    plans = {name: plan_run(runs / name, options) for name, options in configs.items()}
    for name, (state, done) in plans.items():
        _log(f"{name}: {state}" + (f" ({done}/{configs[name]['iterations']} iterations)" if state != "new" else ""))

    if jobs == 1 or sum(state != "done" for state, _ in plans.values()) <= 1:
        trained, evaluations = _train_serial(configs, runs, plans, test_tasks=test_tasks, threads=threads,
                                             device=device, data_root=data_root, progress=progress, splits=splits)
    else:
        trained, evaluations = _train_parallel(configs, runs, plans, test_tasks=test_tasks, jobs=jobs, threads=threads,
                                               device=device, data_root=data_root)

    numbers = {}
    for name, options in configs.items():
        label, adapted, _ = VARIANTS[name]
        evaluation = evaluations[name]
        summary = _run_summary(runs / name)
        result = trained.get(name)
        numbers[name] = {
            "label": label, "adapted": adapted,
            "accuracy": evaluation["accuracy"], "ci95": evaluation["ci95"],
            "loss": evaluation["loss"], "loss_ci95": evaluation["loss_ci95"], "tasks": evaluation["tasks"],
            "checkpoint": pathlib.Path(evaluation["checkpoint"]).name,
            "checkpoint_iteration": evaluation["iteration"],
            "iterations": summary["iterations"],
            "status": result.status if result is not None else "done (earlier invocation)",
            "complete": summary["iterations"] == options["iterations"],
            "train_seconds": summary["train_seconds"],
            "train_seconds_this_invocation": round(result.seconds, 3) if result is not None else 0.0,
            "eval_seconds": round(evaluation["seconds"], 3),
            "best_val_accuracy": summary["best_val_accuracy"], "best_val_ci95": summary["best_val_ci95"],
            "best_val_iteration": summary["best_val_iteration"],
            "train_accuracy_last100": summary["final_train_accuracy_last100"],
            "meta_parameters": _meta_parameters(options),
        }
    first = next(iter(configs.values()))
    settings = {key: first[key] for key in COMMON}
    settings.update({"test_tasks": test_tasks, "test_split": "test", "test_task_seed": 0, "evaluated": "best.pt",
                     "threads": threads, "jobs": jobs, "device": device, "quick": quick,
                     "runs": str(runs), "data_root": str(data_root) if data_root is not None else None,
                     "configurations": list(configs)})
    command = ["python", "analysis/omniglot_comparison.py", "--runs", _shown(runs), "--out", _shown(out_dir),
               "--iterations", str(first["iterations"]), "--jobs", str(jobs)]
    command += ["--threads", str(threads)] if threads is not None else []
    command += ["--only", ",".join(configs)] if list(configs) != list(VARIANTS) else []
    command += ["--layers", str(layers)] if layers is not None else []
    command += ["--hidden", str(hidden)] if hidden is not None else []
    command += ["--test-tasks", str(test_tasks)] if test_tasks != (QUICK_TEST_TASKS if quick else
                                                                  DEFAULT_TEST_TASKS) else []
    command += ["--device", device] if device != "auto" else []
    command += ["--data-root", _shown(data_root)] if data_root is not None else []
    command += ["--quick"] if quick else []
    record = {
        "figure": NAME, "settings": settings, "numbers": numbers,
        "configs": {name: {k: options[k] for k in ("algo", "transform", "linnet")}
                    for name, options in configs.items()},
        "command": shlex.join(command),
        "train_commands": {name: train_command(options, _shown(runs / name), threads, device)
                           for name, options in configs.items()},
        "table": markdown_table(numbers),
        "seconds": None,
    }
    draw(record, out_dir / f"{NAME}.png")
    record["seconds"] = round(time.perf_counter() - began, 3)
    _io.atomic_write_json(out_dir / f"{NAME}.json", record)
    return record


def _shown(path) -> str:
    """A path as the recorded commands show it: relative to the repository (where they are run from)
    when inside it, else absolute."""
    path = pathlib.Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def markdown_table(numbers: dict) -> str:
    """The results as a Markdown table: one row per configuration."""
    rows = ["| configuration | adapted in the inner loop | test accuracy (%) | 95% CI | iterations | best.pt at |"
            " meta-parameters | training time |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for entry in numbers.values():
        flag = "" if entry["complete"] else " (incomplete)"
        rows.append(f"| {entry['label']} | {entry['adapted']} | {100 * entry['accuracy']:.2f} |"
                    f" ± {100 * entry['ci95']:.2f} | {entry['iterations']}{flag} | {entry['checkpoint_iteration']} |"
                    f" {entry['meta_parameters']:,} | {_duration(entry['train_seconds'])} |")
    return "\n".join(rows)


def draw(record: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linmaml.plots.bars import ci_bars
    from linmaml.plots.figure import save_figure

    s, numbers = record["settings"], record["numbers"]
    means = [100 * n["accuracy"] for n in numbers.values()]
    halves = [100 * n["ci95"] for n in numbers.values()]
    chance = 100.0 / s["ways"]
    fig, ax = plt.subplots(figsize=(1.6 * len(numbers) + 2.5, 4.4))
    ci_bars(ax, [n["label"] for n in numbers.values()], means, halves, baseline=chance,
            value_format="{mean:.2f}\n± {half:.2f}")
    # Zoom in on the bars' tops (differences of a few points matter) but never below chance.
    low = max(chance, 10 * math.floor((min(m - h for m, h in zip(means, halves)) - 8) / 10))
    ax.set_ylim(low, min(100.0, max(m + h for m, h in zip(means, halves)) + 6) if low > chance else 100.0)
    ax.set_ylabel("test accuracy (%)" + (f", axis from {low:.0f}%" if low > chance else ", dashed: chance"))
    ax.set_title(f"Omniglot {s['ways']}-way {s['shots']}-shot, {s['layers']}-block CNN ({s['hidden']} filters)\n"
                 f"same budget: {s['iterations']} iterations × {s['meta_batch']} tasks, {s['steps']} inner step of "
                 f"{s['inner_lr']} (test: {s['test_steps']}); {s['test_tasks']} test tasks, mean ± 95% CI",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def measure(iterations: int = 20, *, threads: int | None = 1, layers: int | None = None,
            hidden: int | None = None, only=None, data_root=None, device: str = "auto", eval_tasks: int = 20,
            jobs: int = 2, target_minutes: float = 35.0) -> dict:
    """Seconds per training iteration (median over iterations 2..N−1) and per evaluation task of
    each configuration, each trained for ``iterations`` iterations in a temporary folder; and the
    ``--iterations`` whose full comparison (training, validation every ``val_every`` on
    ``val_tasks`` tasks, the 600-task test) takes about ``target_minutes`` with ``jobs`` processes
    (longest first, each to the least-loaded process)."""
    import numpy as np
    import torch

    from linmaml import _validate
    from linmaml.benchmarks.data import load_splits
    from linmaml.benchmarks.evaluate import evaluate_checkpoint
    from linmaml.benchmarks.train import train

    iterations = _validate.integer(iterations, "iterations", minimum=3)
    configs = configurations(iterations=iterations, layers=layers, hidden=hidden, only=only)
    if threads is not None:
        torch.set_num_threads(threads)
    splits = load_splits("omniglot", ("train", "val", "test"), data_root)
    per_iteration, per_task = {}, {}
    with tempfile.TemporaryDirectory(prefix="linmaml-measure-") as workdir:
        for name, options in configs.items():
            stamps = []
            train({**options, "val_tasks": 2, "val_every": iterations}, pathlib.Path(workdir) / name,
                  device=device, splits=splits, threads=threads, progress=False,
                  on_iteration=lambda record: stamps.append(time.perf_counter()))
            per_iteration[name] = float(np.median(np.diff(stamps[:-1])))  # the last one includes validation
            evaluation = evaluate_checkpoint(pathlib.Path(workdir) / name, tasks=eval_tasks, device=device,
                                             splits={"test": splits["test"]})
            per_task[name] = evaluation["seconds"] / eval_tasks
            _log(f"{name}: {per_iteration[name]:.3f} s/iteration, {per_task[name]:.4f} s/test task")

    common = next(iter(configs.values()))

    def seconds(name, n):  # one run of n iterations: training, validations, test
        validations = n // common["val_every"] + (n % common["val_every"] != 0)
        return (per_iteration[name] * n + per_task[name] * common["val_tasks"] * validations
                + per_task[name] * DEFAULT_TEST_TASKS)

    def makespan(n):
        loads = [0.0] * jobs
        for name in sorted(configs, key=lambda k: -seconds(k, n)):
            loads[loads.index(min(loads))] += seconds(name, n)
        return max(loads)

    target = 60.0 * target_minutes
    proposed = 50
    while makespan(proposed + 50) <= target:
        proposed += 50
    return {"iterations_timed": iterations, "threads": threads, "seconds_per_iteration": per_iteration,
            "seconds_per_test_task": per_task, "jobs": jobs, "target_minutes": target_minutes,
            "proposed_iterations": proposed, "predicted_minutes": makespan(proposed) / 60,
            "predicted_serial_minutes": sum(seconds(k, proposed) for k in configs) / 60}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Train MAML, MAML+LinNet, MAML+KFO, ANIL and ANIL+KFO on real Omniglot (5-way 1-shot) with a "
                    "too-shallow CNN and the same budget; evaluate each on 600 fixed test tasks; write "
                    "figures/omniglot_comparison.png and .json and print a Markdown table.")
    parser.add_argument("--runs", type=pathlib.Path, default=DEFAULT_RUNS, metavar="DIR",
                        help="folder of the training runs, one sub-folder per configuration (default "
                             "runs/omniglot-comparison)")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where the figure and JSON go (default figures/)")
    parser.add_argument("--iterations", type=int, metavar="N",
                        help=f"outer iterations of every run (default {DEFAULT_ITERATIONS};"
                             f" quick: {QUICK['iterations']})")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads per process (default: torch's choice; with --jobs N, cores / N)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train up to N configurations at once in separate processes (default 1)")
    parser.add_argument("--only", metavar="NAME,...", help=f"configurations to run (among {', '.join(VARIANTS)})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny: 2 blocks of 8 filters, 4 iterations, 20 test tasks (seconds)")
    parser.add_argument("--data-root", type=pathlib.Path, metavar="DIR",
                        help="datasets folder (default: $LINMAML_DATA, else the per-user cache)")
    parser.add_argument("--layers", type=int, metavar="B", help=f"conv blocks (default {COMMON['layers']})")
    parser.add_argument("--hidden", type=int, metavar="H", help=f"filters per block (default {COMMON['hidden']})")
    parser.add_argument("--test-tasks", type=int, metavar="N", help=f"test tasks (default {DEFAULT_TEST_TASKS})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quiet", action="store_true", help="no training progress lines")
    parser.add_argument("--measure", type=int, metavar="N",
                        help="instead: time N iterations of each configuration and propose --iterations")
    parser.add_argument("--target-minutes", type=float, default=35.0,
                        help="with --measure: wall time of the whole comparison to aim for (default 35)")
    args = parser.parse_args(argv)
    try:
        if args.measure is not None:
            report = measure(args.measure, threads=args.threads, layers=args.layers, hidden=args.hidden,
                             only=args.only, data_root=args.data_root, device=args.device,
                             jobs=args.jobs, target_minutes=args.target_minutes)
            print(json.dumps(report, indent=2))
            return 0
        record = run(args.out, quick=args.quick, runs=args.runs, iterations=args.iterations, threads=args.threads,
                     jobs=args.jobs, only=args.only, data_root=args.data_root, device=args.device,
                     layers=args.layers, hidden=args.hidden, test_tasks=args.test_tasks, progress=not args.quiet)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, NotADirectoryError) as error:
        print(f"omniglot_comparison: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"omniglot_comparison: interrupted ({stop}); run again to resume", file=sys.stderr)
        return 130
    print(record["table"])
    _log(f"wrote {args.out / (NAME + '.png')} and {NAME}.json in {record['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
