"""``linmaml evaluate``: mean accuracy with a 95% confidence interval on the fixed test tasks."""
from __future__ import annotations

import json
import sys

from linmaml import _validate
from linmaml.benchmarks.allocator import ALLOCATOR_HELP, ALLOCATORS, apply_for_command, default_policy
from linmaml.benchmarks.progress import safe_write
from linmaml.benchmarks.run_settings import data_root_for, threads_for
from linmaml.cli._model import add_model_options, model_from_args
from linmaml.cli._paths import path_option, user_model_error
from linmaml.errors import ArgumentError, renamed


def register(subparsers):
    p = subparsers.add_parser("evaluate", help="score a training checkpoint on the fixed meta-test tasks",
                              description="Adapt on each fixed test task's support set and score its query set;"
                                          " prints mean accuracy ± 95% CI (1.96·s/√n over tasks).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?", default=None,
                   help="a .pt written by linmaml train (best.pt, last.pt, snapshots/iter-<t>.pt), or its --out "
                        "folder (then its best.pt, else its newest last.pt)")
    p.add_argument("--pretrained", metavar="NAME", default=None,
                   help="score a released network instead of a CHECKPOINT (names: linmaml.benchmarks.pretrained.names())")
    p.add_argument("--tasks", type=int, default=600, help="number of fixed test tasks (default 600)")
    p.add_argument("--steps", type=int, default=None, help="inner steps at test time (default: the run's --test-steps; 0 scores before adaptation)")
    p.add_argument("--query", type=int, default=15, help="query examples per class (default 15)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default test)")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the fixed task set (default 0)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="datasets folder (default: the one the run was trained on, else $LINMAML_DATA, else the "
                        "per-user cache)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: the run's own, else 1: several threads on busy cores can "
                        "run many times slower; on an idle machine with many cores try 4)")
    p.add_argument("--allocator", choices=ALLOCATORS, default=None, help=ALLOCATOR_HELP)
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (accuracy as a fraction)")
    p.add_argument("--quiet", action="store_true", help="no progress line (tasks scored, ETA) on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: torch and the scoring library load when the command runs, not at `linmaml --help`
    # (build_parser imports every command module)
    import torch

    from linmaml.benchmarks.config import EVAL_TASKS_MAX, SEED_MAX, STEPS_MAX, THREADS_MAX
    from linmaml.benchmarks.evaluate import evaluate_checkpoint

    # Ranges checked before any data is read (maxima explained in linmaml.benchmarks.config); --query's
    # bound is the split's examples per class, known once the data is loaded.
    _validate.integer(args.tasks, "--tasks", minimum=2, maximum=EVAL_TASKS_MAX)
    if args.steps is not None:
        _validate.integer(args.steps, "--steps", minimum=0, maximum=STEPS_MAX)  # 0: before adaptation
    _validate.integer(args.task_seed, "--task-seed", minimum=0, maximum=SEED_MAX)
    # ~ expanded (also after '=', where the shell leaves it), '' refused; the checkpoint used is printed
    checkpoint, data_root = _checkpoint_of(args), path_option(args.data_root, "--data-root")
    if args.threads is not None:
        _validate.integer(args.threads, "--threads", minimum=1, maximum=THREADS_MAX)
    # the run's own threads and data root unless given (linmaml.benchmarks.run_settings)
    torch.set_num_threads(threads_for(args.threads, checkpoint))
    data_root = data_root_for(data_root, checkpoint)
    apply_for_command(args.allocator or default_policy(), "linmaml evaluate")
    try:
        result = evaluate_checkpoint(checkpoint, tasks=args.tasks, steps=args.steps, query=args.query,
                                     split=args.split, task_seed=args.task_seed, data_root=data_root,
                                     device=args.device, progress=not args.quiet, model=model_from_args(args))
    except ArgumentError as error:  # the library names its argument (error.argument); the user typed the flag
        if error.argument == "model":
            raise user_model_error(checkpoint, error) from error
        flag = renamed(error, {name: "--" + name.replace("_", "-") for name in ("tasks", "steps", "query", "task_seed")})
        if flag is error:
            raise
        raise flag from error
    if result.get("nonfinite_tasks"):
        safe_write(sys.stderr, f"linmaml evaluate: warning: the adapted query loss is not finite on "
                               f"{result['nonfinite_tasks']} of {result['tasks']} tasks (the inner loop diverged); "
                               f"try fewer --steps\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        s = result["settings"]
        print(f"accuracy {100 * result['accuracy']:.2f} % ± {100 * result['ci95']:.2f} % (95% CI over {result['tasks']} {s['split']}"
              f" tasks, {s['ways']}-way {s['shots']}-shot, {_steps_words(s['steps'])}; checkpoint {result['checkpoint']},"
              f" iteration {result['iteration']})")
    return 0


def _checkpoint_of(args):
    """CHECKPOINT, or the released network ``--pretrained NAME`` (checked against its sha256); one of the two."""
    if args.checkpoint is None and args.pretrained is None:
        raise ArgumentError("CHECKPOINT", "required (a .pt or a run folder; or --pretrained NAME for a released network)")
    if args.checkpoint is not None and args.pretrained is not None:
        raise ArgumentError("--pretrained", "give a CHECKPOINT or --pretrained NAME, not both")
    if args.pretrained is None:
        return path_option(args.checkpoint, "CHECKPOINT")
    from linmaml.benchmarks import pretrained  # lazy: imports torch (not at `linmaml --help`)

    try:
        return pretrained.path(args.pretrained)
    except ArgumentError as error:
        raise ArgumentError("--pretrained", error.detail) from error


def _steps_words(steps: int) -> str:
    """``1 inner step``, ``3 inner steps``, ``0 inner steps (before adaptation)``."""
    return f"{steps} inner step{'' if steps == 1 else 's'}" + (" (before adaptation)" if steps == 0 else "")
