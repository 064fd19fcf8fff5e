"""``linmaml train``: meta-train MAML / first-order MAML / ANIL on a few-shot benchmark.

Thin: parses the options and calls :func:`linmaml.benchmarks.train.train`. Exit status: 0 done,
2 bad input (including a folder owned by another run), 3 stopped on a non-finite meta-loss or
gradient, 4 another run took the folder over, 130/143 stopped by SIGINT/SIGTERM (a checkpoint is
written first; ``--resume`` continues).
"""
from __future__ import annotations

import dataclasses
import sys

#: Options whose default comes from the run's config (None here means "not given on the command
#: line", which matters for --resume: a resumed run keeps its saved settings).
_CONFIG_OPTIONS = {
    # name: (type, help)
    "ways": (int, "classes per task (N-way; default 5)"),
    "shots": (int, "support examples per class (K-shot; default 1)"),
    "query": (int, "query examples per class in training tasks (default 5; validation and test use 15)"),
    "test_query": (int, "query examples per class in validation tasks (default 15)"),
    "linnet": (int, "append K identity-initialised linear layers after the head (LinNet; default 0: none)"),
    "linnet_width": (int, "width of the LinNet layers (default: the number of ways)"),
    "layers": (int, "conv blocks of the CNN (default 4)"),
    "hidden": (int, "filters per conv block (default 64 for omniglot, 32 otherwise)"),
    "steps": (int, "inner steps in training (default 1)"),
    "test_steps": (int, "inner steps at validation/test time (default 3)"),
    "inner_lr": (float, "inner learning rate (default 0.4)"),
    "outer_lr": (float, "Adam learning rate of the outer loop (default 1e-3)"),
    "meta_batch": (int, "tasks per outer step (default 16)"),
    "iterations": (int, "outer steps in all (default 4000); with --resume, the new end"),
    "val_every": (int, "validate every V iterations (default 250)"),
    "val_tasks": (int, "fixed validation tasks (default 200)"),
    "checkpoint_every": (int, "write last.pt every C iterations (default 50)"),
    "seed": (int, "seed of the initial weights and the training tasks (default 0)"),
    "tasks_per_chunk": (int, "tasks computed together with --batching split or vmap (default 4)"),
}
_CHOICE_OPTIONS = {
    "benchmark": (("omniglot", "cifar-fs", "mini-imagenet"), "the few-shot benchmark (default omniglot)"),
    "algo": (("maml", "fomaml", "anil"), "meta-learning algorithm (default maml: second order)"),
    "transform": (("none", "kfo", "metasgd", "metacurvature"), "meta-optimizer of the inner loop (default none)"),
    "pool": (("max", "stride"), "down-sampling of each conv block (default: stride for omniglot, max otherwise)"),
    "dtype": (("float32", "float64"), "parameter dtype (default float32)"),
    "on_nonfinite": (("stop", "skip"), "on a non-finite meta-loss or gradient: stop (exit 3) or skip the step"
                                      " (default stop)"),
    "batching": (("loop", "split", "vmap"), "how a meta-batch is computed: one task at a time (least memory); "
                                            "inner loops vmapped in chunks, queries one at a time (default: "
                                            "fastest on a CPU); whole chunks vmapped (try on a GPU). The same "
                                            "gradients up to rounding"),
}


def register(subparsers):
    p = subparsers.add_parser("train", help="meta-train on a few-shot benchmark (Omniglot, CIFAR-FS, mini-ImageNet)",
                              description="Meta-train on a few-shot benchmark. Writes metrics.jsonl, last.pt and"
                                          " best.pt into --out; --resume continues a run exactly.")
    for name, (choices, help_text) in _CHOICE_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, choices=choices, default=None, help=help_text)
    for name, (kind, help_text) in _CONFIG_OPTIONS.items():
        metavar = {"linnet": "K", "layers": "B", "hidden": "H", "steps": "S", "test_steps": "T", "meta_batch": "M",
                   "iterations": "I", "val_every": "V", "val_tasks": "N", "checkpoint_every": "C"}.get(name)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, metavar=metavar,
                       help=help_text)
    p.add_argument("--compile", action="store_const", const=True, default=None,
                   help="run the meta-step through torch.compile (slower on a small CPU; try on a GPU)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in --out even if it holds a run or another run's lock")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): cuda when available")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="datasets folder (default: $LINMAML_DATA, else the per-user cache)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run(args) -> int:
    from linmaml.benchmarks.train import TrainConfig, train

    if args.resume and args.overwrite:
        raise ValueError("--resume: cannot be combined with --overwrite (continue the run, or start afresh)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    try:
        result = train(options, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device,
                       data_root=args.data_root, progress=not args.quiet, threads=args.threads)
    except (ValueError, TypeError) as error:
        # Library messages name the setting (meta_batch: ...); the user typed --meta-batch.
        message = str(error)
        head = message.split(":", 1)[0]
        if head in fields or head in ("threads", "device", "data_root"):
            raise ValueError(_flag(head) + message[len(head):]) from error
        raise
    if not result.writer:  # another process of a torchrun job reports
        return result.exit_code
    if result.status == "done":
        best = result.best
        summary = f"linmaml train: {result.message} in {result.seconds:.1f} s"
        if best:
            summary += (f"; best validation accuracy {best['val_accuracy']:.4f} ± {best['val_ci95']:.4f} at iteration"
                        f" {best['iteration']}")
        if result.skipped:
            summary += f"; {result.skipped} non-finite steps skipped"
        print(summary + f"; run in {result.out_dir}")
        return 0
    print(f"linmaml train: {'error: ' if result.status in ('nonfinite', 'lost-lock') else ''}{result.message}",
          file=sys.stderr)
    return result.exit_code
