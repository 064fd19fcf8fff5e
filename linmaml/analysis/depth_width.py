"""Depth × width sweep on real Omniglot 5-way 1-shot: does MAML adapt better with a deeper or wider CNN?

The paper's first claim: MAML adapts better with a deeper (or wider) network even when the tasks
need only a shallow one. Each cell of the grid (algo ∈ {maml (second order), anil}) × (blocks ∈
{1, 2, 3, 4}) × (filters ∈ {8, 16, 32, 64}) is trained with the SAME budget through
:func:`linmaml.benchmarks.train.train` — iterations, meta-batch 16, 1 inner step of 0.4 in
training and 3 at test, Adam 1e-3, 5 query examples per class, seed 0, validation on 100 fixed tasks
every 200 iterations — then its ``best.pt`` (by validation) is scored on the 600 fixed test tasks
(:func:`linmaml.benchmarks.evaluate.evaluate_checkpoint`, mean ± 95% CI), and also *before*
adaptation (0 inner steps, :func:`linmaml.benchmarks.layerwise.accuracy_before_adaptation`), so the
figure separates "learns better features" (accuracy before) from "adapts better" (the gain).

Budget: 800 iterations per cell. Measured with ``--threads 1`` on this project's 2-core machine
(load 0.6–1.3 while measuring, i.e. nearly idle), seconds per meta-iteration of the default
training step (iterations 3–5 of a 6-iteration run; filters 8 / 16 / 32 / 64):

==========  =============================  =============================
blocks      maml                           anil
==========  =============================  =============================
1           0.050 0.068 0.110 0.124        0.043 0.060 0.078 0.103
2           0.078 0.100 0.135 0.221        0.057 0.073 0.093 0.149
3           0.098 0.120 0.159 0.317        0.097 0.081 0.101 0.218
4           0.202 0.150 0.294 0.362        0.101 0.093 0.259 0.206
==========  =============================  =============================

One iteration of all 32 cells costs 4.4 core-seconds, so 800 iterations are 3,500 core-seconds of
training, plus about 25 core-seconds per cell for validation and the two test scorings (800 in
all): 4,300 core-seconds, i.e. 36 min with ``--jobs 2`` on 2 idle cores, or about 45–60 min with
the slowdown of two processes sharing memory bandwidth and a moderately busy machine. 800
iterations is also where MAML on the 4-block CNN is well past its steep phase (about 90% test
accuracy, see the README's training curve), so the cells compare trained networks, not starts.

Runs live in ``<runs>/<algo>-b<blocks>-f<filters>/`` (``linmaml train``'s folder). A cell whose
folder is complete with the same settings is not retrained; an interrupted one resumes exactly
(``train(..., resume=True)``); a folder with other settings or more iterations is an error (use
another ``--runs``). ``--jobs N`` trains N cells at once in separate processes (``--threads``
torch threads each, default 1), most expensive first. Progress (cells done, iterations, ETA) goes
to stderr.

Writes ``<out>/depth_width.png`` and ``<out>/depth_width.json`` (``cells``: algo, blocks,
filters, accuracy, ci95, accuracy_before_adaptation, ci95_before_adaptation, meta_parameters,
train_seconds, iterations, run folder; accuracies in percent; the settings, the exact command and
the machine). Not part of ``linmaml reproduce`` (an hour); ``--quick`` (2 depths × 2 widths × 2
algos, a few iterations, under a minute) is what the tests run.

Run: ``python analysis/fig_depth_width.py [--runs DIR] [--out DIR] [--jobs N] [--threads N]
[--iterations N] [--quick] [--data-root DIR]``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import io
import multiprocessing
import os
import pathlib
import platform
import shlex
import sys
import time

import torch

from linmaml import _io, _validate
from linmaml.analysis._common import report_error
from linmaml.benchmarks import checkpoint, episodes, layerwise
from linmaml.benchmarks.data import load_splits
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.run import Run
from linmaml.benchmarks.run_files import CONFIG, METRICS
from linmaml.benchmarks.scoring import mean_ci95
from linmaml.benchmarks.train import train
from linmaml.errors import ArgumentError, ArgumentNotADirectoryError
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import default_out, default_runs

NAME = "depth_width"
# The source checkout's runs/ and figures/ when linmaml runs from one, else the current folder's
# (a wheel's package folder is in site-packages: never a place to train into or write figures).
DEFAULT_RUNS = default_runs("depth-width")
DEFAULT_OUT = default_out()

#: The same training budget for every cell (TrainConfig fields). ``iterations``: module docstring.
FULL = {"algos": ("maml", "anil"), "blocks": (1, 2, 3, 4), "filters": (8, 16, 32, 64), "test_tasks": 600,
        "train": {"iterations": 800, "meta_batch": 16, "steps": 1, "test_steps": 3, "inner_lr": 0.4,
                  "outer_lr": 1e-3, "query": 5, "seed": 0, "val_every": 200, "val_tasks": 100}}
QUICK = {"algos": ("maml", "anil"), "blocks": (1, 2), "filters": (4, 8), "test_tasks": 10,
         "train": {"iterations": 4, "meta_batch": 4, "steps": 1, "test_steps": 3, "inner_lr": 0.4,
                   "outer_lr": 1e-3, "query": 5, "seed": 0, "val_every": 4, "val_tasks": 4}}

#: Measured seconds per iteration (1 thread; module docstring): cost weights for scheduling and the ETA.
SECONDS_PER_ITERATION = {
    "maml": {1: (0.050, 0.068, 0.110, 0.124), 2: (0.078, 0.100, 0.135, 0.221), 3: (0.098, 0.120, 0.159, 0.317),
             4: (0.202, 0.150, 0.294, 0.362)},
    "anil": {1: (0.043, 0.060, 0.078, 0.103), 2: (0.057, 0.073, 0.093, 0.149), 3: (0.097, 0.081, 0.101, 0.218),
             4: (0.101, 0.093, 0.259, 0.206)},
}


def cost(algo: str, blocks: int, filters: int) -> float:
    """Estimated seconds per iteration of a cell (measured table; otherwise scaled from its nearest entry)."""
    widths = (8, 16, 32, 64)
    table = SECONDS_PER_ITERATION.get(algo, SECONDS_PER_ITERATION["maml"])
    row = table.get(min(max(blocks, 1), 4))
    if filters in widths:
        return row[widths.index(filters)] * max(blocks, 1) / min(max(blocks, 1), 4)
    return row[0] * max(filters, 1) / 8 * max(blocks, 1) / min(max(blocks, 1), 4)


def cell_name(algo: str, blocks: int, filters: int) -> str:
    return f"{algo}-b{blocks}-f{filters}"


def cells(size: dict) -> list[tuple[str, int, int]]:
    """Every (algo, blocks, filters) of the grid, most expensive first (so parallel jobs end together)."""
    grid = [(a, b, f) for a in size["algos"] for b in size["blocks"] for f in size["filters"]]
    return sorted(grid, key=lambda c: -cost(*c))


def options(size: dict, algo: str, blocks: int, filters: int) -> dict:
    """The ``linmaml train`` settings of one cell."""
    return {**size["train"], "benchmark": "omniglot", "ways": 5, "shots": 1, "algo": algo, "layers": blocks,
            "hidden": filters}


_SPLITS = {}


def _splits(data_root):
    """Omniglot's three splits, loaded once per process."""
    key = str(data_root)
    if key not in _SPLITS:
        _SPLITS[key] = load_splits("omniglot", ("train", "val", "test"), data_root)
    return _SPLITS[key]


def check_folder(run_dir: pathlib.Path, settings: dict) -> int:
    """The iterations already in a cell's folder (0 if none). A folder trained with other settings, or
    with more iterations than ``settings["iterations"]`` (the cell would not have the common budget),
    is a ValueError naming the setting — checked for every cell before any training."""

    if not run_dir.exists():
        return 0
    payload = checkpoint.load_latest(run_dir)
    saved = payload["config"] if payload is not None else None
    if saved is None and (run_dir / CONFIG).exists():
        saved = _io.load_json(run_dir / CONFIG).get("config")  # bounded regular file, never a FIFO
    for key, value in settings.items():
        if saved is not None and key != "iterations" and saved.get(key) != value:
            raise ArgumentError(key, f"{run_dir} was trained with {saved.get(key)!r}, the sweep uses {value!r}; use"
                                     f" another --runs")
    done = 0 if payload is None else int(payload["iteration"])
    if done > settings["iterations"]:
        raise ArgumentError("iterations", f"{run_dir} holds {done} iterations, more than the sweep's "
                                          f"{settings['iterations']}; use another --runs")
    return done


def run_cell(algo: str, blocks: int, filters: int, size: dict, runs, data_root=None, threads: int | None = None) -> dict:
    """Train (or reuse, or resume) one cell, score it, and return its record (accuracies in percent)."""
    if threads is not None:
        torch.set_num_threads(threads)
    run_dir = pathlib.Path(runs) / cell_name(algo, blocks, filters)
    settings = options(size, algo, blocks, filters)
    check_folder(run_dir, settings)
    splits = _splits(data_root)
    # resume a cell that has a checkpoint; start one that has none (--resume refuses an empty folder)
    result = train(settings, run_dir, resume=checkpoint.has_checkpoint(run_dir), splits=splits, progress=False, stream=io.StringIO())
    if result.status != "done":
        raise RuntimeError(f"{run_dir.name}: training ended with {result.status}: {result.message}")
    evaluation = evaluate_checkpoint(run_dir, tasks=size["test_tasks"], splits={"test": splits["test"]})
    run = Run.open(run_dir)
    config, learner = run.config, run.learner
    tasks = episodes.evaluation_tasks(splits["test"], config.ways, config.shots, config.test_query,
                                      count=size["test_tasks"], seed=0)
    before, before_ci = mean_ci95(100 * layerwise.accuracy_before_adaptation(learner, tasks, dtype=config.torch_dtype))
    last = checkpoint.load_latest(run_dir)
    return {"algo": algo, "blocks": blocks, "filters": filters,
            "accuracy": 100 * evaluation["accuracy"], "ci95": 100 * evaluation["ci95"],
            "accuracy_before_adaptation": before, "ci95_before_adaptation": before_ci,
            "meta_parameters": int(sum(p.numel() for p in learner.parameters())),
            "train_seconds": round(float(last["elapsed"]), 2), "iterations": int(last["iteration"]),
            "best_iteration": evaluation["iteration"], "test_steps": config.test_steps, "run": str(run_dir)}


def _log(text: str) -> None:
    print(f"[depth_width] {text}", file=sys.stderr, flush=True)


def _iterations_done(run_dir: pathlib.Path) -> int:
    try:
        with open(run_dir / METRICS, "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return 0


class _Eta:
    """Progress across cells: each cell's remaining training iterations plus its scoring, weighted by
    its measured cost per iteration (scoring 10 test tasks counted as about one iteration)."""

    def __init__(self, grid, size, runs):
        self.grid, self.runs = grid, pathlib.Path(runs)
        self.iterations = size["train"]["iterations"]
        self.scoring = size["test_tasks"] / 10
        self.start_done = {c: self._done(c) for c in grid}
        self.total = sum(cost(*c) * (self.iterations - self.start_done[c] + self.scoring) for c in grid)
        self.started = time.perf_counter()

    def _done(self, cell) -> int:
        return min(_iterations_done(self.runs / cell_name(*cell)), self.iterations)

    def report(self, finished) -> None:
        done = sum(cost(*c) * (self._done(c) - self.start_done[c] + (self.scoring if c in finished else 0))
                   for c in self.grid)
        fraction = min(done / self.total, 1.0) if self.total > 0 else 1.0
        elapsed = time.perf_counter() - self.started
        eta = f"{elapsed * (1 - fraction) / fraction / 60:.1f} min" if fraction > 0 else "unknown"
        _log(f"{len(finished)}/{len(self.grid)} cells scored, {100 * fraction:.0f}% of the work done, "
             f"{elapsed / 60:.1f} min elapsed, eta {eta}")


def sweep(size: dict, runs, *, jobs: int = 1, threads: int | None = 1, data_root=None) -> list[dict]:
    """Every cell's record (in grid order: algo, blocks, filters), training what is missing."""
    grid = cells(size)
    runs = pathlib.Path(runs)
    runs.mkdir(parents=True, exist_ok=True)
    for cell in grid:  # refuse a bad folder before any training
        check_folder(runs / cell_name(*cell), options(size, *cell))
    eta = _Eta(grid, size, runs)
    records = {}
    if jobs == 1:
        for cell in grid:
            records[cell] = run_cell(*cell, size, runs, data_root, threads)
            _log(f"{cell_name(*cell)}: {records[cell]['accuracy']:.2f} ± {records[cell]['ci95']:.2f}%")
            eta.report(records)
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            running = {pool.submit(run_cell, *cell, size, str(runs), data_root, threads): cell for cell in grid}
            try:
                while running:
                    finished, _ = futures.wait(running, timeout=30, return_when=futures.FIRST_COMPLETED)
                    for future in finished:
                        cell = running.pop(future)
                        records[cell] = future.result()
                        _log(f"{cell_name(*cell)}: {records[cell]['accuracy']:.2f} ± {records[cell]['ci95']:.2f}%")
                    eta.report(records)
            except BaseException:
                for future in running:
                    future.cancel()
                raise
    order = [(a, b, f) for a in size["algos"] for b in size["blocks"] for f in size["filters"]]
    return [records[c] for c in order]


def machine() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_end": load}


def draw(record: dict, path) -> None:
    """Accuracy after (solid) and before (dashed) adaptation against width, one panel per algo."""
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    algos = list(dict.fromkeys(c["algo"] for c in record["cells"]))
    fig, axes = plt.subplots(1, len(algos), figsize=(6.2 * len(algos), 4.6), sharey=True, squeeze=False)
    for ax, algo in zip(axes[0], algos):
        rows = [c for c in record["cells"] if c["algo"] == algo]
        for i, blocks in enumerate(sorted({c["blocks"] for c in rows})):
            line = sorted((c for c in rows if c["blocks"] == blocks), key=lambda c: c["filters"])
            x = [c["filters"] for c in line]
            ax.errorbar(x, [c["accuracy"] for c in line], yerr=[c["ci95"] for c in line], color=f"C{i}", marker="o",
                        capsize=3, label=f"{blocks} block{'s' if blocks > 1 else ''}: adapted")
            ax.errorbar(x, [c["accuracy_before_adaptation"] for c in line],
                        yerr=[c["ci95_before_adaptation"] for c in line], color=f"C{i}", marker="x", ls="--",
                        capsize=2, alpha=0.6, label="before adaptation" if i == 0 else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({c["filters"] for c in rows}), [str(f) for f in sorted({c["filters"] for c in rows})])
        ax.set_xlabel("filters per block")
        ax.set_title(f"{algo}: Omniglot 5-way 1-shot, {record['settings']['train']['iterations']} iterations",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"test accuracy % ({record['settings']['test_tasks']} tasks, 95% CI)")
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


def run(out_dir=DEFAULT_OUT, quick: bool = False, *, runs=None, jobs: int = 1, threads: int | None = 1,
        iterations: int | None = None, data_root=None, command: str | None = None) -> dict:
    """Sweep, write ``<out_dir>/depth_width.{png,json}``, return the JSON's dict."""
    size = {**(QUICK if quick else FULL)}
    size["train"] = dict(size["train"])
    if iterations is not None:
        size["train"]["iterations"] = _validate.integer(iterations, "iterations", minimum=1)
    jobs = _validate.integer(jobs, "jobs", minimum=1)
    if threads is not None:
        threads = _validate.integer(threads, "threads", minimum=1)
    runs = pathlib.Path(runs) if runs is not None else DEFAULT_RUNS / ("quick" if quick else "full")
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentNotADirectoryError("out", f"{out_dir} is not a folder")
    began = time.perf_counter()
    records = sweep(size, runs, jobs=jobs, threads=threads, data_root=data_root)
    record = {"figure": NAME, "settings": {**size, "quick": bool(quick), "jobs": jobs, "threads": threads,
                                           "runs": str(runs), "benchmark": "omniglot 5-way 1-shot"},
              "cells": records, "command": command or "", "machine": machine(),
              "seconds": round(time.perf_counter() - began, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    draw(record, out_dir / f"{NAME}.png")
    _io.atomic_write_json(out_dir / f"{NAME}.json", record)
    return record


def markdown(record: dict) -> str:
    """The cells as a Markdown table."""
    lines = ["| algo | blocks | filters | test accuracy % | before adaptation % | meta-parameters | train s |",
             "|---|---|---|---|---|---|---|"]
    for c in record["cells"]:
        lines.append(f"| {c['algo']} | {c['blocks']} | {c['filters']} | {c['accuracy']:.1f} ± {c['ci95']:.1f} | "
                     f"{c['accuracy_before_adaptation']:.1f} ± {c['ci95_before_adaptation']:.1f} | "
                     f"{c['meta_parameters']:,} | {c['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output folder (default: figures/)")
    parser.add_argument("--runs", type=pathlib.Path, default=None,
                        help=f"folder of the cells' run folders (default: {DEFAULT_RUNS}/full, or /quick)")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at once, in separate processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    parser.add_argument("--iterations", type=int, default=None, help="override the budget (default 800)")
    parser.add_argument("--data-root", default=None, help="datasets folder (default: $LINMAML_DATA)")
    parser.add_argument("--quick", action="store_true", help="2 depths × 2 widths × 2 algos, a few iterations")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "analysis/fig_depth_width.py", *argv])
    try:
        record = run(args.out, args.quick, runs=args.runs, jobs=args.jobs, threads=args.threads,
                     iterations=args.iterations, data_root=args.data_root, command=command)
    except (ValueError, TypeError, OSError) as error:
        return report_error("fig_depth_width", error)
    print(markdown(record))
    print(f"wrote {args.out / (NAME + '.png')} and {NAME}.json in {record['seconds']:.0f} s", file=sys.stderr)
    return 0
