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


def test_sinusoid_parameters_are_uniform_on_finns_ranges():
    """A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]: means within 4 standard errors, variances within 4
    standard errors of (b − a)²/12, and every draw inside its range."""
    from linmaml.tasks import SinusoidFamily

    n = 40_000
    batch = SinusoidFamily(n_support=3, n_query=2).sample(n, seed=11)
    for values, (low, high) in ((batch.W[:, 0], (0.1, 5.0)), (batch.W[:, 1], (0.0, np.pi)),
                                (batch.Xs.ravel(), (-5.0, 5.0)), (batch.Xq.ravel(), (-5.0, 5.0))):
        assert low <= values.min() and values.max() <= high
        var = (high - low) ** 2 / 12
        assert abs(values.mean() - (low + high) / 2) < 4 * np.sqrt(var / values.size)
        # the variance of a uniform's sample variance: (μ4 − σ⁴)/n with μ4 = (b − a)⁴/80
        assert abs(values.var() - var) < 4 * np.sqrt(((high - low) ** 4 / 80 - var**2) / values.size)


def test_sinusoid_targets_are_amplitude_times_shifted_sine_point_by_point():
    import math

    from linmaml.tasks import SinusoidFamily

    batch = SinusoidFamily(n_support=5, n_query=7).sample(4, seed=2)
    assert batch.Xs.shape == (4, 5, 1) and batch.Yq.shape == (4, 7, 1) and batch.W.shape == (4, 2)
    for t in range(4):
        amplitude, phase = batch.W[t]
        for X, Y in ((batch.Xs[t], batch.Ys[t]), (batch.Xq[t], batch.Yq[t])):
            expected = [amplitude * math.sin(float(x) - phase) for x in X[:, 0]]
            assert np.allclose(Y[:, 0], expected, rtol=0, atol=1e-14)


def test_sinusoid_sampling_is_seeded_with_a_torch_view():
    from linmaml.tasks import SinusoidFamily

    family = SinusoidFamily(n_support=10, n_query=10)
    a, b, c = family.sample(6, seed=5), family.sample(6, seed=5), family.sample(6, seed=np.random.default_rng(6))
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("Xs", "Ys", "Xq", "Yq", "W"))
    assert not np.array_equal(a.Xs, c.Xs)
    t = a.torch()
    assert str(t.Ys.dtype) == "torch.float64" and np.array_equal(t.Ys.numpy(), a.Ys)


def test_task_batch_indexing_gives_tasks_and_slices_give_batches():
    import torch

    batch = RegressionFamily(3, 2, n_support=4, n_query=6).sample(5, seed=9)
    Xs, Ys, Xq, Yq = batch[1]
    assert np.array_equal(Xs, batch.Xs[1]) and np.array_equal(Yq, batch.Yq[1]) and Xq.shape == (6, 3)
    assert all(np.array_equal(u, v) for u, v in zip(batch[-1], list(batch)[4]))
    assert all(np.array_equal(u, v) for u, v in zip(batch[np.int64(2)], batch.tasks()[2]))
    part = batch[1:4:2]
    assert len(part) == 2 and np.array_equal(part.W, batch.W[[1, 3]]) and np.array_equal(part[1][0], batch.Xs[3])
    tensors = batch.torch()
    assert isinstance(tensors[0][0], torch.Tensor) and torch.equal(tensors[0][3], torch.as_tensor(batch.Yq[0]))
    for bad, kind in ((5, IndexError), (-6, IndexError), (1.0, TypeError), (True, TypeError), ("0", TypeError)):
        with pytest.raises(kind, match="^index: "):
            batch[bad]


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_support=0), "n_support"), (dict(n_query=1.5), "n_query"), (dict(amplitude=(5.0, 0.1)), "amplitude"),
    (dict(phase=(0.0, np.inf)), "phase"), (dict(x_range=3.0), "x_range"), (dict(x_range=(1, 2, 3)), "x_range"),
])
def test_bad_sinusoid_parameters_name_the_argument(kwargs, name):
    from linmaml.tasks import SinusoidFamily

    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        SinusoidFamily(**kwargs)
    with pytest.raises(ValueError, match="^n_tasks"):
        SinusoidFamily().sample(0)


# --------------------------------------------------------------------------------------------------
# Low-rank families (Collins et al. 2022, Saunshi et al. 2020): W_τ = M + H_τ Bᵀ


def test_low_rank_family_samples_have_covariance_kron_of_projected_head_covariance():
    """Sampled vec W_τ (column-major) has mean vec M and covariance (BΛBᵀ) ⊗ I_{d_out}, built here from the
    basis and head variances (not from task_cov), within 4.5 standard errors; its rank is k·d_out."""
    from linmaml.tasks import LowRankRegressionFamily

    rng = np.random.default_rng(2)
    d_in, d_out, k = 4, 2, 2
    mean = rng.standard_normal((d_out, d_in))
    fam = LowRankRegressionFamily(d_in, d_out, rank=k, head_cov=[1.0, 0.25], task_mean=mean, basis_seed=3)
    B = fam.basis
    assert np.allclose(B.T @ B, np.eye(k), atol=1e-12)
    expected = np.zeros((d_in * d_out, d_in * d_out))
    P = B @ np.diag([1.0, 0.25]) @ B.T
    for j in range(d_in):  # column-major index of W[i, j] is i + d_out·j
        for jj in range(d_in):
            for i in range(d_out):
                expected[i + d_out * j, i + d_out * jj] = P[j, jj]
    assert np.allclose(fam.task_cov, expected, atol=1e-14)
    assert np.linalg.matrix_rank(fam.task_cov, tol=1e-10) == k * d_out
    n = 40_000
    W = fam.sample(n, seed=1).W
    vec = W.transpose(0, 2, 1).reshape(n, -1)
    se_mean = np.sqrt(np.diag(expected) / n)
    assert np.all(np.abs(vec.mean(0) - mean.reshape(-1, order="F")) <= 4 * se_mean + 1e-12)
    se_cov = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected**2) / n)
    assert np.all(np.abs(np.cov(vec.T) - expected) <= 4.5 * se_cov + 1e-12)
    # every task map lies in M + span(B) row-wise, and heads() recovers the head exactly
    H = fam.heads(W)
    assert np.allclose(mean + H @ B.T, W, atol=1e-12)


def test_low_rank_family_is_seeded_torch_viewable_and_replaceable():
    import dataclasses

    from linmaml.tasks import LowRankRegressionFamily, RegressionFamily

    fam = LowRankRegressionFamily(6, 1, rank=2, head_cov=[1.0, 0.1], noise_std=0.2, n_support=3, n_query=5)
    assert isinstance(fam, RegressionFamily)
    a, b = fam.sample(4, seed=5), fam.sample(4, seed=5)
    assert np.array_equal(a.Ys, b.Ys) and a.Xs.shape == (4, 3, 6) and a.Yq.shape == (4, 5, 1)
    assert np.array_equal(a.torch().W.numpy(), a.W)
    other = dataclasses.replace(fam, n_support=11)
    assert other.n_support == 11 and np.array_equal(other.basis, fam.basis)
    assert np.array_equal(other.task_cov, fam.task_cov)
    # a different basis seed gives a different subspace; an explicit basis is kept
    assert not np.allclose(LowRankRegressionFamily(6, rank=2, basis_seed=1).basis, fam.basis)
    assert np.array_equal(LowRankRegressionFamily(6, rank=2, basis=fam.basis).basis, fam.basis)


def test_low_rank_heads_variances_follow_head_cov_matrix():
    from linmaml.tasks import LowRankRegressionFamily

    Lam = np.array([[1.0, 0.5], [0.5, 2.0]])
    fam = LowRankRegressionFamily(5, 3, rank=2, head_cov=Lam)
    n = 20_000
    H = fam.heads(fam.sample(n, seed=0).W).reshape(-1, 2)  # every row of every head, i.i.d. N(0, Λ)
    se = np.sqrt((np.outer(np.diag(Lam), np.diag(Lam)) + Lam**2) / H.shape[0])
    assert np.all(np.abs(np.cov(H.T) - Lam) < 4.5 * se)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(d_in=3, rank=4), "rank"),
        (dict(d_in=3, rank=0), "rank"),
        (dict(d_in=3, rank=2, head_cov=[1.0]), "head_cov"),
        (dict(d_in=3, rank=2, head_cov=[1.0, -1.0]), "head_cov"),
        (dict(d_in=3, rank=2, head_cov=[[1.0, 2.0], [2.0, 1.0]]), "head_cov"),
        (dict(d_in=3, rank=2, head_cov="big"), "head_cov"),
        (dict(d_in=3, rank=2, basis=np.ones((3, 2))), "basis"),
        (dict(d_in=3, rank=2, basis=np.eye(3)), "basis"),
        (dict(d_in=3, rank=1, basis_seed=-1), "basis_seed"),
    ],
)
def test_low_rank_family_rejects_bad_arguments_by_name(kwargs, name):
    from linmaml.errors import ArgumentError, ArgumentTypeError
    from linmaml.tasks import LowRankRegressionFamily

    with pytest.raises((ArgumentError, ArgumentTypeError, ValueError, TypeError)) as info:
        LowRankRegressionFamily(**kwargs)
    assert str(info.value).startswith(name)


def test_low_rank_family_does_not_take_task_cov():
    from linmaml.tasks import LowRankRegressionFamily

    with pytest.raises(TypeError):
        LowRankRegressionFamily(3, rank=1, task_cov=1.0)


def test_principal_angle_distance_matches_scipy_subspace_angles():
    """sin of the largest principal angle, against scipy.linalg.subspace_angles (an independent
    implementation), on random subspaces of several dimensions, plus the exact ends 0 and 1."""
    from scipy.linalg import subspace_angles

    from linmaml.tasks import orthonormal_basis, principal_angle_distance

    rng = np.random.default_rng(0)
    for d, a, b in [(5, 2, 2), (10, 3, 3), (8, 4, 2), (20, 3, 3), (6, 1, 1)]:
        A = rng.standard_normal((d, a)) * rng.uniform(0.1, 3.0, size=a)  # not orthonormal: the span counts
        B = rng.standard_normal((d, b))
        expected = np.sin(np.max(subspace_angles(A, B)))
        assert abs(principal_angle_distance(A, B) - expected) < 1e-12
    B = orthonormal_basis(7, 3, seed=1)
    assert principal_angle_distance(B @ rng.standard_normal((3, 3)), B) < 1e-12
    assert principal_angle_distance(np.eye(7)[:, :3], np.eye(7)[:, 3:5]) == pytest.approx(1.0, abs=1e-15)
    # a nearby subspace: B rotated by a small angle θ in one direction has distance sin θ
    theta = 1e-3
    C = B.copy()
    out = np.linalg.qr(np.column_stack([B, rng.standard_normal(7)]))[0][:, 3]
    C[:, 0] = np.cos(theta) * B[:, 0] + np.sin(theta) * out
    assert principal_angle_distance(C, B) == pytest.approx(np.sin(theta), rel=1e-9)


def test_orthonormal_basis_is_orthonormal_seeded_and_checks_k():
    from linmaml.errors import ArgumentError
    from linmaml.tasks import orthonormal_basis

    B = orthonormal_basis(9, 4, seed=2)
    assert B.shape == (9, 4) and np.allclose(B.T @ B, np.eye(4), atol=1e-13)
    assert np.array_equal(B, orthonormal_basis(9, 4, seed=2))
    with pytest.raises(ArgumentError) as info:
        orthonormal_basis(3, 4)
    assert info.value.argument == "k"
