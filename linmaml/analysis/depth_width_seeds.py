"""The depth × width claims with several training seeds: ANIL against MAML, and width at one block.

The one-seed sweep (:mod:`linmaml.analysis.depth_width`, 800 iterations per cell) found ANIL above
MAML in 14 of 16 cells and width hurting with one conv block. This module re-runs the comparisons
that carry those claims, on Omniglot 5-way 1-shot, with

- **several training seeds per arm** (default 3; seed ``s`` of one arm is paired with seed ``s`` of the
  other: same initial weights where the shapes agree, same training tasks),
- **one training criterion for every run**: the sweep's recipe (meta-batch 16, one inner step of 0.4,
  three at test, Adam 1e-3, 5 query images per class) with a half-cosine outer learning rate that
  reaches 0 at the end of a fixed budget (``FULL["train"]["iterations"]``; a step whose meta-gradient
  is not finite is skipped, so one diverging step cannot end a run of the plan), validation on 200 fixed
  validation tasks every ``val_every`` iterations, and the best-validation weights (``best.pt``)
  kept: the test split is never looked at until each run's one scoring. How far each run still was
  from a plateau is measured, not assumed (:func:`plateau`: the validation gain over the last
  quarter and over the second half of the budget);
- **one scoring per run** on the same 600 fixed test tasks (task seed 0, 15 query images per class,
  the run's 3 test steps), so every comparison is paired per task, and
- **intervals that include the seeds**: the per-task differences of each seed pair form a (seeds ×
  tasks) matrix, and the interval of its mean is the crossed random-effects one of
  :mod:`linmaml.analysis.depth_width_stats` (seeds and tasks both as random draws; that module says
  why not a bootstrap), shown beside the interval over seeds only.

The compared cells (``COMPARISONS``): ANIL − MAML at 2 blocks × 32 filters and 4 × 32 (two depths,
one width), and MAML 64 − 8 filters at one block (the width claim, whose 64-filter cell peaked at
iteration 200 of 800 in the sweep). 4 × 64 (``anil_vs_maml_4x64``) is available with
``--comparisons`` but not in the default set: its two runs cost 0.37 CPU seconds per iteration, 79 %
of the three default comparisons' six runs together (0.47; ``--measure``), and the budget buys more
iterations for the cells that test the claims.

Budget: ``--measure`` trains each planned configuration for 12 iterations (one thread) and writes
the CPU seconds (and wall seconds) per iteration and the estimated time of the whole plan into
``<out>/depth_width_seeds_measure.json``. Measured so (``figures/depth_width_seeds_measure.json``), the
six default configurations cost 0.47 CPU seconds per iteration together, so 3 seeds × 2,000
iterations are 0.86 CPU hours (validation and test scoring included); on this 2-core machine,
shared with two training runs and other work (load average 5), a single-thread run got about half a
core: 1.8 hours of wall time, as the one-seed sweep's own records show for the same cells (0.91 wall
seconds per iteration beside another run, against 0.47 CPU seconds now). 2,000 iterations (2.5×
the sweep's 800) is the budget that fits a 2–2.5 hour lane at that load with a margin; with a core
to itself the same plan takes about an hour. The cosine schedule fixes the budget when a run starts
(a resumed run cannot be extended), so choose ``--iterations`` before the first run.

Runs live in ``<runs>/<algo>-b<blocks>-f<filters>-s<seed>/`` (``linmaml train`` folders); a complete
run is not retrained, an interrupted one resumes exactly, a folder with other settings or more
iterations is refused (:func:`linmaml.analysis.depth_width.check_folder`). Runs are trained seed by
seed (all configurations of seed 0 first), so an interrupted plan has whole seeds done. ``--jobs N``
trains N runs at once (separate processes, ``--threads`` each, default 1).

Writes ``<out>/depth_width_seeds.json`` (settings, the command, each run's ``linmaml train``
command, validation curve, plateau measures, test accuracy and per-task accuracies, each
comparison's paired statistics) and ``<out>/depth_width_seeds.png``. ``--quick`` runs the whole
pipeline on pure-noise data (:func:`linmaml.benchmarks.data.fewshot.noise_splits`) in seconds: what
the tests run.

Run: ``python analysis/depth_width_seeds.py [--runs DIR] [--out DIR] [--seeds N] [--iterations N]
[--comparisons NAME ...] [--jobs N] [--threads N] [--data-root DIR] [--quick] [--measure]``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import io
import multiprocessing
import pathlib
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from linmaml import _io, _validate
from linmaml.analysis._common import report_error
from linmaml.analysis.depth_width import check_folder, machine
from linmaml.analysis.depth_width_stats import crossed_mean_ci, paired_comparison
from linmaml.analysis.omniglot_maml import command_of
from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.data import load_splits
from linmaml.benchmarks.data.fewshot import noise_splits
from linmaml.benchmarks.run import Run, read_curves
from linmaml.benchmarks.run_files import CONFIG, METRICS
from linmaml.benchmarks.scoring import score_tasks, summarize
from linmaml.benchmarks.train import train
from linmaml.errors import ArgumentError, ArgumentNotADirectoryError
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import default_out, default_runs

NAME = "depth_width_seeds"
DEFAULT_RUNS = default_runs("depth-width-seeds")
DEFAULT_OUT = default_out()

#: Each comparison: ``a − b``, each arm ``(algo, blocks, filters)``.
COMPARISONS = {
    "anil_vs_maml_2x32": {"a": ("anil", 2, 32), "b": ("maml", 2, 32), "claim": "ANIL above MAML (2 blocks × 32)"},
    "anil_vs_maml_4x32": {"a": ("anil", 4, 32), "b": ("maml", 4, 32), "claim": "ANIL above MAML (4 blocks × 32)"},
    "maml_1block_64_vs_8": {"a": ("maml", 1, 64), "b": ("maml", 1, 8),
                            "claim": "width hurts MAML with one block (64 filters below 8)"},
    "anil_vs_maml_4x64": {"a": ("anil", 4, 64), "b": ("maml", 4, 64), "claim": "ANIL above MAML (4 blocks × 64)"},
}
DEFAULT_COMPARISONS = ("anil_vs_maml_2x32", "anil_vs_maml_4x32", "maml_1block_64_vs_8")

#: The recipe of every run (TrainConfig fields; the sweep's, plus the cosine schedule). ``iterations``:
#: the README section "Depth × width with three seeds" gives the measured cost it was chosen from.
FULL = {"seeds": 3, "test_tasks": 600, "comparisons": DEFAULT_COMPARISONS,
        "train": {"iterations": 2000, "meta_batch": 16, "steps": 1, "test_steps": 3, "inner_lr": 0.4,
                  "outer_lr": 1e-3, "outer_lr_schedule": "cosine", "query": 5, "val_every": 200, "val_tasks": 200,
                  "on_nonfinite": "skip"}}
#: Pure-noise data, tiny networks, a few iterations: the pipeline in seconds (the tests').
QUICK = {"seeds": 2, "test_tasks": 10, "comparisons": ("anil_vs_maml_q", "maml_width_q"),
         "train": {"iterations": 4, "meta_batch": 2, "steps": 1, "test_steps": 2, "inner_lr": 0.4,
                   "outer_lr": 1e-3, "outer_lr_schedule": "cosine", "query": 2, "val_every": 2, "val_tasks": 3,
                   "on_nonfinite": "skip"}}
QUICK_COMPARISONS = {
    "anil_vs_maml_q": {"a": ("anil", 1, 4), "b": ("maml", 1, 4), "claim": "quick: ANIL against MAML"},
    "maml_width_q": {"a": ("maml", 1, 8), "b": ("maml", 1, 4), "claim": "quick: width at one block"},
}
#: Iterations timed per configuration by --measure (the first two are warm-up; the last validates).
MEASURE_ITERATIONS = 12


def run_name(algo: str, blocks: int, filters: int, seed: int) -> str:
    return f"{algo}-b{blocks}-f{filters}-s{seed}"


def _comparisons(size: dict, quick: bool) -> dict:
    table = QUICK_COMPARISONS if quick else COMPARISONS
    out = {}
    for name in size["comparisons"]:
        if name not in table:
            raise ArgumentError("comparisons", f"unknown comparison {name!r}; expected some of {sorted(table)}")
        out[name] = table[name]
    return out


def configurations(comparisons: dict) -> list[tuple[str, int, int]]:
    """The distinct arms ``(algo, blocks, filters)`` of the comparisons, in first-seen order."""
    return list(dict.fromkeys(arm for c in comparisons.values() for arm in (c["a"], c["b"])))


def plan(size: dict, comparisons: dict) -> list[tuple[str, int, int, int]]:
    """Every run ``(algo, blocks, filters, seed)``, seed by seed (so an interrupted plan has whole seeds)."""
    return [(*arm, seed) for seed in range(size["seeds"]) for arm in configurations(comparisons)]


def options(size: dict, algo: str, blocks: int, filters: int, seed: int) -> dict:
    """The ``linmaml train`` settings of one run."""
    return {**size["train"], "benchmark": "omniglot", "ways": 5, "shots": 1, "algo": algo, "layers": blocks,
            "hidden": filters, "seed": seed}


_SPLITS = {}


def splits_for(quick: bool, data_root=None) -> dict:
    """The three splits, loaded once per process: pure noise in quick mode, else Omniglot."""
    key = ("noise",) if quick else ("omniglot", str(data_root))
    if key not in _SPLITS:
        if quick:
            _SPLITS[key] = noise_splits()
        else:
            _SPLITS[key] = load_splits("omniglot", ("train", "val", "test"), data_root)
    return _SPLITS[key]


def validation_curve(run_dir: pathlib.Path) -> list[dict]:
    """``[{"iteration", "elapsed", "accuracy", "ci95"}]`` of every validation in ``metrics.jsonl``
    (accuracy and its 95 % half-width over the validation tasks in percent, elapsed in seconds of
    training so far, validation included), in iteration order
    (:meth:`linmaml.benchmarks.run.RunCurves.validations`)."""
    return read_curves(run_dir).validations()


def plateau(curve: list[dict], iterations: int) -> dict:
    """How far a run still was from a plateau, from its validation curve (percent points):
    ``last_quarter_gain`` (the last validation minus the last one at or before 3/4 of the budget),
    ``second_half_gain`` (the best validation after half the budget minus the best up to half), and
    ``best_iteration`` (of the best validation; ties: the earliest, as ``best.pt`` keeps), and
    ``plateaued``: the last-quarter gain is below the last validation's 95 % half-width (the run's
    validation could not tell its last quarter from a flat line)."""
    if not curve:
        return {"last_quarter_gain": None, "second_half_gain": None, "best_iteration": None, "plateaued": None}
    early = [p for p in curve if p["iteration"] <= 0.75 * iterations]
    first = [p["accuracy"] for p in curve if p["iteration"] <= iterations / 2]
    second = [p["accuracy"] for p in curve if p["iteration"] > iterations / 2]
    best = max(curve, key=lambda p: p["accuracy"])  # max returns the first of equal maxima
    gain = curve[-1]["accuracy"] - early[-1]["accuracy"] if early else None
    return {"last_quarter_gain": gain,
            "second_half_gain": max(second) - max(first) if first and second else None,
            "best_iteration": best["iteration"],
            "plateaued": None if gain is None else bool(gain < curve[-1].get("ci95", 0.0))}


def score_run(run_dir: pathlib.Path, tasks: int, splits: dict) -> tuple[dict, np.ndarray]:
    """The run's ``best.pt`` scored once on the fixed test tasks (task seed 0, 15 query images per
    class, its test steps): ``(summary, per-task accuracies)`` (fractions, task order)."""
    run = Run.open(run_dir)
    task_set = run.tasks("test", count=tasks, query=15, seed=0, splits=splits)
    accuracies, losses = score_tasks(run.engine(), task_set, steps=run.config.test_steps,
                                     dtype=run.config.torch_dtype)
    summary = summarize(accuracies, losses)
    summary.update({"iteration": run.iteration, "test_steps": run.config.test_steps})
    return summary, np.asarray(accuracies, dtype=np.float64)


def train_command(config: dict, run_dir: pathlib.Path, threads: int | None) -> str:
    """The ``linmaml train`` command of a run (:func:`linmaml.analysis.omniglot_maml.command_of`, plus
    ``--on-nonfinite``, which that leaves out)."""
    command = command_of(config, str(run_dir), threads)
    if config.get("on_nonfinite", "stop") != "stop":
        command = command.replace("linmaml train ", f"linmaml train --on-nonfinite {config['on_nonfinite']} ", 1)
    return command


def run_one(algo: str, blocks: int, filters: int, seed: int, size: dict, runs, quick: bool, data_root=None,
            threads: int | None = 1) -> dict:
    """Train (or reuse, or resume) one run and score it; its record (accuracies in percent)."""
    if threads is not None:
        torch.set_num_threads(threads)
    run_dir = pathlib.Path(runs) / run_name(algo, blocks, filters, seed)
    settings = options(size, algo, blocks, filters, seed)
    check_folder(run_dir, settings)
    splits = splits_for(quick, data_root)
    result = train(settings, run_dir, resume=checkpoint.has_checkpoint(run_dir), splits=splits, progress=False,
                   stream=io.StringIO(), threads=threads)
    if result.status != "done":
        raise RuntimeError(f"{run_dir.name}: training ended with {result.status}: {result.message}")
    summary, accuracies = score_run(run_dir, size["test_tasks"], splits)
    config = _io.load_json(run_dir / CONFIG)["config"]  # bounded regular file, never a FIFO
    curve = validation_curve(run_dir)
    last = checkpoint.load_latest(run_dir)
    return {"name": run_dir.name, "algo": algo, "blocks": blocks, "filters": filters, "seed": seed,
            "run": str(run_dir), "command": train_command(config, run_dir, threads),
            "iterations": int(last["iteration"]), "train_seconds": round(float(last["elapsed"]), 3),
            "best_iteration": int(summary["iteration"]),
            "accuracy": 100 * summary["accuracy"], "ci95_tasks": 100 * summary["ci95"],
            "nonfinite_tasks": summary["nonfinite_tasks"],
            "validation": curve, "plateau": plateau(curve, size["train"]["iterations"]),
            "task_accuracies": [round(100 * float(a), 6) for a in accuracies]}


def _log(text: str) -> None:
    print(f"[{NAME}] {text}", file=sys.stderr, flush=True)


def train_all(size: dict, comparisons: dict, runs, quick: bool, *, jobs: int = 1, threads: int | None = 1,
              data_root=None) -> list[dict]:
    """Every planned run's record (in plan order), training what is missing."""
    todo = plan(size, comparisons)
    runs = pathlib.Path(runs)
    runs.mkdir(parents=True, exist_ok=True)
    for item in todo:  # refuse a bad folder before any training
        check_folder(runs / run_name(*item), options(size, *item))
    records, began = {}, time.perf_counter()

    def done(item, record):
        records[item] = record
        _log(f"{record['name']}: {record['accuracy']:.2f} % (best iteration {record['best_iteration']}); "
             f"{len(records)}/{len(todo)} runs, {(time.perf_counter() - began) / 60:.1f} min")

    if jobs == 1:
        for item in todo:
            done(item, run_one(*item, size, runs, quick, data_root, threads))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            running = {pool.submit(run_one, *item, size, str(runs), quick, data_root, threads): item for item in todo}
            try:
                for future in futures.as_completed(running):
                    done(running[future], future.result())
            except BaseException:
                for future in running:
                    future.cancel()
                raise
    return [records[item] for item in todo]


def _matrix(records: list[dict], arm: tuple, seeds: int) -> np.ndarray:
    """``(seeds, tasks)`` per-task accuracies (percent) of one arm, seed order."""
    by_seed = {r["seed"]: r for r in records if (r["algo"], r["blocks"], r["filters"]) == tuple(arm)}
    return np.asarray([by_seed[s]["task_accuracies"] for s in range(seeds)], dtype=np.float64)


def mean_curve(records: list[dict], arm: tuple) -> dict:
    """The arm's validation accuracy averaged over seeds at each validated iteration (runs share the
    schedule), with the mean elapsed seconds there."""
    runs = [r for r in records if (r["algo"], r["blocks"], r["filters"]) == tuple(arm)]
    iterations = sorted(set.intersection(*({p["iteration"] for p in r["validation"]} for r in runs)))
    points = {r["name"]: {p["iteration"]: p for p in r["validation"]} for r in runs}
    return {"iteration": iterations,
            "accuracy": [statistics.fmean(points[r["name"]][t]["accuracy"] for r in runs) for t in iterations],
            "elapsed": [statistics.fmean(points[r["name"]][t]["elapsed"] for r in runs) for t in iterations]}


def validation_gap(records: list[dict], a: tuple, b: tuple, seeds: int) -> dict:
    """``a − b`` validation accuracy (points) at every validated iteration, per seed pair and their mean:
    whether the gap closes as training goes on (a cosine run's last quarter is flat by its schedule, so
    the trend of the gap over the budget says more about "at convergence" than the last quarter)."""
    def curve(arm, seed):
        run = next(r for r in records if (r["algo"], r["blocks"], r["filters"], r["seed"]) == (*arm, seed))
        return {p["iteration"]: p["accuracy"] for p in run["validation"]}

    pairs = [(curve(a, s), curve(b, s)) for s in range(seeds)]
    iterations = sorted(set.intersection(*(set(x) & set(y) for x, y in pairs)))
    per_seed = [[x[t] - y[t] for t in iterations] for x, y in pairs]
    return {"iteration": iterations, "per_seed": per_seed,
            "mean": [statistics.fmean(g[i] for g in per_seed) for i in range(len(iterations))]}


def _verdict(mean: float, half_width: float) -> str:
    return "a above b" if mean - half_width > 0 else "a below b" if mean + half_width < 0 else "not distinguishable"


def analyse(records: list[dict], comparisons: dict, seeds: int) -> dict:
    """Each comparison's paired statistics (points; :func:`depth_width_stats.paired_comparison`), each
    arm's mean accuracy with its crossed interval, and the sign the interval shows (``verdict``: the
    t_{S−1} interval; ``verdict_satterthwaite``: the textbook one, slightly liberal)."""
    out = {}
    for name, comparison in comparisons.items():
        a, b = _matrix(records, comparison["a"], seeds), _matrix(records, comparison["b"], seeds)
        paired = paired_comparison(a, b)
        crossed = paired["crossed"]
        out[name] = {"claim": comparison["claim"], "a": list(comparison["a"]), "b": list(comparison["b"]),
                     "what": "a − b, test accuracy points per task, seed s of a paired with seed s of b",
                     "arms": {"a": crossed_mean_ci(a), "b": crossed_mean_ci(b)},
                     "curves": {"a": mean_curve(records, comparison["a"]), "b": mean_curve(records, comparison["b"])},
                     "validation_gap": validation_gap(records, comparison["a"], comparison["b"], seeds),
                     **paired,
                     "verdict": _verdict(crossed["mean"], crossed["half_width"]),
                     "verdict_satterthwaite": _verdict(crossed["mean"], crossed["satterthwaite"]["half_width"])}
    return out


def measure(size: dict, comparisons: dict, *, data_root=None, quick: bool = False, threads: int = 1) -> dict:
    """Seconds per iteration of each planned configuration, :data:`MEASURE_ITERATIONS` iterations
    with ``threads`` torch threads: the median over the iterations past the first two and before the
    last (which validates and writes), as process CPU seconds (``time.process_time`` at each
    iteration's end) and as wall seconds (``elapsed`` in ``metrics.jsonl``: what the machine's load
    stretches); seconds per test task scored (wall). The estimated time of the whole plan from each:
    training ``seeds × iterations × sum of the medians`` plus scoring (every validation and the 600
    test tasks, at the measured seconds per task)."""
    torch.set_num_threads(threads)
    splits = splits_for(quick, data_root)
    rows = []
    train_cfg = size["train"]
    with tempfile.TemporaryDirectory(prefix="depth-width-measure-") as tmp:
        for arm in configurations(comparisons):
            run_dir = pathlib.Path(tmp) / run_name(*arm, 0)
            settings = {**options(size, *arm, 0), "iterations": MEASURE_ITERATIONS, "val_every": 10 ** 6,
                        "val_tasks": 2, "checkpoint_every": 10 ** 6}
            cpu = []
            train(settings, run_dir, splits=splits, progress=False, stream=io.StringIO(), threads=threads,
                  on_iteration=lambda record: cpu.append(time.process_time()))
            records = [_io.loads_json(line, METRICS) for line in
                       _io.read_text(run_dir / METRICS).splitlines() if line.strip()]
            elapsed = [r["elapsed"] for r in records]
            # iterations 3..M-1: past the warm-up, before the last one (which validates and writes)
            steps = [elapsed[i] - elapsed[i - 1] for i in range(2, len(elapsed) - 1)]
            cpu_steps = [cpu[i] - cpu[i - 1] for i in range(2, len(cpu) - 1)]
            run = Run.open(run_dir, latest=True)
            task_set = run.tasks("test", count=20, query=15, seed=0, splits=splits)
            start, start_cpu = time.perf_counter(), time.process_time()
            score_tasks(run.engine(), task_set, steps=train_cfg["test_steps"])
            per_task = (time.perf_counter() - start) / len(task_set)
            per_task_cpu = (time.process_time() - start_cpu) / len(task_set)
            rows.append({"algo": arm[0], "blocks": arm[1], "filters": arm[2],
                         "seconds_per_iteration": statistics.median(steps), "timed_iterations": steps,
                         "cpu_seconds_per_iteration": statistics.median(cpu_steps), "timed_cpu": cpu_steps,
                         "seconds_per_task_scored": per_task, "cpu_seconds_per_task_scored": per_task_cpu})
    iterations, seeds = train_cfg["iterations"], size["seeds"]
    scored = iterations // train_cfg["val_every"] * train_cfg["val_tasks"] + size["test_tasks"]

    def total(step_key, task_key):
        train_s = seeds * iterations * sum(r[step_key] for r in rows)
        return train_s, seeds * scored * sum(r[task_key] for r in rows)

    train_s, score_s = total("seconds_per_iteration", "seconds_per_task_scored")
    train_cpu, score_cpu = total("cpu_seconds_per_iteration", "cpu_seconds_per_task_scored")
    return {"configurations": rows, "iterations": iterations, "seeds": seeds, "runs": seeds * len(rows),
            "training_seconds": train_s, "validation_and_test_seconds": score_s, "total_seconds": train_s + score_s,
            "training_cpu_seconds": train_cpu, "validation_and_test_cpu_seconds": score_cpu,
            "total_cpu_seconds": train_cpu + score_cpu, "threads": threads, "machine": machine()}


def draw(record: dict, path) -> None:
    """Validation accuracy (mean over seeds; each seed thin) against iterations and against elapsed
    training seconds, per comparison; the validation gap a − b against iterations; and each
    comparison's mean paired test difference with the crossed interval, the interval over seeds only,
    and each seed pair's mean."""
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    comps = record["comparisons"]
    fig, grid = plt.subplots(2, 2, figsize=(13, 9.5))
    axes = [grid[0][0], grid[0][1], grid[1][1], grid[1][0]]  # curves on top; gap, then test differences below
    styles = {"a": "-", "b": "--"}
    for i, (name, c) in enumerate(comps.items()):
        for side in ("a", "b"):
            arm = tuple(c[side])
            label = f"{arm[0]} {arm[1]}×{arm[2]}"
            for r in record["runs"]:
                if (r["algo"], r["blocks"], r["filters"]) == arm:
                    xs = [p["iteration"] for p in r["validation"]]
                    axes[0].plot(xs, [p["accuracy"] for p in r["validation"]], styles[side], color=f"C{i}",
                                 lw=0.5, alpha=0.4)
                    axes[1].plot([p["elapsed"] for p in r["validation"]], [p["accuracy"] for p in r["validation"]],
                                 styles[side], color=f"C{i}", lw=0.5, alpha=0.4)
            curve = c["curves"][side]
            axes[0].plot(curve["iteration"], curve["accuracy"], styles[side], color=f"C{i}", lw=1.8, label=label)
            axes[1].plot(curve["elapsed"], curve["accuracy"], styles[side], color=f"C{i}", lw=1.8, label=label)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("training seconds (one thread, validation included)")
    for ax in axes[:2]:
        ax.set_ylabel(f"validation accuracy % ({record['settings']['train']['val_tasks']} tasks; mean of seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[3]
    for i, (name, c) in enumerate(comps.items()):
        gap = c["validation_gap"]
        for per_seed in gap["per_seed"]:
            ax.plot(gap["iteration"], per_seed, color=f"C{i}", lw=0.5, alpha=0.4)
        ax.plot(gap["iteration"], gap["mean"], color=f"C{i}", lw=1.8,
                label=f"{c['a'][0]} {c['a'][1]}×{c['a'][2]} − {c['b'][0]} {c['b'][1]}×{c['b'][2]}")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation accuracy a − b, points (mean of seed pairs; each thin)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[2]
    names = list(comps)
    for y, name in enumerate(names):
        c = comps[name]
        cr, sd = c["crossed"], c["over_seeds"]
        ax.errorbar([cr["mean"]], [y], xerr=[[cr["mean"] - cr["low"]], [cr["high"] - cr["mean"]]], fmt="o",
                    color="k", capsize=4, label="seeds and tasks (crossed)" if y == 0 else None)
        ax.errorbar([sd["mean"]], [y + 0.18], xerr=[[sd["half_width"]], [sd["half_width"]]], fmt="s",
                    color="C7", capsize=3, ms=4, label="over seeds only" if y == 0 else None)
        ax.plot([p["mean"] for p in c["per_seed"]], [y - 0.18] * len(c["per_seed"]), "x", color="C3",
                label="each seed pair" if y == 0 else None)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(range(len(names)), [f"{comps[n]['a'][0]} {comps[n]['a'][1]}×{comps[n]['a'][2]} − "
                                      f"{comps[n]['b'][0]} {comps[n]['b'][1]}×{comps[n]['b'][2]}" for n in names],
                  fontsize=8)
    ax.set_xlabel(f"test accuracy a − b, points\n({record['settings']['test_tasks']} paired tasks, "
                  f"{record['settings']['seeds']} seeds, 95 % intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"{record['settings']['benchmark']}, {record['settings']['train']['iterations']} iterations, cosine schedule, "
                 f"best validation", fontsize=10)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


def run(out_dir=DEFAULT_OUT, quick: bool = False, *, runs=None, seeds: int | None = None,
        iterations: int | None = None, comparisons=None, jobs: int = 1, threads: int | None = 1, data_root=None,
        command: str | None = None) -> dict:
    """Train what is missing, score, write ``<out_dir>/depth_width_seeds.{png,json}``; the JSON's dict."""
    size = {**(QUICK if quick else FULL)}
    size["train"] = dict(size["train"])
    if seeds is not None:
        size["seeds"] = _validate.integer(seeds, "seeds", minimum=2)
    if iterations is not None:
        size["train"]["iterations"] = _validate.integer(iterations, "iterations", minimum=1)
    if comparisons is not None:
        size["comparisons"] = tuple(comparisons)
    jobs = _validate.integer(jobs, "jobs", minimum=1)
    if threads is not None:
        threads = _validate.integer(threads, "threads", minimum=1)
    chosen = _comparisons(size, quick)
    runs = pathlib.Path(runs) if runs is not None else DEFAULT_RUNS / ("quick" if quick else "full")
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentNotADirectoryError("out", f"{out_dir} is not a folder")
    began = time.perf_counter()
    records = train_all(size, chosen, runs, quick, jobs=jobs, threads=threads, data_root=data_root)
    record = {"figure": NAME,
              "settings": {**size, "comparisons": list(size["comparisons"]), "quick": bool(quick), "jobs": jobs,
                           "threads": threads, "runs": str(runs),
                           "benchmark": "pure noise (quick)" if quick else "omniglot 5-way 1-shot",
                           "test": "600 fixed tasks, task seed 0, 15 query per class" if not quick else "noise",
                           "selection": "best validation (best.pt), validation split only"},
              "command": command or "", "machine": machine(),
              "comparisons": analyse(records, chosen, size["seeds"]), "plateau": plateau_summary(records),
              "runs": records,
              "seconds": round(time.perf_counter() - began, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    draw(record, out_dir / f"{NAME}.png")
    _io.atomic_write_json(out_dir / f"{NAME}.json", record)
    return record


def plateau_summary(records: list[dict]) -> dict:
    """Over all runs: how many were plateaued (:func:`plateau`), the largest last-quarter and
    second-half validation gains (points), and the best iterations."""
    gains = [r["plateau"]["last_quarter_gain"] for r in records if r["plateau"]["last_quarter_gain"] is not None]
    halves = [r["plateau"]["second_half_gain"] for r in records if r["plateau"]["second_half_gain"] is not None]
    return {"runs": len(records), "plateaued": sum(bool(r["plateau"]["plateaued"]) for r in records),
            "largest_last_quarter_gain": max(gains) if gains else None,
            "largest_second_half_gain": max(halves) if halves else None,
            "best_iterations": sorted(r["best_iteration"] for r in records)}


def summary_lines(record: dict) -> list[str]:
    """One line per comparison: the mean difference, both intervals, and the verdict."""
    lines = []
    for name, c in record["comparisons"].items():
        cr, sd = c["crossed"], c["over_seeds"]
        seeds = ", ".join(f"{p['mean']:+.2f}" for p in c["per_seed"])
        lines.append(f"{name}: {cr['mean']:+.2f} points, 95 % [{cr['low']:+.2f}, {cr['high']:+.2f}] (seeds and tasks, "
                     f"t with {cr['dof']} dof; Satterthwaite ± {cr['satterthwaite']['half_width']:.2f}); over seeds "
                     f"only ± {sd['half_width']:.2f}; per seed pair {seeds}: {c['verdict']} "
                     f"(Satterthwaite: {c['verdict_satterthwaite']})")
    p = record["plateau"]
    lines.append(f"plateau: {p['plateaued']} of {p['runs']} runs gained less than their validation interval over the "
                 f"last quarter (largest gain {p['largest_last_quarter_gain'] or 0:.2f} points); best iterations {p['best_iterations']}")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output folder (default: figures/)")
    parser.add_argument("--runs", type=pathlib.Path, default=None,
                        help=f"folder of the run folders (default: {DEFAULT_RUNS}/full, or /quick)")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per arm (default 3)")
    parser.add_argument("--iterations", type=int, default=None, help="training budget per run (default 2000)")
    parser.add_argument("--comparisons", nargs="+", default=None,
                        help=f"which comparisons (default {' '.join(DEFAULT_COMPARISONS)}; also anil_vs_maml_4x64)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, in separate processes (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--data-root", default=None, help="datasets folder (default: $LINMAML_DATA)")
    parser.add_argument("--quick", action="store_true", help="pure-noise data, tiny networks, a few iterations")
    parser.add_argument("--measure", action="store_true",
                        help=f"only time {MEASURE_ITERATIONS} iterations of each planned configuration and estimate "
                             f"the plan's CPU time (writes {NAME}_measure.json)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "analysis/depth_width_seeds.py", *argv])
    try:
        if args.measure:
            size = {**(QUICK if args.quick else FULL)}
            size["train"] = dict(size["train"])
            if args.seeds is not None:
                size["seeds"] = _validate.integer(args.seeds, "seeds", minimum=2)
            if args.iterations is not None:
                size["train"]["iterations"] = _validate.integer(args.iterations, "iterations", minimum=1)
            if args.comparisons is not None:
                size["comparisons"] = tuple(args.comparisons)
            result = measure(size, _comparisons(size, args.quick), data_root=args.data_root, quick=args.quick,
                             threads=_validate.integer(args.threads, "threads", minimum=1))
            result["command"] = command
            args.out.mkdir(parents=True, exist_ok=True)
            _io.atomic_write_json(args.out / f"{NAME}_measure.json", result)
            for r in result["configurations"]:
                print(f"{r['algo']} {r['blocks']}×{r['filters']}: {r['cpu_seconds_per_iteration']:.3f} CPU s "
                      f"({r['seconds_per_iteration']:.3f} wall s) per iteration, "
                      f"{1000 * r['cpu_seconds_per_task_scored']:.1f} CPU ms per test task")
            print(f"{result['runs']} runs × {result['iterations']} iterations: {result['total_cpu_seconds'] / 3600:.2f} "
                  f"CPU hours ({result['training_cpu_seconds']:.0f} s training, "
                  f"{result['validation_and_test_cpu_seconds']:.0f} s validation and test); "
                  f"{result['total_seconds'] / 3600:.2f} hours of wall time at this load "
                  f"(load average {result['machine']['load_average_at_end']})")
            return 0
        record = run(args.out, args.quick, runs=args.runs, seeds=args.seeds, iterations=args.iterations,
                     comparisons=args.comparisons, jobs=args.jobs, threads=args.threads, data_root=args.data_root,
                     command=command)
    except (ValueError, TypeError, OSError) as error:
        return report_error(NAME, error)
    print("\n".join(summary_lines(record)))
    print(f"wrote {args.out / (NAME + '.png')} and {NAME}.json in {record['seconds']:.0f} s", file=sys.stderr)
    return 0
