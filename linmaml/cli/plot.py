"""``linmaml plot``: training and validation curves of ``linmaml train`` runs, from their metrics.jsonl."""
from __future__ import annotations

from linmaml import _validate
from linmaml._extras import require
from linmaml.cli._paths import folder_can_hold, path_option
from linmaml.errors import ArgumentError, renamed
from linmaml.plots.training import WINDOW_MAX, plot_runs


def register(subparsers):
    p = subparsers.add_parser("plot", help="training and validation curves of runs (from their metrics.jsonl)",
                              description="Draw the running mean of the training query loss and accuracy and the "
                                          "validation accuracy with its 95% CI of one or more linmaml train runs, "
                                          "against iterations (default) or wall time; one colour per run, named by "
                                          "its folder.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of linmaml train (each holds metrics.jsonl)")
    p.add_argument("--out", required=True, metavar="FILE", help="the image to write (.png, .pdf, .svg, ...)")
    p.add_argument("--time", action="store_true", help="wall time on the x axis instead of iterations")
    p.add_argument("--window", type=int, default=None, metavar="W",
                   help="running mean over W iterations (default: a twentieth of the longest run, 1 to 100)")
    p.set_defaults(func=run)


def _formats() -> dict:
    from matplotlib.figure import Figure  # lazy: an optional extra (linmaml/_extras.py)

    return Figure().canvas.get_supported_filetypes()


def run(args) -> int:
    from linmaml.benchmarks.run import read_runs  # lazy: imports torch (not at `linmaml --help`)

    require("matplotlib", "drawing training curves")

    out = path_option(args.out, "--out")
    formats = _formats()
    if out.is_dir():
        raise ArgumentError("--out", f"{out} is a folder; give a file name, e.g. {out / 'curves.png'}")
    folder_can_hold(out.parent, "--out")
    if out.suffix.lower().lstrip(".") not in formats:
        raise ArgumentError("--out", f"expected a file ending in one of .{', .'.join(sorted(formats))}, got {out.name!r}")
    if args.window is not None:
        _validate.integer(args.window, "--window", minimum=1, maximum=WINDOW_MAX)
    folders = [path_option(folder, "RUN") for folder in args.runs]
    try:
        runs = read_runs(folders)
    except ValueError as error:
        raise renamed(error, {"run": "RUN"}) from error
    drawn = plot_runs(runs, out, x="time" if args.time else "iteration", window=args.window)
    print(f"linmaml plot: wrote {out} ({len(runs)} run{'s' if len(runs) > 1 else ''}: {', '.join(drawn['runs'])}; "
          f"x: {drawn['x_label']}; training curves are running means of {drawn['window']} iterations)")
    return 0
