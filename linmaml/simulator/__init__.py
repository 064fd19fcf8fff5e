"""The torch simulator: deep linear models (float64) as torch modules, MAML through the one
:mod:`linmaml.meta` engine under the closed forms' names, meta-training with trajectory recording,
and held-out evaluation with confidence intervals.

Layout: :mod:`~linmaml.simulator.chains` (LinearChain and the four models, losses, the autograd
implicit preconditioner J Jᵀ), :mod:`~linmaml.simulator.maml` (``adapt``, ``maml_loss``,
``maml_grad``, ``maml_value_and_grad``: same arguments as :mod:`linmaml.closedform.deep_linear`),
:mod:`~linmaml.simulator.meta_training` (``meta_train`` of a chain or any meta learner, ``Trajectory``),
:mod:`~linmaml.simulator.held_out` (adaptation curves, confidence intervals).

It shares no code with :mod:`linmaml.closedform`: autograd through the engine's inner loop on one
side, hand-derived recursions on the other, which is what lets the two cross-check each other
(``linmaml verify --only simulator``).
"""
from linmaml.simulator.held_out import (AdaptationCurve, adaptation_curve, learner_curves, mean_ci, per_task_curves,
                                       ratio_of_means_ci)
from linmaml.simulator.maml import adapt, maml_grad, maml_loss, maml_value_and_grad
from linmaml.simulator.chains import (
    LinearChain,
    accuracy,
    deep,
    end_to_end,
    implicit_preconditioner,
    linnet,
    logistic_loss,
    logits,
    logr,
    loss_function,
    shallow,
    squared_loss,
    task_loss,
)
from linmaml.simulator.meta_training import Trajectory, meta_train

__all__ = [
    "LinearChain", "shallow", "deep", "logr", "linnet", "end_to_end", "logits", "task_loss", "accuracy",
    "squared_loss", "logistic_loss", "loss_function", "implicit_preconditioner",
    "adapt", "maml_loss", "maml_grad", "maml_value_and_grad", "meta_train", "Trajectory",
    "mean_ci", "ratio_of_means_ci", "learner_curves", "per_task_curves", "adaptation_curve", "AdaptationCurve",
]
