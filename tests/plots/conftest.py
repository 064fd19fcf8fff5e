"""The independent reference that the surface and explorer tests compare with.

One task's k inner steps run with plain Python floats; the objective integrates over the task
slope a ~ N(m, s²) with adaptive quadrature (scipy.integrate.quad on a = m + s·z, z ∈ [−14, 14]; the
Gaussian tail beyond is below 1e-40); meta-training is gradient descent with central finite
differences of that quadrature. Nothing here uses Gauss–Hermite nodes or the library's gradient.

``args`` below is the task setting as a tuple (lr, steps, mean, std, x_var).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate


def inner(ws, a, lr, steps, x_var):
    """The inner-loop path (steps + 1 rows) of one task with slope ``a``, in plain floats."""
    ws = [float(w) for w in ws]
    path = [list(ws)]
    for _ in range(steps):
        prod = math.prod(ws)
        grads = [x_var * (prod - a) * math.prod(ws[:j] + ws[j + 1:]) for j in range(len(ws))]
        ws = [w - lr * g for w, g in zip(ws, grads)]
        path.append(list(ws))
    return path


def objective(ws, lr, steps, mean, std, x_var):
    """The expected post-adaptation loss over a ~ N(mean, std²), by adaptive quadrature."""
    def loss_at(a):
        adapted = inner(ws, a, lr, steps, x_var)[-1]
        return 0.5 * x_var * (math.prod(adapted) - a) ** 2

    if std == 0:
        return loss_at(mean)
    density = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    value, _ = integrate.quad(lambda z: loss_at(mean + std * z) * density(z), -14, 14,
                              epsabs=1e-15, epsrel=1e-13, limit=200)
    return value


def meta_train(start, args, meta_lr, meta_steps, h=1e-5):
    """Gradient descent on :func:`objective` with central differences; the rows of weights visited."""
    w = np.array(start, dtype=float)
    rows = [w.copy()]
    for _ in range(meta_steps):
        grad = np.array([(objective(w + h * e, *args) - objective(w - h * e, *args)) / (2 * h)
                         for e in np.eye(w.size)])
        w = w - meta_lr * grad
        rows.append(w.copy())
    return np.array(rows)


@pytest.fixture(scope="session")
def ref_inner():
    return inner


@pytest.fixture(scope="session")
def ref_objective():
    return objective


@pytest.fixture(scope="session")
def ref_meta_train():
    return meta_train
