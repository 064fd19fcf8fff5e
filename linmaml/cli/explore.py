"""``linmaml explore``: the interactive loss-surface explorer (or, with ``--save``, a snapshot of it).

Without ``--save`` it opens a window; where matplotlib has no interactive backend (no display, e.g.
over ssh without X forwarding, or MPLBACKEND=Agg) it stops with a one-line error that points to
``--save``. With ``--save PATH`` it renders the same view off-screen (Agg) into PATH, meta-training
from ``--start W1 W2`` first if given, and needs no display; ``~`` in PATH is expanded and the path
written is printed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from linmaml._extras import require
from linmaml.cli._paths import path_option
from linmaml.errors import ArgumentError, renamed

_DEFAULTS = dict(lr=0.1, steps=1, task_mean=0.5, task_std=1.0, x_var=1.0, grid=200, range=4.0,
                 meta_lr=0.2, meta_steps=300, seed=0)


def register(subparsers):
    d = _DEFAULTS
    p = subparsers.add_parser(
        "explore", help="interactive MAML loss surface of f(x) = w2·w1·x with sliders and clickable runs",
        description="Interactive MAML loss surface of the scalar depth-2 model: sliders for the inner "
                    "learning rate, inner steps, task mean and spread; click to meta-train from a point.")
    p.add_argument("--lr", type=float, metavar="A", default=d["lr"], help=f"inner learning rate α ≥ 0 (default {d['lr']})")
    p.add_argument("--steps", type=int, metavar="K", default=d["steps"], help=f"inner steps k ≥ 0 (default {d['steps']})")
    p.add_argument("--task-mean", type=float, metavar="M", default=d["task_mean"],
                   help=f"mean m of the task slope a ~ N(m, s²) (default {d['task_mean']})")
    p.add_argument("--task-std", type=float, metavar="S", default=d["task_std"],
                   help=f"spread s ≥ 0 of the task slope (default {d['task_std']})")
    p.add_argument("--x-var", type=float, metavar="V", default=d["x_var"], help=f"input variance V > 0 (default {d['x_var']})")
    p.add_argument("--grid", type=int, metavar="N", default=d["grid"], help=f"grid points per axis ≥ 2 (default {d['grid']})")
    p.add_argument("--range", dest="half_width", type=float, metavar="R", default=d["range"],
                   help=f"the surface covers [-R, R]² (default {d['range']})")
    p.add_argument("--meta-lr", type=float, metavar="B", default=d["meta_lr"],
                   help=f"meta learning rate of each run (default {d['meta_lr']})")
    p.add_argument("--meta-steps", type=int, metavar="T", default=d["meta_steps"],
                   help=f"meta-steps of each run (default {d['meta_steps']})")
    p.add_argument("--seed", type=int, metavar="SEED", default=d["seed"], help="seed of the sampled tasks (default 0)")
    p.add_argument("--start", type=float, nargs=2, metavar=("W1", "W2"),
                   help="meta-train from (W1, W2) before showing (as if clicked there)")
    p.add_argument("--save", metavar="PATH",
                   help="render a snapshot to PATH (.png, .pdf, .svg) instead of opening a window; "
                        "needs no display")
    p.set_defaults(func=run)


def _interactive_backend() -> str | None:
    """The interactive matplotlib backend pyplot would use, or None when only non-interactive ones work."""
    import matplotlib

    import matplotlib.pyplot as plt  # noqa: F401  (resolves the automatic backend choice)
    from matplotlib.backends import BackendFilter, backend_registry

    backend = matplotlib.get_backend().lower()
    non_interactive = set(backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE))
    return None if backend in non_interactive else backend


def _explorer_arguments(args) -> dict:
    return dict(lr=args.lr, steps=args.steps, task_mean=args.task_mean, task_std=args.task_std, x_var=args.x_var,
                grid=args.grid, half_width=args.half_width, meta_lr=args.meta_lr, meta_steps=args.meta_steps,
                seed=args.seed)


def _check_save_format(path: str) -> None:
    """Reject an unknown file format before any work (matplotlib would only fail when saving)."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise ArgumentError("--save", f"expected a file name ending in one of .{', .'.join(sorted(formats))}, "
                                      f"got {path!r}")


#: The explorer's argument names (as its errors name them) and the flags the user typed.
_FLAGS = {"lr": "--lr", "steps": "--steps", "task_mean": "--task-mean", "mean": "--task-mean",
          "task_std": "--task-std", "std": "--task-std", "x_var": "--x-var", "grid": "--grid",
          "half_width": "--range", "range": "--range", "meta_lr": "--meta-lr", "meta_steps": "--meta-steps",
          "seed": "--seed"}


def _check_save_folder(path: Path) -> None:
    """Say what is wrong with --save's folder before any work (the OS would only say "File exists")."""
    if path.is_dir():
        raise ArgumentError("--save", f"{path} is a folder; expected a file name such as {path / 'snapshot.png'}")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise ArgumentError("--save", f"{folder} is a file, not a folder")
            break


def run(args) -> int:
    require("matplotlib", "the interactive explorer")
    from linmaml.plots.explorer import SurfaceExplorer

    # Bad values are reported before anything about displays, and before any window opens.
    try:
        SurfaceExplorer.check_arguments(**_explorer_arguments(args))
    except (ValueError, TypeError) as error:
        raise renamed(error, _FLAGS) from error
    save = path_option(args.save, "--save")
    if args.start is not None:
        from linmaml import _validate

        for name, value in zip(("--start W1", "--start W2"), args.start):
            _validate.finite_number(value, name)
    if save is not None:
        import matplotlib

        matplotlib.use("Agg", force=True)
        _check_save_folder(save)
        _check_save_format(str(save))
    elif _interactive_backend() is None:
        import matplotlib

        where = "DISPLAY is not set" if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) else \
            f"matplotlib backend is {matplotlib.get_backend()!r}"
        print(f"linmaml explore: error: no interactive display ({where}); "
              f"use --save PATH to render a snapshot", file=sys.stderr)
        return 2

    explorer = SurfaceExplorer(**_explorer_arguments(args))
    if args.start is not None:
        explorer.start_run(*args.start)
    if save is not None:
        explorer.save(save)
        print(save)  # the path used, with ~ expanded
        return 0
    explorer.show()
    return 0
