"""Confidence intervals of means, written once: the Student-t interval (the simulator's, the figures')
and the normal-approximation interval of the few-shot literature (the benchmarks' accuracies).

For n independent samples with sample standard deviation s (ddof = 1) the half-width is
``q · s / √n`` with q the two-sided ``level`` quantile: Student-t with n − 1 degrees of freedom
(:func:`t_quantile`), or the standard normal's (``1.96`` at 95%: :data:`Z95`) with ``normal=True``.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtri, stdtrit

from linmaml import _validate
from linmaml.errors import ArgumentError

#: The standard normal's 97.5% quantile, the "1.96" of a 95% normal-approximation interval.
Z95 = 1.959963984540054


def _level(level) -> float:
    level = _validate.finite_number(level, "level", positive=True)
    if level >= 1:
        raise ArgumentError("level", f"expected a probability in (0, 1), got {level}")
    return level


def t_quantile(dof: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``dof`` degrees of freedom (2.262 for dof 9)."""
    return float(stdtrit(dof, 0.5 + _level(level) / 2))


def mean_ci(values, level: float = 0.95, axis: int = 0, *, normal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the two-sided ``level`` confidence interval along ``axis``.

    ``values`` holds one number per independent sample along ``axis`` (at least two). Returns
    ``(mean, half_width)`` with the other axes kept (numpy scalars for 1-d input). Student-t with
    n − 1 degrees of freedom, or the normal approximation with ``normal=True``.
    """
    values = np.asarray(values, dtype=np.float64)
    level = _level(level)
    n = values.shape[axis]
    if n < 2:
        raise ArgumentError("values", f"expected at least 2 samples along axis {axis}, got {n}")
    if normal:
        quantile = Z95 if level == 0.95 else ndtri(0.5 + level / 2)
    else:
        quantile = stdtrit(n - 1, 0.5 + level / 2)
    return values.mean(axis=axis), quantile * values.std(axis=axis, ddof=1) / np.sqrt(n)
