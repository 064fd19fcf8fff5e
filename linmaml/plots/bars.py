"""Bar charts of means with confidence intervals (matplotlib).

Like :mod:`linmaml.plots.curves`, the helper draws onto an ``Axes`` it is given and takes plain
numbers; the caller picks the backend (analysis scripts use Agg).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from linmaml.errors import ArgumentError


def ci_bars(ax, labels: Sequence[str], means, half_widths, *, colors=None, baseline: float = 0.0,
            value_format: str = "{mean:.1f} ± {half:.1f}", fontsize: float = 8):
    """One bar per label from ``baseline`` up to ``means[i]``, with a ``± half_widths[i]`` error bar
    and the value written above it. ``means`` and ``half_widths`` have one entry per label (any
    units; the caller scales them). Bars start at ``baseline`` (e.g. chance accuracy), which is drawn
    as a dashed line when non-zero. Returns the ``BarContainer``."""
    means = np.asarray(means, dtype=np.float64).reshape(-1)
    half_widths = np.asarray(half_widths, dtype=np.float64).reshape(-1)
    labels = list(labels)
    if not (len(labels) == means.size == half_widths.size):
        raise ArgumentError("means", f"expected one mean and one half-width per label ({len(labels)} labels), got "
                                     f"{means.size} means and {half_widths.size} half-widths")
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(half_widths)) and np.all(half_widths >= 0)):
        raise ArgumentError("half_widths", "expected finite means and finite, non-negative half-widths")
    positions = np.arange(len(labels))
    colors = colors if colors is not None else [f"C{i}" for i in range(len(labels))]
    bars = ax.bar(positions, means - baseline, bottom=baseline, yerr=half_widths, color=colors, capsize=5,
                  edgecolor="black", linewidth=0.6, error_kw={"elinewidth": 1.2})
    for x, mean, half in zip(positions, means, half_widths):
        ax.text(x, mean + half, value_format.format(mean=mean, half=half), ha="center", va="bottom",
                fontsize=fontsize)
    if baseline:
        ax.axhline(baseline, color="gray", ls="--", lw=0.8)
    ax.set_xticks(positions, labels)
    ax.grid(axis="y", alpha=0.3)
    return bars
