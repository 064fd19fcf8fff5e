"""Training curves of ``linmaml train`` runs, read from their ``metrics.jsonl`` (``linmaml plot``).

A run folder's ``metrics.jsonl`` holds one JSON object per iteration: ``iteration``, ``loss`` and
``accuracy`` (the meta-batch's mean query loss and accuracy, ``null`` when not finite), ``elapsed``
(wall seconds since the run began, resumes included) and, at validations, ``val_accuracy`` and
``val_ci95`` (mean accuracy over the fixed validation tasks and its 95% half-width).

:func:`read_run` loads one folder into a :class:`RunCurves`; :func:`plot_runs` draws three panels
(running mean of the training loss, of the training accuracy, validation accuracy ± 95% CI) against
iterations or wall time, one colour per run, and returns the numbers it drew. Accuracies are drawn
in percent. The figure is built without pyplot, so no backend is chosen or needed.
"""
from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from linmaml import _io
from linmaml.errors import ArgumentError
from linmaml.plots.curves import band

METRICS = "metrics.jsonl"  # the name linmaml.benchmarks.run_folder gives it (plots do not import benchmarks)
X_AXES = ("iteration", "time")


@dataclasses.dataclass(frozen=True, eq=False)
class RunCurves:
    """One run's metrics. Training arrays have shape ``(n,)`` (one entry per iteration, sorted;
    ``loss``/``accuracy`` NaN where not finite), validation arrays ``(m,)`` (one per validation)."""

    name: str
    folder: Path
    iteration: np.ndarray
    elapsed: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    val_iteration: np.ndarray
    val_elapsed: np.ndarray
    val_accuracy: np.ndarray
    val_ci95: np.ndarray


#: The longest running mean drawn (a billion iterations: beyond any run).
WINDOW_MAX = 10 ** 9


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else math.nan


def read_run(folder, name: str | None = None) -> RunCurves:
    """The metrics of the run in ``folder`` (``name`` defaults to the folder's name).

    Lines that are not JSON objects with an integer ``iteration`` in 0..2**63-1 (a line torn by a
    kill, one nested absurdly deep) are skipped; the file must be a regular file of at most
    :data:`linmaml._io.MAX_TEXT_BYTES` (``OSError`` naming it: never a FIFO that would block); an iteration logged twice keeps its last record. ``ArgumentError`` naming ``run`` when
    ``folder`` is not a folder, holds no ``metrics.jsonl``, or records no iteration.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArgumentError("run", f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist")
    path = folder / METRICS
    if not path.is_file():
        raise ArgumentError("run", f"{folder} holds no {METRICS} (not a run folder of linmaml train)")
    records = {}
    with _io.open_regular(path, _io.MAX_TEXT_BYTES) as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"), start=1):
            try:
                record = _io.loads_json(line, f"{path} line {number}")
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iteration"), int) \
                    and not isinstance(record["iteration"], bool) and 0 <= record["iteration"] < 2 ** 63:
                records[record["iteration"]] = record
    if not records:
        raise ArgumentError("run", f"{path} records no iteration yet")
    rows = [records[t] for t in sorted(records)]
    validated = [r for r in rows if "val_accuracy" in r]

    def column(items, key):
        return np.array([_number(r.get(key)) for r in items], dtype=np.float64)

    return RunCurves(name=name or folder.resolve().name, folder=folder,
                     iteration=np.array([r["iteration"] for r in rows], dtype=np.int64),
                     elapsed=column(rows, "elapsed"), loss=column(rows, "loss"), accuracy=column(rows, "accuracy"),
                     val_iteration=np.array([r["iteration"] for r in validated], dtype=np.int64),
                     val_elapsed=column(validated, "elapsed"), val_accuracy=column(validated, "val_accuracy"),
                     val_ci95=column(validated, "val_ci95"))


def read_runs(folders: Sequence) -> list[RunCurves]:
    """:func:`read_run` of each folder, named by the folder; folders of the same name are told
    apart by their parent (``a/run``, ``b/run``)."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise ArgumentError("run", "expected at least one run folder")
    names = [f.resolve().name for f in folders]
    labels = [f"{f.resolve().parent.name}/{n}" if names.count(n) > 1 else n for f, n in zip(folders, names)]
    return [read_run(f, label) for f, label in zip(folders, labels)]


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


def default_window(runs: Sequence[RunCurves]) -> int:
    """A twentieth of the longest run, between 1 and 100 iterations."""
    return int(min(100, max(1, max(len(r.iteration) for r in runs) // 20)))


def _time_unit(runs: Sequence[RunCurves]) -> tuple[str, float]:
    longest = max((np.nanmax(r.elapsed) if np.any(np.isfinite(r.elapsed)) else 0.0) for r in runs)
    if longest >= 3 * 3600:
        return "h", 3600.0
    if longest >= 600:
        return "min", 60.0
    return "s", 1.0


def plot_runs(runs: Sequence[RunCurves], path, *, x: str = "iteration", window: int | None = None,
              references: Sequence[dict] = ()) -> dict:
    """Draw the curves of ``runs`` into ``path`` (the format follows the suffix) and return what was
    drawn: ``{"x": x, "x_label", "window", "runs": {name: {"x", "loss", "accuracy", "val_x",
    "val_accuracy", "val_ci95"}}, "references": [...]}`` with lists of floats (accuracies in percent;
    the training curves read back from the drawn lines).

    ``references``: published accuracies to compare with, each ``{"label", "accuracy", "ci95"}`` in
    percent and optionally ``"run"`` (a run's name: drawn in that run's colour); each is a dashed
    line with its ± CI band on the validation panel, returned as drawn."""
    from matplotlib.figure import Figure  # lazy: an optional extra (linmaml/_extras.py)

    from linmaml.plots.figure import save_figure  # lazy: looked up when drawing (tests swap plots.figure.save_figure)

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
    save_figure(fig, path)
    return {"x": x, "x_label": x_label, "window": window, "runs": drawn, "references": drawn_references}
