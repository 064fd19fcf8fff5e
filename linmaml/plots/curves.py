"""Plotting helpers for curves with confidence bands and running means (matplotlib).

The helpers draw onto an ``Axes`` they are given and take plain arrays, so they do not depend on
where the numbers came from; the caller picks the backend (analysis scripts use Agg).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def band(ax, x, mean, half_width, *, label: str | None = None, color=None, alpha: float = 0.25, **line_kw):
    """A line at ``mean`` with a shaded band ``mean ± half_width``; returns the line."""
    x, mean, half_width = (np.asarray(a, dtype=np.float64) for a in (x, mean, half_width))
    (line,) = ax.plot(x, mean, label=label, color=color, **line_kw)
    ax.fill_between(x, mean - half_width, mean + half_width, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def adaptation_panel(ax, curves: Sequence[dict], key: str = "loss", *, colors=None, logy: bool = False,
                     percent: bool = False, mark_step: int | None = 1):
    """Held-out adaptation curves: ``curves`` are dicts with "name", "steps", "<key>_mean", "<key>_ci"
    (as :meth:`linmaml.simulator.held_out.AdaptationCurve.to_dict` gives). ``percent`` scales by 100;
    ``mark_step`` draws a dotted vertical line at that inner step."""
    scale = 100.0 if percent else 1.0
    for i, curve in enumerate(curves):
        color = colors[i] if colors is not None else f"C{i}"
        mean, half = scale * np.asarray(curve[f"{key}_mean"]), scale * np.asarray(curve[f"{key}_ci"])
        if logy:
            # A band reaching zero or below has no place on a log axis: cut it at half the curve's
            # smallest mean (the line itself is exact; only the band's lower edge is clipped).
            floor = 0.5 * mean[mean > 0].min() if np.any(mean > 0) else 1e-12
            lower = np.maximum(mean - half, floor)
            half = np.vstack([mean - lower, half])
            (line,) = ax.plot(curve["steps"], mean, label=curve["name"], color=color, marker="o", markersize=3)
            ax.fill_between(curve["steps"], lower, mean + half[1], color=line.get_color(), alpha=0.25, linewidth=0)
            continue
        band(ax, curve["steps"], mean, half, label=curve["name"], color=color, marker="o", markersize=3)
    if mark_step is not None:
        ax.axvline(mark_step, color="gray", lw=0.8, ls=":")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("inner steps on the support set")
    ax.grid(alpha=0.3)


def running_mean(values, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start), same length as ``values``."""
    values = np.asarray(values, dtype=np.float64)
    window = max(1, int(window))
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(0, idx - window)
    return (sums[idx] - sums[lo]) / (idx - lo)
