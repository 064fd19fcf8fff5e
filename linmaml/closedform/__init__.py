"""Closed forms of MAML on deep linear networks (numpy and sympy; never torch).

Numeric, float64, no autograd:

* :mod:`~linmaml.closedform.deep_linear` — forward map, losses, per-layer gradients, Hessian-vector
  products, k-step adaptation, the MAML objective and its hand-derived exact meta-gradient.
* :mod:`~linmaml.closedform.preconditioner` — the implicit preconditioner P of one inner step, the
  exact depth-2 step, fractional matrix powers and the balanced closed form with its spectrum.

Conventions (DESIGN.md): weights [W1, …, WL] with W1 applied first and Wj of shape (d_j, d_{j−1});
X (n, d_0), Y (n, d_L); column-major vec; layer indices are 0-based.

Note: the package attribute ``preconditioner`` is the *function*; it hides the submodule of the same
name, so ``from linmaml.closedform import preconditioner`` gives the function. Reach the module's
other names directly: ``from linmaml.closedform.preconditioner import balanced_weights``.
"""
from linmaml.closedform.deep_linear import (
    adapt,
    end_to_end,
    end_to_end_grad,
    hessian_vector_product,
    layer_grads,
    maml_grad,
    maml_loss,
    maml_value_and_grad,
    task_loss,
)
from linmaml.closedform.preconditioner import (
    apply_preconditioner,
    balanced_preconditioner,
    balanced_preconditioner_eigenvalues,
    balanced_weights,
    depth2_step,
    fractional_power,
    preconditioner,
    second_order_remainder,
    unvec,
    vec,
)

__all__ = [
    "adapt",
    "end_to_end",
    "end_to_end_grad",
    "hessian_vector_product",
    "layer_grads",
    "maml_grad",
    "maml_loss",
    "maml_value_and_grad",
    "task_loss",
    "apply_preconditioner",
    "balanced_preconditioner",
    "balanced_preconditioner_eigenvalues",
    "balanced_weights",
    "depth2_step",
    "fractional_power",
    "preconditioner",
    "second_order_remainder",
    "unvec",
    "vec",
]

# ---- Other closed-form modules (gaussian.py, symbolic.py, scalar.py) ---------------------------
# Add their imports below this line, each followed by extending __all__, e.g.
#     from linmaml.closedform.gaussian import wishart_moment
#     __all__ += ["wishart_moment"]
# (Keep sympy-heavy modules importable on their own if package import time matters.)

from linmaml.closedform.gaussian import (
    TaskMixture,
    erm_fixed_point,
    expected_post_adaptation_loss,
    expected_post_adaptation_loss_and_grad,
    maml_fixed_point,
    optimal_inner_lr,
    wishart_moment,
)
from linmaml.closedform.gaussian_lr import (
    best_scalar_lr,
    expected_one_step_map_loss,
    maml_trained_init,
    meta_test_loss,
    negative_lr_table,
    optimal_one_step_map,
)
from linmaml.closedform.scalar import (
    quadrature_nodes,
    scalar_maml_grad,
    scalar_maml_loss,
    surface_grid,
    symmetric_grid,
)

__all__ += [
    "TaskMixture",
    "best_scalar_lr",
    "erm_fixed_point",
    "expected_one_step_map_loss",
    "expected_post_adaptation_loss",
    "expected_post_adaptation_loss_and_grad",
    "maml_trained_init",
    "meta_test_loss",
    "negative_lr_table",
    "optimal_one_step_map",
    "maml_fixed_point",
    "optimal_inner_lr",
    "wishart_moment",
    "quadrature_nodes",
    "scalar_maml_grad",
    "scalar_maml_loss",
    "surface_grid",
    "symmetric_grid",
]
# linmaml.closedform.symbolic needs sympy (slow to import): `from linmaml.closedform import symbolic`.
