"""``linmaml train``: meta-train MAML / first-order MAML / ANIL, or with a meta-gradient estimator
(Reptile, iMAML, truncated MAML, ES, HF-MAML: :mod:`linmaml.meta.estimators`), on a few-shot benchmark.

Thin: parses the options and calls :func:`linmaml.benchmarks.train.train`. ``--config FILE`` reads
the settings from a JSON file (bare fields, or a run's ``config.json`` with its ``{"config": {...}}``
wrapper, so ``--config runs/x/config.json`` repeats run x); ``--config NAME`` reads a recipe shipped
with the package (:mod:`linmaml.benchmarks.recipes`, e.g. ``omniglot-5w1s``; an existing file of that
name wins); options given on the command line override the file. The options are the training settings, one per field of
:class:`~linmaml.benchmarks.settings.TrainConfig` (its field metadata says each one's help, choices and
flag). ``--model package.module:Class --model-kwargs '{"hidden": 32}'`` trains your own network
(imported from ``PYTHONPATH``) instead of the built-in ConvNet; the run's ``config.json`` records both,
so ``evaluate``, ``analyze`` and ``--resume`` rebuild it. Exit status: 0 done,
2 bad input (including a folder owned by another run), 3 stopped on a non-finite meta-loss or
gradient, 4 another run took the folder over, 130/143 stopped by SIGINT/SIGTERM (a checkpoint is
written first; ``--resume`` continues).
"""
from __future__ import annotations

import sys

from linmaml import _io
from linmaml.benchmarks import recipes
from linmaml.benchmarks.allocator import ALLOCATOR_HELP, ALLOCATORS, apply_for_command, default_policy
from linmaml.benchmarks.loggers import combine, from_spec
from linmaml.benchmarks.progress import safe_write
from linmaml.benchmarks.run_settings import DEFAULT_THREADS, threads_for  # noqa: F401 (re-exported)
from linmaml.benchmarks.settings import SEED_MAX, TrainConfig, declared, flag
from linmaml.cli._model import model_kwargs_option
from linmaml.cli._paths import path_option
from linmaml.errors import ArgumentError, ArgumentTypeError, renamed

#: Default CPU threads (run_settings.DEFAULT_THREADS, 1). torch's own default (one per core) collapses
#: when the cores are busy: its worker threads wait for each other at every operation, so on a small
#: machine loaded by other work two threads can run many times slower than one. One thread is never
#: that far from the best, and is predictable; raise it on an idle machine with many cores.
THREADS_HELP = ("CPU threads for torch (default 1, or with --resume the run's own: predictable, and never the "
                "collapse of several threads on busy cores, which can run many times slower than 1; on an idle "
                "machine with many cores try 4)")


def register(subparsers):
    p = subparsers.add_parser("train", help="meta-train on a few-shot benchmark (Omniglot, CIFAR-FS, mini-ImageNet)",
                              description="Meta-train on a few-shot benchmark. Writes metrics.jsonl, last.pt and"
                                          " best.pt into --out; --resume continues a run exactly.")
    add_setting_options(p)
    p.add_argument("--config", metavar="FILE|NAME", default=None,
                   help="read the settings from a JSON file: the fields of a run's config.json, bare or as that "
                        "file's {\"config\": {...}} (so --config runs/x/config.json repeats run x), or a shipped "
                        f"recipe by name ({', '.join(recipes.names())}; an existing file of that name wins); "
                        "options on the command line override it")
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
    p.add_argument("--log", action="append", default=None, metavar="KIND:PATH",
                   help="also log each iteration's metrics record: csv:FILE (a CSV table) or tensorboard:DIR "
                        "(needs linmaml[tensorboard]); repeatable; not a run setting (not in config.json)")
    p.set_defaults(func=run)


def add_setting_options(parser) -> None:
    """One option per training setting, in the order :class:`TrainConfig` declares them, each from its
    field's :class:`~linmaml.benchmarks.settings.Setting` (flag, help, choices, metavar). Every default
    is None, meaning "not given on the command line": the value then comes from ``--config``, from the
    run being resumed, or from TrainConfig's default."""
    for name, setting in declared().items():
        if setting.flag is None:
            continue  # recorded by the library from the model given, not chosen
        option = {"dest": name, "default": None, "help": setting.help}
        if setting.kind is bool:
            option.update(action="store_const", const=True)
        elif setting.choices is not None:
            option["choices"] = setting.choices
        else:
            option.update(type=model_kwargs_option if setting.kind is dict else setting.kind, metavar=setting.metavar)
        parser.add_argument(flag(name), **option)


def run(args) -> int:
    from linmaml.benchmarks.train import train  # lazy: torch loads when the command runs, not at `linmaml --help`

    if args.resume and args.overwrite:
        raise ArgumentError("--resume", "cannot be combined with --overwrite (continue the run, or start afresh)")
    fields = set(declared())
    given = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    from_file = read_config(args.config, fields) if args.config is not None else {}
    options = {**from_file, **given}
    if options.get("model") is not None and options.get("model_import") is None:
        raise ArgumentError("--config", f"{args.config} is the config of a run on your own model ({options['model']}), "
                                        f"which it does not say where to import from; pass it with --model "
                                        f"package.module:Class (and --model-kwargs)")
    # ~ expanded (also in --out=~/x, which the shell leaves alone), '' refused: the run goes where it says
    out, data_root = path_option(args.out, "--out"), path_option(args.data_root, "--data-root")
    apply_for_command(args.allocator or default_policy(), "linmaml train")
    # one policy for every command (linmaml.benchmarks.run_settings): --threads, else a resumed run's
    # own count, else 1; a resumed run reads its recorded data root unless --data-root is given
    threads = threads_for(args.threads, out if args.resume else None)
    # built before training, so a missing extra or a bad --log stops the command before any work
    loggers = [from_spec(spec, append=args.resume, argument="--log") for spec in args.log or ()]
    try:
        # your own network (--model package.module:Class): imported and built here, trained by the library
        # like train(model=...); without --model a resumed run rebuilds the one its config.json records
        model = None
        if options.get("model_import") is not None:
            model = _build_model(options)
        result = train(options, out, resume=args.resume, overwrite=args.overwrite, device=args.device,
                       data_root=data_root, progress=not args.quiet, threads=threads, model=model,
                       on_iteration=combine(*loggers))
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
                         "free (" + ", ".join(f"{flag(n)} {v}" for n, v in settings) + "); lower the ones that "
                         "size your run, or use --batching loop") from error
    except (ArgumentError, ArgumentTypeError) as error:
        # The library names the setting (error.argument, e.g. meta_batch); the user typed --meta-batch,
        # or the --config file said it.
        if error.argument in from_file and error.argument not in given:
            raise ArgumentError("--config", f"{args.config}: {error}") from error
        if error.argument in fields:
            raise renamed(error, {error.argument: flag(error.argument)}) from error
        if error.argument in ("threads", "device", "data_root", "resume"):
            raise renamed(error, {error.argument: "--" + error.argument.replace("_", "-")}) from error
        raise
    finally:
        for logger in loggers:
            logger.close()
    if not result.writer:  # another process of a torchrun job reports
        return result.exit_code
    if result.status == "done":
        best = result.best
        summary = f"linmaml train: {result.message} in {result.seconds:.1f} s"
        if result.elapsed > result.seconds + 1:  # resumed: this process's time alone would understate the run
            summary += f" ({result.elapsed:.1f} s since iteration 0, pauses excluded)"
        if best:
            summary += (f"; best validation accuracy {100 * best['val_accuracy']:.2f} % ± {100 * best['val_ci95']:.2f} %"
                        f" at iteration {best['iteration']}")
        if result.skipped:
            summary += f"; {result.skipped} non-finite steps skipped"
        print(summary + f"; run in {result.out_dir}")
        return 0
    message = f"{_flag(result.argument)}: {result.message}" if result.argument else result.message
    # stderr may be closed or full; the exit status (3, 4, 130, 143) still says how the run ended
    safe_write(sys.stderr, f"linmaml train: {'error: ' if result.status in ('nonfinite', 'lost-lock') else ''}"
                           f"{message}\n")
    return result.exit_code


def _build_model(options: dict):
    """The ``--model`` class built with ``--model-kwargs`` right after seeding torch with the run's
    seed (``--seed``, default 0), so its initial weights are a function of the settings; torch's
    generator is left as it was. From Python, ``torch.manual_seed(seed); Net(**kwargs)`` builds the
    same module for ``train(model=...)``."""
    # lazy: torch loads when the command runs, not at `linmaml --help` (build_parser imports every command module)
    import torch

    from linmaml.benchmarks.config import import_model

    seed = options.get("seed", declared_default("seed"))
    with torch.random.fork_rng(devices=[]):
        if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= SEED_MAX:
            torch.manual_seed(seed)  # a bad seed is reported by train(), naming --seed
        return import_model(options["model_import"], options.get("model_kwargs"))


def declared_default(name: str):
    """The default of setting ``name`` as :class:`TrainConfig` declares it."""
    return TrainConfig.__dataclass_fields__[name].default


def read_config(path, fields) -> dict:
    """The settings in the JSON file ``path``: an object of training settings (exactly
    :class:`TrainConfig`'s fields), or a run's config.json (``{"config": {...}, ...}``). ``path`` may
    also be a shipped recipe's name (:func:`linmaml.benchmarks.recipes.resolve`: an existing path wins).
    Unknown keys, a file that is not such an object, and a name that is neither a file nor a recipe
    raise ``ArgumentError`` naming ``--config``."""
    file = recipes.resolve(path, "--config")
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
        raise ArgumentError("--config", f"{error}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a run's config.json; its other keys (image_shape, device, ...) describe the run
    if not isinstance(data, dict):
        raise ArgumentError("--config", f"{file} must hold a JSON object of training settings")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ArgumentError("--config", f"{file}: {unknown[0]!r} is not a training setting (settings: "
                                        f"{', '.join(sorted(fields))})")
    return dict(data)
