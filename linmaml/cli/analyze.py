"""``linmaml analyze``: where a trained network adapts, layer by layer (measured by
:mod:`linmaml.benchmarks.layerwise`, tabulated and drawn by :mod:`linmaml.plots.layerwise`)."""
from __future__ import annotations

import json
import sys

from linmaml import _io, _validate
from linmaml._extras import require
from linmaml.benchmarks.allocator import ALLOCATOR_HELP, ALLOCATORS, apply_for_command, default_policy
from linmaml.benchmarks.progress import safe_write
from linmaml.benchmarks.run_settings import data_root_for, threads_for
from linmaml.cli._model import add_model_options, model_from_args
from linmaml.cli._paths import folder_can_hold, path_option, user_model_error
from linmaml.plots import layerwise as tables


def register(subparsers):
    p = subparsers.add_parser(
        "analyze", help="per-layer inner-loop updates, CKA, adaptation ablation and preconditioner spectrum of a run",
        description="On the fixed test tasks of linmaml evaluate: each parameter's relative inner-loop update "
                    "|dθ|/|θ|, each block's linear CKA between query features before and after adaptation, the "
                    "accuracy (95% CI) when only some layers adapt, and the spectrum of the preconditioner the "
                    "network applies to its bottom layer's step.")
    p.add_argument("run", metavar="RUN", help="a run folder of linmaml train (its best.pt, else its newest last.pt) "
                                              "or a .pt it wrote (best.pt, last.pt, snapshots/iter-<t>.pt)")
    p.add_argument("--tasks", type=int, default=600, help="number of fixed test tasks (default 600)")
    p.add_argument("--steps", type=int, default=None, help="inner steps (default: the run's --test-steps)")
    p.add_argument("--spectrum-tasks", type=int, default=20,
                   help="tasks whose support sets give the preconditioner spectrum (default 20; 0 skips it)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="datasets folder (default: the one the run was trained on, else $LINMAML_DATA, else the "
                        "per-user cache)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: the run's own, else 1; several threads on busy cores can "
                        "run many times slower)")
    p.add_argument("--allocator", choices=ALLOCATORS, default=None, help=ALLOCATOR_HELP)
    add_model_options(p)
    p.add_argument("--feature-reuse", action="store_true",
                   help="instead, Raghu et al. 2020's measurements on the same tasks: accuracy with the first "
                        "1, 2, ... layers frozen at test time, each layer's CKA before vs after the inner loop, "
                        "and NIL (no inner loop: nearest class mean of the penultimate features, cosine and "
                        "Euclidean)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--out", default=None, metavar="DIR", help="also write DIR/analyze.{png,json}")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: torch and the measuring library load when the command runs, not at `linmaml --help`
    # (build_parser imports every command module)
    import torch

    from linmaml.benchmarks import layerwise
    from linmaml.benchmarks.config import EVAL_TASKS_MAX, STEPS_MAX, THREADS_MAX

    # maxima as for evaluate (explained in linmaml.benchmarks.config): checked before anything is read
    if args.threads is not None:
        _validate.integer(args.threads, "--threads", minimum=1, maximum=THREADS_MAX)
    for value, name, minimum, maximum in ((args.tasks, "--tasks", 2, EVAL_TASKS_MAX),
                                          (args.spectrum_tasks, "--spectrum-tasks", 0, EVAL_TASKS_MAX)):
        _validate.integer(value, name, minimum=minimum, maximum=maximum)
    if args.steps is not None:
        _validate.integer(args.steps, "--steps", minimum=1, maximum=STEPS_MAX)
    run_path = path_option(args.run, "RUN")  # ~ expanded (also in RUN=~/r), '' refused (not the current folder)
    out = path_option(args.out, "--out")  # ~ expanded (also in --out=~/x), '' refused
    if out is not None:
        folder_can_hold(out, "--out")  # before the analysis, not after it
        require("matplotlib", "--out (drawing analyze.png)")
    # the run's own threads and data root unless given (linmaml.benchmarks.run_settings); was: every core
    torch.set_num_threads(threads_for(args.threads, run_path))
    data_root = data_root_for(path_option(args.data_root, "--data-root"), run_path)
    apply_for_command(args.allocator or default_policy(), "linmaml analyze")
    if args.feature_reuse:
        return _feature_reuse(args, run_path, data_root, out)
    try:
        result = layerwise.analyze_run(run_path, tasks=args.tasks, steps=args.steps,
                                       spectrum_tasks=args.spectrum_tasks, data_root=data_root, stream=sys.stderr,
                                       model=model_from_args(args))
    except ValueError as error:
        if getattr(error, "argument", None) == "model":
            raise user_model_error(run_path, error, "analyze_run", "linmaml.benchmarks.layerwise") from error
        raise
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tables.draw(result, out / "analyze.png")
        _io.atomic_write_json(out / "analyze.json", result)
        safe_write(sys.stderr, f"linmaml analyze: wrote {out / 'analyze.png'} and {out / 'analyze.json'}\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(tables.format_table(result))
    return 0


def format_feature_reuse(report: dict) -> str:
    """The three measurements of :func:`linmaml.benchmarks.feature_reuse.feature_reuse_report` as text."""
    def cell(value):
        return f"{value['mean']:6.2f} % ± {value['ci95']:.2f}"

    lines = [f"feature reuse on {report['tasks']} test tasks (Raghu et al. 2020; 95% CI over tasks, "
             f"differences paired on the same tasks)",
             f"own adaptation                 {cell(report['own'])}", "", "layers frozen at test time:"]
    for row in report["freezing"][1:]:
        lines.append(f"  {', '.join(row['frozen']):<28} {cell(row['accuracy'])}   minus own "
                     f"{row['minus_own']['mean']:+.2f} ± {row['minus_own']['ci95']:.2f}")
    lines += ["", "CKA of each layer's output before vs after the inner loop (mean over tasks):"]
    lines += [f"  {name:<28} {value:.3f}" for name, value in report["cka_before_after"].items()]
    lines += ["", "NIL (no inner loop; nearest class mean of the penultimate support features):"]
    for kind, value in report["nil"].items():
        lines.append(f"  {kind:<28} {cell(value['accuracy'])}   minus own {value['minus_own']['mean']:+.2f} ± "
                     f"{value['minus_own']['ci95']:.2f}")
    return "\n".join(lines)


def _feature_reuse(args, run_path, data_root, out) -> int:
    # lazy: torch loads when the command runs, not at `linmaml --help`
    from linmaml.benchmarks.feature_reuse import feature_reuse_report
    from linmaml.benchmarks.run import Run

    run = Run.open(run_path, model=model_from_args(args))
    tasks = run.tasks("test", count=args.tasks, data_root=data_root)
    steps = args.steps if args.steps is not None else run.config.test_steps
    report = feature_reuse_report(run.learner, tasks, run.learner.step_rates(steps), ways=run.config.ways)
    report.update(run=str(run.file), iteration=run.iteration, steps=steps)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _io.atomic_write_json(out / "feature_reuse.json", report)
    print(json.dumps(report) if args.json else format_feature_reuse(report))
    return 0
