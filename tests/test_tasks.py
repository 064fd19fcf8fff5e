"""Task families: sampled moments match the specified ones (Monte Carlo, within 4 standard errors)."""
import numpy as np
import pytest

from linmaml.tasks import ClassificationFamily, RegressionFamily


def test_regression_weight_moments_match_mean_and_column_major_covariance():
    rng = np.random.default_rng(0)
    d_out, d_in = 2, 3
    mean = rng.standard_normal((d_out, d_in))
    A = rng.standard_normal((6, 6))
    omega = A @ A.T / 6
    fam = RegressionFamily(d_in, d_out, task_mean=mean, task_cov=omega)
    n = 40_000
    W = fam.sample(n, seed=1).W
    vec = W.transpose(0, 2, 1).reshape(n, -1)  # column-major vec of each W
    se_mean = np.sqrt(np.diag(omega) / n)
    assert np.all(np.abs(vec.mean(0) - mean.reshape(-1, order="F")) < 4 * se_mean)
    emp_cov = np.cov(vec.T)
    # standard error of a covariance entry: sqrt((Ω_ii Ω_jj + Ω_ij²) / n)
    se_cov = np.sqrt((np.outer(np.diag(omega), np.diag(omega)) + omega**2) / n)
    assert np.all(np.abs(emp_cov - omega) < 4.5 * se_cov)


def test_regression_targets_follow_the_task_map_plus_noise():
    fam = RegressionFamily(4, 1, task_mean=0.5, noise_std=0.3, n_support=5000, n_query=3)
    batch = fam.sample(2, seed=3)
    residual = batch.Ys[0] - batch.Xs[0] @ batch.W[0].T
    assert abs(residual.std() - 0.3) < 4 * 0.3 / np.sqrt(2 * 5000)
    assert abs(residual.mean()) < 4 * 0.3 / np.sqrt(5000)


def test_sampling_is_seeded_and_torch_view_has_same_numbers():
    fam = RegressionFamily(3, 2, n_support=4, n_query=6)
    a, b, c = fam.sample(5, seed=7), fam.sample(5, seed=7), fam.sample(5, seed=8)
    assert np.array_equal(a.Xs, b.Xs) and np.array_equal(a.Yq, b.Yq)
    assert not np.array_equal(a.Xs, c.Xs)
    t = a.torch()
    assert str(t.Xq.dtype) == "torch.float64" and np.array_equal(t.Xq.numpy(), a.Xq)
    assert [x.shape for x in a.tasks()[0]] == [(4, 3), (4, 2), (6, 3), (6, 2)]


def test_classification_labels_follow_the_sign_rule_with_flips():
    fam = ClassificationFamily(5, task_mean=[1, 0, 0, 0, 0], flip=0.1, n_support=20_000, n_query=2)
    batch = fam.sample(1, seed=0)
    clean = (batch.Xs[0] @ batch.W[0].T > 0).astype(float)
    assert set(np.unique(batch.Ys)) <= {0.0, 1.0}
    flipped = np.mean(clean != batch.Ys[0])
    assert abs(flipped - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 20_000)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(d_in=0), "d_in"),
        (dict(d_in=2, noise_std=-1.0), "noise_std"),
        (dict(d_in=2, task_cov=[[1.0, 2.0], [2.0, 1.0]]), "task_cov"),
        (dict(d_in=2, x_cov=np.ones((3, 3))), "x_cov"),
        (dict(d_in=2, task_mean=[1.0, np.nan]), "task_mean"),
        (dict(d_in=2, n_support=0), "n_support"),
    ],
)
def test_bad_family_parameters_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        RegressionFamily(**kwargs)
