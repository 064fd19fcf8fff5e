"""Where MAML adapts in the 4-block CNN on real Omniglot: ``linmaml analyze`` drawn for the README.

Trains second-order MAML on Omniglot 5-way 1-shot with ``linmaml train``'s defaults (4 blocks of 64
filters, stride-2 convolutions, 1 inner step of 0.4 in training and 3 at test, meta-batch 16,
Adam 1e-3, 4,000 iterations: the README's run) into ``<runs>/maml-b4-f64/`` — or reuses a given
run folder (``--run``), or resumes an interrupted one — and then runs
:func:`linmaml.benchmarks.layerwise.analyze_run` on the 600 fixed test tasks: per-tensor relative
inner-loop update, per-block CKA of the query features before and after adaptation, the
adaptation ablation (all / head / all but head / each block / none, 95% CIs) and the bottom
layer's effective preconditioner spectrum. Writes ``<out>/layers.png`` (the four panels of
:func:`linmaml.plots.layerwise.draw`) and ``<out>/layers.json`` (the analysis, the training
settings, the command and the machine).

Not part of ``linmaml reproduce`` (training takes about 16 minutes on 2 cores). ``--quick``:
4 blocks of 8 filters, 6 iterations, 10 test tasks (seconds), for the tests.

Run: ``python analysis/fig_layers.py [--run DIR | --runs DIR] [--out DIR] [--tasks N] [--threads N]
[--quick] [--data-root DIR]``; ``--redraw`` redraws ``layers.png`` from ``layers.json`` alone.
"""
from __future__ import annotations

import argparse
import io
import pathlib
import shlex
import sys
import time

from linmaml.errors import ArgumentNotADirectoryError

NAME = "layers"
REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_RUNS = REPO / "runs" / "layers"
DEFAULT_OUT = REPO / "figures"

FULL = {"tasks": 600, "train": {"algo": "maml", "layers": 4, "hidden": 64, "iterations": 4000}}
QUICK = {"tasks": 10, "train": {"algo": "maml", "layers": 4, "hidden": 8, "iterations": 6, "meta_batch": 4,
                                "val_every": 6, "val_tasks": 4}}


def run(out_dir=DEFAULT_OUT, quick: bool = False, *, run_dir=None, runs=None, tasks: int | None = None,
        threads: int | None = None, data_root=None, command: str = "") -> dict:
    """Train or reuse the run, analyze it, write ``<out_dir>/layers.{png,json}``; return the JSON's dict."""
    import torch

    from linmaml import _io, _validate
    from linmaml.analysis.depth_width import machine
    from linmaml.benchmarks import layerwise
    from linmaml.benchmarks.train import train
    from linmaml.plots import layerwise as drawing

    size = QUICK if quick else FULL
    tasks = size["tasks"] if tasks is None else _validate.integer(tasks, "tasks", minimum=2)
    if threads is not None:
        torch.set_num_threads(_validate.integer(threads, "threads", minimum=1))
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentNotADirectoryError("out", f"{out_dir} is not a folder")
    began = time.perf_counter()
    trained = None
    if run_dir is None:
        runs = pathlib.Path(runs) if runs is not None else DEFAULT_RUNS / ("quick" if quick else "full")
        run_dir = runs / f"maml-b{size['train']['layers']}-f{size['train']['hidden']}"
        print(f"[layers] training (or resuming) {run_dir}", file=sys.stderr, flush=True)
        from linmaml.benchmarks import checkpoint

        # resume a run that has a checkpoint; start one that has none (resume refuses an empty folder)
        result = train(size["train"], run_dir, resume=checkpoint.has_checkpoint(run_dir), data_root=data_root, progress=not quick,
                       stream=sys.stderr if not quick else io.StringIO())
        if result.status != "done":
            raise RuntimeError(f"{run_dir}: training ended with {result.status}: {result.message}")
        trained = {"status": result.status, "message": result.message}
    result = layerwise.analyze_run(run_dir, tasks=tasks, data_root=data_root, stream=sys.stderr)
    record = {"figure": NAME, **result, "run": str(run_dir), "training": trained,
              "settings_requested": {**size, "quick": bool(quick)}, "command": command, "machine": machine(),
              "total_seconds": round(time.perf_counter() - began, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    drawing.draw(result, out_dir / f"{NAME}.png")
    _io.atomic_write_json(out_dir / f"{NAME}.json", record)
    return record


def redraw(out_dir) -> int:
    """Redraw ``<out_dir>/layers.png`` from ``<out_dir>/layers.json`` with the current drawing code
    (:func:`linmaml.plots.layerwise.draw`): the numbers are the JSON's, unchanged."""
    import json

    from linmaml.plots import layerwise as drawing

    out_dir = pathlib.Path(out_dir)
    record = json.loads((out_dir / f"{NAME}.json").read_text(encoding="utf-8"))
    drawing.draw(record, out_dir / f"{NAME}.png")
    print(f"redrew {out_dir / (NAME + '.png')} from {NAME}.json", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output folder (default: figures/)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run", type=pathlib.Path, default=None, help="analyze this trained run folder (no training)")
    where.add_argument("--runs", type=pathlib.Path, default=None,
                       help=f"train into this folder's maml-b4-f64/ (default: {DEFAULT_RUNS}/full)")
    parser.add_argument("--tasks", type=int, default=None, help="fixed test tasks (default 600)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--data-root", default=None, help="datasets folder (default: $LINMAML_DATA)")
    parser.add_argument("--quick", action="store_true", help="4 blocks of 8 filters, 6 iterations, 10 tasks")
    parser.add_argument("--redraw", action="store_true",
                        help="only redraw <out>/layers.png from the numbers in <out>/layers.json (no training, no "
                             "analysis): for a change of the drawing code")
    args = parser.parse_args(argv)
    if args.redraw:
        return redraw(args.out)
    command = shlex.join(["python", "analysis/fig_layers.py", *argv])
    try:
        record = run(args.out, args.quick, run_dir=args.run, runs=args.runs, tasks=args.tasks, threads=args.threads,
                     data_root=args.data_root, command=command)
    except (ValueError, TypeError, OSError) as error:
        from linmaml.analysis._common import report_error

        return report_error("fig_layers", error)
    from linmaml.plots.layerwise import format_table

    print(format_table(record))
    print(f"wrote {args.out / (NAME + '.png')} and {NAME}.json in {record['total_seconds']:.0f} s", file=sys.stderr)
    return 0
