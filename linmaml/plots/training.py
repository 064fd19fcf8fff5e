"""Training curves of ``linmaml train`` runs (``linmaml plot``), drawn from their metrics.

The runs' ``metrics.jsonl`` are read by :func:`linmaml.benchmarks.run.read_runs` (which knows the run
folder's files) into ``RunCurves`` records: per iteration ``iteration``, ``elapsed``, ``loss``,
``accuracy``, per validation ``val_iteration``, ``val_elapsed``, ``val_accuracy``, ``val_ci95``
(arrays), and the run's ``name``. :func:`plot_runs` draws three panels
(running mean of the training loss, of the training accuracy, validation accuracy ± 95% CI) against
iterations or wall time, one colour per run, and returns the numbers it drew. Accuracies are drawn
in percent. The figure is built without pyplot, so no backend is chosen or needed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from linmaml.errors import ArgumentError
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.curves import band

X_AXES = ("iteration", "time")
#: The longest running mean drawn (a billion iterations: beyond any run).
WINDOW_MAX = 10 ** 9


def running_mean(values, window: int) -> np.ndarray:
    """Trailing mean of the finite entries among the last ``window`` values (NaN where there are
    none), same shape ``(n,)`` as ``values``: a skipped step leaves a gap of one, not of a window."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    end = np.arange(1, values.size + 1)
    start = np.maximum(0, end - min(int(window), values.size))  # a window past the run is the whole run
    n = counts[end] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[end] - sums[start]) / np.maximum(n, 1), np.nan)


def default_window(runs: Sequence) -> int:
    """A twentieth of the longest run, between 1 and 100 iterations."""
    return int(min(100, max(1, max(len(r.iteration) for r in runs) // 20)))


def _time_unit(runs: Sequence) -> tuple[str, float]:
    longest = max((np.nanmax(r.elapsed) if np.any(np.isfinite(r.elapsed)) else 0.0) for r in runs)
    if longest >= 3 * 3600:
        return "h", 3600.0
    if longest >= 600:
        return "min", 60.0
    return "s", 1.0


def plot_runs(runs: Sequence, path, *, x: str = "iteration", window: int | None = None,
              references: Sequence[dict] = ()) -> dict:
    """Draw the curves of ``runs`` into ``path`` (the format follows the suffix) and return what was
    drawn: ``{"x": x, "x_label", "window", "runs": {name: {"x", "loss", "accuracy", "val_x",
    "val_accuracy", "val_ci95"}}, "references": [...]}`` with lists of floats (accuracies in percent;
    the training curves read back from the drawn lines).

    ``references``: published accuracies to compare with, each ``{"label", "accuracy", "ci95"}`` in
    percent and optionally ``"run"`` (a run's name: drawn in that run's colour); each is a dashed
    line with its ± CI band on the validation panel, returned as drawn."""
    from matplotlib.figure import Figure  # lazy: an optional extra (linmaml/_extras.py)

    if x not in X_AXES:
        raise ArgumentError("x", f"expected one of {', '.join(X_AXES)}, got {x!r}")
    runs = list(runs)
    if not runs:
        raise ArgumentError("runs", "expected at least one run")
    if window is None:
        window = default_window(runs)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= WINDOW_MAX:
        raise ArgumentError("window", f"expected an integer from 1 to {WINDOW_MAX:,}, got {window!r}")
    unit, scale = _time_unit(runs) if x == "time" else ("", 1.0)
    x_label = f"wall time ({unit})" if x == "time" else "iteration"

    fig = Figure(figsize=(13.5, 4.0), layout="constrained")
    ax_loss, ax_acc, ax_val = fig.subplots(1, 3)
    drawn = {}
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        xs = run.elapsed / scale if x == "time" else run.iteration.astype(np.float64)
        val_xs = run.val_elapsed / scale if x == "time" else run.val_iteration.astype(np.float64)
        (loss_line,) = ax_loss.plot(xs, running_mean(run.loss, window), color=color, label=run.name)
        (acc_line,) = ax_acc.plot(xs, 100 * running_mean(run.accuracy, window), color=color, label=run.name)
        if len(run.val_iteration):
            band(ax_val, val_xs, 100 * run.val_accuracy, 100 * run.val_ci95, color=color, label=run.name,
                 marker="o", markersize=3)
        drawn[run.name] = {"x": [float(v) for v in loss_line.get_xdata()],
                           "loss": [float(v) for v in loss_line.get_ydata()],
                           "accuracy": [float(v) for v in acc_line.get_ydata()],
                           "val_x": [float(v) for v in val_xs], "val_accuracy": [float(v) for v in 100 * run.val_accuracy],
                           "val_ci95": [float(v) for v in 100 * run.val_ci95]}
    colors = {run.name: f"C{i % 10}" for i, run in enumerate(runs)}
    drawn_references = []
    for ref in references:
        color = colors.get(ref.get("run"), "k")
        accuracy, ci = float(ref["accuracy"]), float(ref.get("ci95") or 0.0)
        ax_val.axhline(accuracy, color=color, ls="--", lw=1.2, label=ref["label"])
        if ci:
            ax_val.axhspan(accuracy - ci, accuracy + ci, color=color, alpha=0.12, lw=0)
        drawn_references.append({"label": ref["label"], "accuracy": accuracy, "ci95": ci, "run": ref.get("run")})
    ax_loss.set_title(f"training query loss (running mean of {window})")
    ax_acc.set_title(f"training query accuracy, % (running mean of {window})")
    ax_val.set_title("validation accuracy, % (95% CI)")
    for ax in (ax_loss, ax_acc, ax_val):
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    # one legend, on the validation panel unless no run has validated yet
    (ax_val if any(len(r.val_iteration) for r in runs) or drawn_references else ax_loss).legend(
        fontsize="small", loc="best")
    plots_figure.save_figure(fig, path)
    return {"x": x, "x_label": x_label, "window": window, "runs": drawn, "references": drawn_references}
