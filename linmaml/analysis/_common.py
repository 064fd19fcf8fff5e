"""What several figure modules share: task families from their settings, and meta-training of
:mod:`linmaml.meta` learners on them; the analysis scripts' one-line errors.

Meta-training of a ``linmaml.meta`` learner or a deep linear chain is ``simulator.meta_train`` (one
engine, :class:`linmaml.meta.engine.Engine`); held-out adaptation curves are
``simulator.held_out.learner_curves`` (through :meth:`Engine.score`). Nothing here re-implements the
inner loop.

Losses follow DESIGN.md and are :mod:`linmaml.meta.losses`' (squared ``1/(2n)·‖output − target‖²_F``
per task, logistic the mean binary cross-entropy on the logits).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from linmaml.tasks import ClassificationFamily, RegressionFamily, TaskBatch

from linmaml.errors import ArgumentTypeError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose own errors (a bad number, an unknown flag) are one line, ``<prog>: error: ...``,
    and exit status 2, as the CLI's (the analysis layer does not import :mod:`linmaml.cli`)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def report_error(prog: str, error: BaseException) -> int:
    """Print ``<prog>: error: <the message's first line>`` (the error's type name when the message is
    empty) on stderr, one line as the CLI prints its errors; return the exit status 2."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"{prog}: error: {first}", file=sys.stderr)
    return 2


def regression_family(f: dict):
    """A :class:`linmaml.tasks.RegressionFamily` from a settings dict (d_in, d_out, task_mean,
    task_var, x_var, noise_std, n_support, n_query; ``x_cov``/``task_cov`` override the scalars)."""
    return RegressionFamily(f["d_in"], f["d_out"], task_mean=f["task_mean"], task_cov=f.get("task_cov", f["task_var"]),
                            x_cov=f.get("x_cov", f["x_var"]), noise_std=f["noise_std"], n_support=f["n_support"],
                            n_query=f["n_query"])


def classification_family(c: dict):
    """A :class:`linmaml.tasks.ClassificationFamily` from a settings dict."""
    return ClassificationFamily(c["d_in"], task_mean=c["task_mean"], task_cov=c["task_var"], x_cov=c["x_var"],
                                flip=c["flip"], n_support=c["n_support"], n_query=c["n_query"])


class PopulationSupport:
    """A regression family whose tasks carry a support set giving the POPULATION gradient exactly.

    ``PopulationSupport(family).sample(T, seed)`` draws T tasks of ``family`` (a
    :class:`linmaml.tasks.RegressionFamily`, same seed handling) and replaces each support set by the d
    points X = √d·Σ^{1/2} (rows; XᵀX/d = Σ) with noise-free targets Y = X W_τᵀ, so the support gradient
    of the squared loss 1/(2d)·‖X Wᵀ − Y‖² is (W − W_τ)Σ, the expected support gradient. Tasks, query
    points and query noise are the family's. Shapes as :class:`linmaml.tasks.TaskBatch` with n_s = d.
    This lets ``simulator.meta_train`` train on the objective that the closed forms' population
    expectations describe.
    """

    def __init__(self, family):
        if not isinstance(family, RegressionFamily):
            raise ArgumentTypeError("family", f"expected a RegressionFamily, got {type(family).__name__}")
        self.family, self.d_in, self.d_out = family, family.d_in, family.d_out
        vals, vecs = np.linalg.eigh(family.x_cov)
        self.support_x = (vecs * np.sqrt(np.clip(vals, 0, None) * family.d_in)) @ vecs.T

    def sample(self, n_tasks: int, seed=0):
        b = self.family.sample(n_tasks, seed)
        Xs = np.broadcast_to(self.support_x, (len(b), self.d_in, self.d_in)).copy()
        return TaskBatch(Xs, Xs @ np.swapaxes(b.W, 1, 2), b.Xq, b.Yq, b.W)

    def gradient_deviation(self, tasks: int = 32, seed=0) -> float:
        """max |support gradient − (W − W_τ)Σ| at random W over ``tasks`` sampled tasks (rounding only)."""
        b = self.sample(tasks, seed)
        W = np.random.default_rng(seed).standard_normal(b.W.shape)
        grad = np.swapaxes(b.Xs @ np.swapaxes(W, 1, 2) - b.Ys, 1, 2) @ b.Xs / self.d_in
        return float(np.abs(grad - (W - b.W) @ self.family.x_cov).max())



class ExactQuery:
    """A regression family whose tasks carry a query set giving the EXACT conditional query loss.

    ``ExactQuery(family).sample(T, seed)`` draws T tasks of ``family`` (same seed handling, support
    sets unchanged) and replaces each query set by the d points X = √d·Σ^{1/2} (rows; XᵀX/d = Σ) with
    noise-free targets Y = X W_τᵀ, so the query loss 1/(2d)·‖X W′ᵀ − Y‖² of any adapted map W′ is
    ½·tr((W′ − W_τ)Σ(W′ − W_τ)ᵀ): the expectation over fresh query points and noise, less the constant
    ½·d_out·σ². Meta-training on it has the same optimum as on sampled query sets and no query-sampling
    noise in its meta-gradient. Shapes as :class:`linmaml.tasks.TaskBatch` with n_q = d.
    """

    def __init__(self, family):
        if not isinstance(family, RegressionFamily):
            raise ArgumentTypeError("family", f"expected a RegressionFamily, got {type(family).__name__}")
        self.family, self.d_in, self.d_out = family, family.d_in, family.d_out
        vals, vecs = np.linalg.eigh(family.x_cov)
        self.query_x = (vecs * np.sqrt(np.clip(vals, 0, None) * family.d_in)) @ vecs.T

    def sample(self, n_tasks: int, seed=0):
        b = self.family.sample(n_tasks, seed)
        Xq = np.broadcast_to(self.query_x, (len(b), self.d_in, self.d_in)).copy()
        return TaskBatch(b.Xs, b.Ys, Xq, Xq @ np.swapaxes(b.W, 1, 2), b.W)


def convergence(final, snapshot, tolerance: float) -> dict:
    """Whether each training seed converged, as the figures record it: ``final`` and ``snapshot`` hold,
    per seed, the per-task exact losses (S, T) of the model at the end of training and at its
    snapshot, on the same paired tasks. The relative change mean(snapshot) / mean(final) − 1 per
    seed, and whether its size is below ``tolerance``."""
    change = [float(np.mean(s) / np.mean(f) - 1) for f, s in zip(final, snapshot)]
    return {"relative_change_after_snapshot": change, "converged": [abs(c) < tolerance for c in change]}


def load_trajectory_step(module, run, step: int) -> None:
    """Copy the parameters that ``run`` (a :class:`linmaml.simulator.Trajectory`) recorded after meta-step
    ``step`` into ``module`` (the trained learner's twin, or for a chain its module), by name."""
    values = dict(zip(run.names, run.weights))
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.as_tensor(values[name][step]))
