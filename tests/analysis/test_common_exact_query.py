"""ExactQuery: the query set whose squared loss is the exact conditional query loss (less ½d_out σ²),
against simulator.held_out.exact_query_loss; support sets are the family's own draws."""
import numpy as np

from linmaml.analysis._common import ExactQuery
from linmaml.simulator.held_out import exact_query_loss
from linmaml.tasks import RegressionFamily


def test_exact_query_sets_give_the_conditional_loss():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((3, 3))
    family = RegressionFamily(3, 2, task_mean=rng.standard_normal((2, 3)), task_cov=0.5, x_cov=F @ F.T + 0.1 * np.eye(3),
                              noise_std=0.3, n_support=7, n_query=4)
    batch = ExactQuery(family).sample(50, 3)
    plain = family.sample(50, 3)
    np.testing.assert_array_equal(batch.Xs, plain.Xs)
    np.testing.assert_array_equal(batch.Ys, plain.Ys)
    np.testing.assert_array_equal(batch.W, plain.W)
    adapted = batch.W + rng.standard_normal(batch.W.shape)
    residual = np.einsum("tqi,toi->tqo", batch.Xq, adapted) - batch.Yq
    loss = 0.5 * np.sum(residual ** 2, axis=(1, 2)) / batch.Xq.shape[1]
    expected = exact_query_loss(adapted, batch.W, family.x_cov, family.noise_std) - 0.5 * 2 * 0.3 ** 2
    np.testing.assert_allclose(loss, expected, rtol=1e-11)
