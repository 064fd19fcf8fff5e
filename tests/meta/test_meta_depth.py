"""Depth as a meta-optimizer (A·W·B with W adapted ≡ KFO on W' = A W B) and Meta-SGD as a
reparameterisation (step sizes s ≡ plain MAML on √s ⊙ V), exactly, k = 1…5 steps."""
import numpy as np
import pytest
import torch

from linmaml import meta
from linmaml.checks.meta import (LOSSES, as_torch, deep_linear_model, depth_as_kfo, loss_function,
                                 metasgd_as_reparameterisation, relative_error)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_depth_is_kfo(steps, loss):
    for seed in range(4):  # square and rectangular outer factors both occur
        assert depth_as_kfo(np.random.default_rng([steps, len(loss), seed]), steps, loss) <= 1e-12


def test_depth_is_kfo_without_psd_and_the_identity_can_fail():
    """psd=False with L = AAᵀ and R = BᵀB gives the same steps; dropping the right factor does not."""
    rng = np.random.default_rng(3)
    A, W, B = rng.standard_normal((2, 3)), rng.standard_normal((3, 4)), rng.standard_normal((4, 3))
    X, Y = as_torch(rng.standard_normal((6, 3)), rng.standard_normal((6, 2)))
    loss_fn = loss_function("squared")
    deep = deep_linear_model([B, W, A])
    deep_fast = meta.MAML(deep, lr=0.1, steps=3, adapted=["1.weight"]).adapt(X, Y, loss_fn)["1.weight"]
    At, Bt = as_torch(A, B)
    end_to_end = At @ deep_fast @ Bt
    for left, right, agrees in ((At @ At.T, Bt.T @ Bt, True), (At @ At.T, torch.eye(3, dtype=torch.float64), False)):
        kfo = meta.KFO(psd=False)
        learner = meta.MAML(deep_linear_model([A @ W @ B]), lr=0.1, steps=3, transform=kfo)
        with torch.no_grad():
            kfo.factors["0/weight"]["L0"].copy_(left)
            kfo.factors["0/weight"]["R0"].copy_(right)
        error = relative_error([learner.adapt(X, Y, loss_fn)["0.weight"]], [end_to_end])
        assert (error <= 1e-12) == agrees, error


@pytest.mark.parametrize("loss", LOSSES)
def test_metasgd_is_a_reparameterisation(loss):
    for steps in range(1, 6):
        for seed in range(2):
            assert metasgd_as_reparameterisation(np.random.default_rng([steps, seed, len(loss)]), steps, loss) <= 1e-12
