"""The torch simulator: deep linear models (float64), MAML by autograd through the inner loop,
meta-training with trajectory recording, and held-out evaluation with confidence intervals.

It is independent of :mod:`linmaml.closedform` (no shared code), which is what lets the two
cross-check each other (``linmaml verify --only simulator``).
"""
from linmaml.simulator.evaluate import AdaptationCurve, adaptation_curve, mean_ci, per_task_curves, ratio_of_means_ci
from linmaml.simulator.models import (
    LinearChain,
    accuracy,
    deep,
    end_to_end,
    implicit_preconditioner,
    linnet,
    logits,
    logr,
    shallow,
    task_loss,
)
from linmaml.simulator.train import Trajectory, adapt, maml_gradient, maml_objective, meta_train

__all__ = [
    "LinearChain", "shallow", "deep", "logr", "linnet", "end_to_end", "logits", "task_loss", "accuracy",
    "implicit_preconditioner", "adapt", "maml_objective", "maml_gradient", "meta_train", "Trajectory",
    "mean_ci", "ratio_of_means_ci", "per_task_curves", "adaptation_curve", "AdaptationCurve",
]
