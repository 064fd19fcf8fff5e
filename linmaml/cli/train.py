"""``linmaml train``: meta-train MAML / first-order MAML / ANIL, or with a meta-gradient estimator
(Reptile, iMAML, truncated MAML, ES, HF-MAML: :mod:`linmaml.meta.estimators`), on a few-shot benchmark.

Thin: parses the options and calls :func:`linmaml.benchmarks.train.train`. ``--config FILE`` reads
the settings from a JSON file (bare fields, or a run's ``config.json`` with its ``{"config": {...}}``
wrapper, so ``--config runs/x/config.json`` repeats run x); options given on the command line
override the file. Exit status: 0 done,
2 bad input (including a folder owned by another run), 3 stopped on a non-finite meta-loss or
gradient, 4 another run took the folder over, 130/143 stopped by SIGINT/SIGTERM (a checkpoint is
written first; ``--resume`` continues).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from linmaml.benchmarks.allocator import ALLOCATOR_HELP, ALLOCATORS, apply_for_command, default_policy
from linmaml.benchmarks.run_settings import DEFAULT_THREADS, threads_for  # noqa: F401 (re-exported)
from linmaml.cli._paths import path_option
from linmaml.errors import ArgumentError

#: Default CPU threads (run_settings.DEFAULT_THREADS, 1). torch's own default (one per core) collapses
#: when the cores are busy: its worker threads wait for each other at every operation, and on a 2-core
#: machine loaded by other work --threads 2 ran 17x slower than --threads 1 (7.6 vs 0.45 s per
#: iteration). One thread is never that far from the best, and is predictable; raise it on an idle
#: machine with many cores.
THREADS_HELP = ("CPU threads for torch (default 1, or with --resume the run's own: predictable, and never the "
                "collapse of several threads on busy cores, where 2 threads ran 17x slower than 1; on an idle "
                "machine with many cores try 4)")

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
    "test_steps": (int, "inner steps at validation/test time (default 3; with a learned --transform, the training "
                        "--steps, which it is tuned to)"),
    "inner_lr": (float, "inner learning rate (default 0.4)"),
    "outer_lr": (float, "Adam learning rate of the outer loop (default 1e-3)"),
    "meta_batch": (int, "tasks per outer step (default 16)"),
    "iterations": (int, "outer steps in all (default 4000); with --resume, the new end"),
    "val_every": (int, "validate every V iterations (default 250)"),
    "val_tasks": (int, "fixed validation tasks (default 200)"),
    "checkpoint_every": (int, "write last.pt every C iterations (default 50)"),
    "snapshot_every": (int, "also keep the weights of iteration 0 and every S-th iteration in snapshots/ "
                            "(default 0: none)"),
    "seed": (int, "seed of the initial weights and the training tasks (default 0)"),
    # MAML++'s training recipe (Antoniou, Edwards & Storkey 2019, "How to train your MAML"); off by default
    "msl_iterations": (int, "multi-step loss (MAML++): weigh the query loss after every inner step for the first A "
                            "iterations, the weights annealed from uniform towards the last step (needs --steps >= 2;"
                            " default 0: off)"),
    "first_order_iterations": (int, "derivative-order annealing (MAML++): first-order meta-gradients for the first N "
                                    "iterations, second order after (default 0: off)"),
    "tasks_per_chunk": (int, "tasks computed together with --batching split or vmap (default 4)"),
    "truncate": (int, "--algo truncated: backpropagate through the last K inner steps (default 1)"),
    "imaml_lambda": (float, "--algo imaml: proximal regulariser lambda (default 1)"),
    "cg_steps": (int, "--algo imaml: conjugate-gradient iterations (default 5)"),
    "inner_tolerance": (float, "--algo imaml: stop the inner solver (at most --steps steps) at this gradient norm "
                               "(default 1e-3)"),
    "es_population": (int, "--algo es: antithetic pairs per meta-gradient (default 8)"),
    "es_sigma": (float, "--algo es: Gaussian smoothing scale sigma (default 0.01)"),
    "fd_delta": (float, "--algo hfmaml: finite-difference step of the Hessian-vector products (default 0.001; "
                        "a step across ReLU kinks is wrong)"),
}
_CHOICE_OPTIONS = {
    "benchmark": (("omniglot", "cifar-fs", "mini-imagenet"), "the few-shot benchmark (default omniglot)"),
    "algo": (("maml", "fomaml", "anil", "reptile", "imaml", "truncated", "es", "hfmaml", "protonet", "r2d2"),
             "meta-learning algorithm (default maml: second order); reptile, imaml, truncated, es and hfmaml are "
             "meta-gradient estimators (linmaml.meta.estimators) set by --truncate, --imaml-lambda, --cg-steps, "
             "--inner-tolerance, --es-population, --es-sigma, --fd-delta; protonet and r2d2 adapt in closed form "
             "(ProtoNets, the R2-D2 ridge head) on the ConvNet's features"),
    "transform": (("none", "kfo", "metasgd", "metacurvature", "rates"), "meta-optimizer of the inner loop (default none)"),
    "class_split": (("standard", "alphabets"), "the classes of the splits: standard (default: the shipped random "
                                               "character split) or alphabets (omniglot: Lake et al.'s background "
                                               "alphabets to train on, 5 of them held out to validate, the evaluation"
                                               " alphabets to test)"),
    "pool": (("max", "stride"), "down-sampling of each conv block (default: stride for omniglot, max otherwise)"),
    "dtype": (("float32", "float64"), "parameter dtype (default float32)"),
    "on_nonfinite": (("stop", "skip"), "on a non-finite meta-loss or gradient: stop (exit 3) or skip the step"
                                      " (default stop)"),
    "outer_lr_schedule": (("constant", "cosine"), "outer learning rate over the run: constant (default) or a half "
                                                  "cosine from --outer-lr down to 0 at the last iteration"),
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
                   "iterations": "I", "val_every": "V", "val_tasks": "N", "checkpoint_every": "C", "snapshot_every": "S",
                   "msl_iterations": "A", "first_order_iterations": "N"}.get(name)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, metavar=metavar,
                       help=help_text)
    p.add_argument("--bn-per-step", action="store_const", const=True, default=None,
                   help="per-step BatchNorm weights and biases (MAML++'s BNWB): one affine set per inner step, "
                        "meta-learned, not adapted (built-in ConvNet, --algo maml or fomaml; needs --steps >= 2)")
    p.add_argument("--compile", action="store_const", const=True, default=None,
                   help="run the meta-step through torch.compile (slower on a small CPU; try on a GPU)")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="read the settings from a JSON file: the fields of a run's config.json, bare or as that "
                        "file's {\"config\": {...}} (so --config runs/x/config.json repeats run x); options on the "
                        "command line override it")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in --out even if it holds a run or another run's lock")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): cuda when available")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="datasets folder (default: $LINMAML_DATA, else the per-user cache)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    p.add_argument("--allocator", choices=ALLOCATORS, default=None, help=ALLOCATOR_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run(args) -> int:
    from linmaml.benchmarks.config import TrainConfig
    from linmaml.benchmarks.train import train
    from linmaml.errors import ArgumentError, ArgumentTypeError, renamed

    if args.resume and args.overwrite:
        raise ArgumentError("--resume", "cannot be combined with --overwrite (continue the run, or start afresh)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    from_file = read_config(args.config, fields) if args.config is not None else {}
    options = {**from_file, **given}
    # ~ expanded (also in --out=~/x, which the shell leaves alone), '' refused: the run goes where it says
    out, data_root = path_option(args.out, "--out"), path_option(args.data_root, "--data-root")
    apply_for_command(args.allocator or default_policy(), "linmaml train")
    # one policy for every command (linmaml.benchmarks.run_settings): --threads, else a resumed run's
    # own count, else 1; a resumed run reads its recorded data root unless --data-root is given
    threads = threads_for(args.threads, out if args.resume else None)
    try:
        result = train(options, out, resume=args.resume, overwrite=args.overwrite, device=args.device,
                       data_root=data_root, progress=not args.quiet, threads=threads)
    except (FileExistsError, NotADirectoryError) as error:
        # the library names its argument out; the user typed --out
        flagged = renamed(error, {"out": "--out"})
        if flagged is error:
            raise
        raise flagged from error
    except MemoryError as error:
        settings = getattr(error, "settings", None)
        if not settings:
            raise ValueError(str(error).splitlines()[0] if str(error) else "out of memory") from error
        # the settings in play, as flags; which of them matters depends on the run, so none is singled out
        raise ValueError("out of memory: the model and an iteration with these settings need more memory than is "
                         "free (" + ", ".join(f"{_flag(n)} {v}" for n, v in settings) + "); lower the ones that "
                         "size your run, or use --batching loop") from error
    except (ArgumentError, ArgumentTypeError) as error:
        # The library names the setting (error.argument, e.g. meta_batch); the user typed --meta-batch,
        # or the --config file said it.
        if error.argument in from_file and error.argument not in given:
            raise ArgumentError("--config", f"{args.config}: {error}") from error
        if error.argument in fields or error.argument in ("threads", "device", "data_root", "resume"):
            raise renamed(error, {error.argument: _flag(error.argument)}) from error
        raise
    if not result.writer:  # another process of a torchrun job reports
        return result.exit_code
    if result.status == "done":
        best = result.best
        summary = f"linmaml train: {result.message} in {result.seconds:.1f} s"
        if best:
            summary += (f"; best validation accuracy {100 * best['val_accuracy']:.2f} % ± {100 * best['val_ci95']:.2f} %"
                        f" at iteration {best['iteration']}")
        if result.skipped:
            summary += f"; {result.skipped} non-finite steps skipped"
        print(summary + f"; run in {result.out_dir}")
        return 0
    from linmaml.benchmarks.progress import safe_write

    message = f"{_flag(result.argument)}: {result.message}" if result.argument else result.message
    # stderr may be closed or full; the exit status (3, 4, 130, 143) still says how the run ended
    safe_write(sys.stderr, f"linmaml train: {'error: ' if result.status in ('nonfinite', 'lost-lock') else ''}"
                           f"{message}\n")
    return result.exit_code


def read_config(path, fields) -> dict:
    """The settings in the JSON file ``path``: an object of training settings, or a run's config.json
    (``{"config": {...}, ...}``). Unknown keys, a file that is not such an object, and the config of a
    run on a user model (which only Python can supply) raise ``ValueError`` starting ``--config:``."""
    from linmaml import _io

    file = Path(path).expanduser()
    try:
        # a regular file of at most 1 MiB (never a FIFO that would block), nesting bounded
        text = _io.read_text(file, max_bytes=1 << 20)
    except OSError as error:
        raise ArgumentError("--config", f"cannot read {file} ({error.strerror or type(error).__name__})") from None
    except ValueError:
        raise ArgumentError("--config", f"{file} is not UTF-8 text") from None
    try:
        data = _io.loads_json(text, str(file))
    except ValueError as error:
        raise ArgumentError("--config", str(error)) from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a run's config.json; its other keys (image_shape, device, ...) describe the run
    if not isinstance(data, dict):
        raise ArgumentError("--config", f"{file} must hold a JSON object of training settings")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ArgumentError("--config", f"{file}: {unknown[0]!r} is not a training setting (settings: {', '.join(sorted(fields))})")
    if data.get("model") is not None:
        raise ArgumentError("--config", f"{file} is the config of a run on your own model ({data['model']}); repeat it from "
                                        f"Python: linmaml.benchmarks.train.train(settings, out, model=...)")
    return {k: v for k, v in data.items() if k not in ("model", "model_fingerprint", "head")}
