"""meta.MAML on deep linear models equals the numpy closed forms (linmaml.closedform.deep_linear).

The row "meta: MAML = closed form" draws one instance per (depth, steps, loss); here every cell of
the grid depths 1–4 × steps 1–5 × both losses runs for two seeds, second and first order.
"""
import numpy as np
import pytest

from linmaml.checks.meta import LOSSES, closedform_parity

TOLERANCE = 1e-10


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_maml_equals_closed_form(depth, steps, loss):
    for seed in range(2):
        rng = np.random.default_rng([depth, steps, len(loss), seed])
        errors = closedform_parity(rng, depth, steps, loss)
        assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_first_order_maml_equals_closed_form(depth, loss):
    for steps in (1, 3, 5):
        rng = np.random.default_rng([depth, steps, len(loss), 99])
        errors = closedform_parity(rng, depth, steps, loss, first_order=True)
        assert max(errors.values()) <= TOLERANCE, errors


def test_parity_detects_a_wrong_learning_rate():
    """The comparison can fail: a closed form run with another rate disagrees far beyond tolerance."""
    import torch

    from linmaml import meta
    from linmaml.checks.meta import as_torch, deep_linear_model, loss_function, random_weights, relative_error
    from linmaml.closedform import deep_linear as dl

    rng = np.random.default_rng(5)
    weights = random_weights(rng, [3, 2, 2])
    X, Y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    fast = meta.MAML(deep_linear_model(weights), lr=0.1, steps=2).adapt(*as_torch(X, Y), loss_function("squared"))
    wrong = dl.adapt(weights, X, Y, 0.1001, 2, "squared")
    assert relative_error([fast["0.weight"], fast["1.weight"]], wrong) > 1e-6
    assert isinstance(fast["0.weight"], torch.Tensor)
