"""Argument checks shared by the whole package.

Every public function validates its input with these helpers so that bad input fails early with a
``ValueError`` (or ``TypeError``) whose message starts with the argument's name and says what was
expected: :class:`linmaml.errors.ArgumentError` / :class:`~linmaml.errors.ArgumentTypeError`, which
also carry the name as ``.argument``. The CLI turns these exceptions into a one-line message with exit status 2.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import numpy as np

from linmaml.errors import ArgumentError, ArgumentTypeError

LOSSES = ("squared", "logistic")


def finite_number(value, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """Return ``value`` as a float, or raise if it is not a finite real number (of the given sign)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # numpy 0-d arrays and torch scalars are accepted through float() below.
        try:
            if np.iscomplexobj(value):
                raise TypeError  # float() would silently drop the imaginary part
            if getattr(value, "ndim", None) == 0 or getattr(value, "shape", None) == ():
                value = float(value)
            else:
                raise TypeError
        except (TypeError, ValueError):
            raise ArgumentTypeError(name, f"expected a real number, got {type(value).__name__}") from None
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentError(name, f"expected a finite number, got {value}")
    if positive and value <= 0:
        raise ArgumentError(name, f"expected a positive number, got {value}")
    if nonnegative and value < 0:
        raise ArgumentError(name, f"expected a non-negative number, got {value}")
    return value


def integer(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise if it is not an integer within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ArgumentTypeError(name, f"expected an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ArgumentError(name, f"expected an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ArgumentError(name, f"expected an integer <= {maximum}, got {value}")
    return value


def learning_rates(lr, steps: int, name: str = "lr") -> list[float]:
    """One finite learning rate per inner step: a number broadcast to all steps, or a sequence."""
    if isinstance(lr, np.ndarray) and lr.ndim == 0:
        lr = lr.item()
    if isinstance(lr, (Sequence, np.ndarray)) and not isinstance(lr, str):
        rates = [finite_number(r, f"{name}[{i}]") for i, r in enumerate(lr)]
        if len(rates) != steps:
            raise ArgumentError(name, f"expected {steps} per-step learning rates, got {len(rates)}")
        return rates
    rate = finite_number(lr, name)
    try:
        return [rate] * steps
    except (OverflowError, MemoryError):
        raise ArgumentError("steps", f"{steps} inner steps do not fit in memory") from None


def loss_name(loss, name: str = "loss") -> str:
    if loss not in LOSSES:
        raise ArgumentError(name, f"expected one of {', '.join(LOSSES)}, got {loss!r}")
    return loss


def real_matrix(value, name: str, *, ndim: int = 2) -> np.ndarray:
    """A finite float64 array with ``ndim`` dimensions (a copy is not made when not needed)."""
    try:
        if np.iscomplexobj(value):
            raise TypeError  # casting would silently drop the imaginary part
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentTypeError(name, f"expected a real array, got {type(value).__name__}") from None
    if array.ndim != ndim:
        raise ArgumentError(name, f"expected a {ndim}-d array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ArgumentError(name, "contains non-finite values")
    return array


def layer_indices(layers: Iterable[int] | None, depth: int, name: str = "adapt_layers") -> tuple[int, ...]:
    """Sorted distinct 0-based layer indices; None means every layer."""
    if layers is None:
        return tuple(range(depth))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ArgumentTypeError(name, f"expected an iterable of layer indices, got {layers!r}")
    out = set()
    for j in layers:
        out.add(integer(j, name, minimum=0, maximum=depth - 1))
    return tuple(sorted(out))
