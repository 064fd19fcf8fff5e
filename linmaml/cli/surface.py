"""``linmaml surface``: the exact population MAML objective of the scalar chain on a grid.

Depth 2 (f(x) = w2·w1·x) gives an N×N grid over [−R, R]², depth 1 (f(x) = w·x) an N-point grid.
Tasks are y = a·x with a ~ N(M, S²), x ~ N(0, V), noise-free; inner and outer losses are the
population losses ½·V·(w_eff − a)²; see :mod:`linmaml.closedform.scalar`. A grid where the objective
overflows float64 is refused, in text and JSON alike, naming --lr (overflow everywhere) or --range.
"""
from __future__ import annotations

import json

import numpy as np

from linmaml import _validate
from linmaml.errors import ArgumentError, renamed


def register(subparsers):
    p = subparsers.add_parser("surface", help="exact population MAML objective of the scalar model on a grid",
                              description="Evaluate the exact population MAML objective of f(x) = w2·w1·x (--depth 2, "
                                          "a surface) or f(x) = w·x (--depth 1, a curve) on a grid; print its "
                                          "minimum and maximum, or every value with --json.")
    p.add_argument("--depth", type=int, default=2, help="1 (f = w·x, a curve) or 2 (f = w2·w1·x, a surface); default 2")
    p.add_argument("--lr", type=float, default=0.1, help="inner learning rate α ≥ 0 (default 0.1)")
    p.add_argument("--steps", type=int, default=1, help="inner gradient steps k ≥ 0 (default 1)")
    # the task setting's defaults are figure 1's (linmaml.analysis.fig_surface.SETTINGS) and explore's,
    # so a bare `linmaml surface` prints the surface of the README's first figure
    p.add_argument("--task-mean", type=float, default=0.5, help="mean M of the task weight a (default 0.5)")
    p.add_argument("--task-std", type=float, default=1.0, help="standard deviation S ≥ 0 of a (default 1)")
    p.add_argument("--x-var", type=float, default=1.0, help="input variance V ≥ 0 (default 1)")
    p.add_argument("--grid", type=int, default=101, help="grid points per axis, ≥ 2 (default 101)")
    p.add_argument("--range", type=float, default=4.0, help="the grid covers [−R, R] per axis, R > 0 (default 4)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: depth 2 {"w1", "w2", "loss"} with loss[i][j] at (w1[i], w2[j]); '
                        'depth 1 {"w", "loss"}')
    p.set_defaults(func=run)


#: Most grid points per axis (as :data:`linmaml.closedform.scalar.MAX_GRID`; not imported here so
#: that ``--help`` stays fast).
MAX_GRID = 5000


def _settings(args) -> dict:
    """The arguments checked, with errors naming the command-line option."""
    if args.depth not in (1, 2):
        raise ArgumentError("--depth", f"expected 1 or 2, got {args.depth}")
    return {
        "depth": args.depth,
        "lr": _validate.finite_number(args.lr, "--lr", nonnegative=True),
        "steps": _validate.integer(args.steps, "--steps", minimum=0),
        "mean": _validate.finite_number(args.task_mean, "--task-mean"),
        "std": _validate.finite_number(args.task_std, "--task-std", nonnegative=True),
        "x_var": _validate.finite_number(args.x_var, "--x-var", nonnegative=True),
        "grid": _validate.integer(args.grid, "--grid", minimum=2, maximum=MAX_GRID),
        "range": _validate.finite_number(args.range, "--range", positive=True),
    }


def run(args) -> int:
    from linmaml.closedform.scalar import surface_grid  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    settings = _settings(args)
    try:
        surface = surface_grid(**settings)
    except (ValueError, TypeError) as error:  # the library names its argument (steps); the user typed --steps
        raise renamed(error, _FLAGS) from error
    loss = surface["loss"]
    _refuse_overflow(np.count_nonzero(~np.isfinite(loss)), loss.size, settings)
    if args.json:
        print(json.dumps({key: value.tolist() for key, value in surface.items()}))
    else:
        print(_summary(settings, surface))
    return 0


#: The library's argument names and the flags the user typed for them.
_FLAGS = {"lr": "--lr", "steps": "--steps", "mean": "--task-mean", "std": "--task-std", "x_var": "--x-var",
          "grid": "--grid", "range": "--range", "depth": "--depth"}


def _refuse_overflow(overflowed: int, total: int, settings: dict | None = None) -> None:
    """Text and JSON alike refuse a grid where the objective overflows float64 (one behaviour).

    Overflow everywhere comes from the inner step itself (--lr or --steps) or from the task family
    (--task-mean, --task-std, --x-var: the loss before any step already overflows); the culprit is
    found by probing the objective without the step and with each task setting made harmless in
    turn. Overflow at some points only comes from the far corners: --range.
    """
    if overflowed == total:
        flag = _overflow_cause(settings) if settings is not None else "--lr"
        if flag == "--lr":
            raise ArgumentError("--lr", f"the objective overflows float64 at all {total} grid points; "
                                        "use a smaller --lr or --steps")
        raise ArgumentError(flag, f"the objective overflows float64 at all {total} grid points even before any "
                                  f"inner step; use a smaller {flag}")
    if overflowed:
        raise ArgumentError("--range", f"the objective overflows float64 at {overflowed} of {total} grid points; "
                                       "use a smaller --range, --lr or --steps")


def _overflow_cause(settings: dict) -> str:
    """The flag to blame when the objective overflows everywhere (see :func:`_refuse_overflow`)."""
    from linmaml.closedform.scalar import surface_grid  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    probe = {**settings, "grid": 2, "range": min(settings["range"], 1.0), "steps": 0}

    def finite(**change) -> bool:
        with np.errstate(all="ignore"):
            try:
                return bool(np.all(np.isfinite(surface_grid(**{**probe, **change})["loss"])))
            except (ValueError, OverflowError, ArithmeticError):
                return False

    if finite():
        return "--lr"  # harmless without the inner step: the step is what overflows
    for flag, change in (("--x-var", {"x_var": 1.0}), ("--task-mean", {"mean": 0.0}), ("--task-std", {"std": 0.0})):
        if finite(**change):
            return flag
    return "--task-mean"


def _summary(settings: dict, surface: dict) -> str:
    loss = surface["loss"]
    best = np.unravel_index(int(np.argmin(loss)), loss.shape)
    if settings["depth"] == 2:
        model, where = "f(x) = w2·w1·x", f"w1 = {surface['w1'][best[0]]:.6g}, w2 = {surface['w2'][best[1]]:.6g}"
        grid = f"{settings['grid']}×{settings['grid']} grid over [−{settings['range']:g}, {settings['range']:g}]²"
    else:
        model, where = "f(x) = w·x", f"w = {surface['w'][best[0]]:.6g}"
        grid = f"{settings['grid']}-point grid over [−{settings['range']:g}, {settings['range']:g}]"
    lines = [
        f"population MAML objective of {model}: {settings['steps']} inner step(s) with lr {settings['lr']:g}, "
        f"a ~ N({settings['mean']:g}, {settings['std']:g}²), x ~ N(0, {settings['x_var']:g})",
        f"{grid}",
        f"minimum {loss[best]:.6g} at {where}",
        f"maximum {np.max(loss):.6g}",
    ]
    return "\n".join(lines)
