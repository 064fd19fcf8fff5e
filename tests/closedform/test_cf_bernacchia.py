"""Bernacchia 2021's mixed linear regression (linmaml.closedform.bernacchia) against independent
computations: the exact conditional expectation against an explicit linear map from every standard
normal source (task parameters, label noise) to ω*, built by explicit inner steps and numpy's pinv;
the α_t = 0 Wishart value against a plain average of the conditional value; the test-task formula
against linmaml.closedform.gaussian; the best test rate against scipy; the simulation against the
theory (Monte Carlo with standard errors)."""
import numpy as np
import pytest
from scipy import optimize

from linmaml.closedform import bernacchia as b
from linmaml.closedform.gaussian import expected_post_adaptation_loss
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.tasks import RegressionFamily


def explicit_expected_norm(setting, Xt, Xv, lr):
    """E‖ω*‖² (w0 = 0) for fixed inputs Xt (m, n_t, p), Xv (m, n_v, p), exactly: ω* = A⁺ b(ξ) is linear in
    the standard normal sources ξ = (task parameters, inner noise, outer noise), so E‖ω*‖² = ‖A⁺ L‖_F² with
    L the matrix of b(ξ) on unit vectors, b computed by the explicit inner step y ↦ α Xᵀ y / n_t."""
    m, n_t, p = Xt.shape
    n_v = Xv.shape[1]
    rows = []
    for i in range(m):
        S = Xt[i].T @ Xt[i] / n_t
        rows.append(Xv[i] @ (np.eye(p) - lr * S))
    A = np.concatenate(rows)
    sources = m * p + m * n_t + m * n_v
    L = np.zeros((m * n_v, sources))
    for k in range(sources):
        xi = np.zeros(sources)
        xi[k] = 1.0
        w = setting.nu / np.sqrt(p) * xi[: m * p].reshape(m, p)
        zt = setting.sigma * xi[m * p: m * p + m * n_t].reshape(m, n_t)
        zv = setting.sigma * xi[m * p + m * n_t:].reshape(m, n_v)
        column = []
        for i in range(m):
            yt = Xt[i] @ w[i] + zt[i]
            yv = Xv[i] @ w[i] + zv[i]
            step = lr * Xt[i].T @ yt / n_t  # the adapted map from ω = 0, labels y
            column.append(yv - Xv[i] @ step)
        L[:, k] = np.concatenate(column)
    return float(np.sum((np.linalg.pinv(A) @ L) ** 2))


@pytest.mark.parametrize("p,m,n_t,n_v,lr", [(7, 2, 4, 2, -0.7), (7, 2, 4, 2, 0.5), (3, 3, 5, 2, -1.2),
                                            (4, 4, 6, 1, 0.3), (5, 1, 3, 3, 2.0)])
def test_conditional_meta_error_is_exact(p, m, n_t, n_v, lr):
    rng = np.random.default_rng(p + 10 * m)
    setting = b.Setting(p=p, m=m, n_t=n_t, n_v=n_v, n_r=3, sigma=0.7, nu=1.3)
    Xt, Xv = rng.standard_normal((2, m, n_t, p)), rng.standard_normal((2, m, n_v, p))
    values = b.conditional_meta_error(setting, Xt, Xv, [lr, 0.0])
    for r in range(2):
        assert values[0, r] == pytest.approx(explicit_expected_norm(setting, Xt[r], Xv[r], lr), rel=1e-9)
        assert values[1, r] == pytest.approx(explicit_expected_norm(setting, Xt[r], Xv[r], 0.0), rel=1e-9)


def test_wishart_value_at_zero_matches_the_average_of_the_conditional_value():
    setting = b.Setting(p=20, m=3, n_t=5, n_v=2, n_r=3, sigma=0.8, nu=1.1)
    Xt, Xv = b.sample_inputs(setting, 6000, 3)
    values = b.conditional_meta_error(setting, Xt, Xv, [0.0])[0]
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert abs(values.mean() - b.meta_error_at_zero(setting)) < 4 * se
    assert b.meta_error_at_zero(b.Setting(p=7, m=3, n_v=2)) is None  # p ≤ m·n_v + 1: no finite closed form


def test_control_variate_keeps_the_mean_and_shrinks_the_error():
    setting = b.Setting(p=30, m=3, n_t=10, n_v=2, n_r=5)
    rates = [-0.5, 0.1]
    with_cv = b.meta_error(setting, rates, draws=3000, seed=5)
    Xt, Xv = b.sample_inputs(setting, 3000, 6)
    plain = b.conditional_meta_error(setting, Xt, Xv, rates)
    plain_se = plain.std(axis=1, ddof=1) / np.sqrt(plain.shape[1])
    for k in range(2):
        assert abs(with_cv["mean"][k] - plain[k].mean()) < 4 * np.hypot(with_cv["se"][k], plain_se[k])
        assert with_cv["se"][k] < plain_se[k]


def test_large_rate_limit():
    setting = b.Setting(p=12, m=2, n_t=6, n_v=2, n_r=4)
    Xt, Xv = b.sample_inputs(setting, 50, 1)
    limit = b.conditional_meta_error_parts(setting, Xt, Xv, [0.0], limit=True)[:, 0]
    far = b.conditional_meta_error_parts(setting, Xt, Xv, [-1e7, 1e7])
    for k in range(2):
        np.testing.assert_allclose(far[:, k], limit, rtol=1e-5)


@pytest.mark.parametrize("lr_test", [-0.3, 0.0, 0.2, 0.9])
def test_test_loss_is_the_gaussian_family_expectation(lr_test):
    setting = b.Setting(p=6, m=2, n_t=4, n_v=2, n_r=5, sigma=0.9, nu=0.7)
    rng = np.random.default_rng(2)
    omega = rng.standard_normal((1, setting.p))
    family = RegressionFamily(setting.p, 1, task_mean=0.0, task_cov=setting.nu**2 / setting.p, x_cov=1.0,
                              noise_std=setting.sigma, n_support=setting.n_r)
    expected = expected_post_adaptation_loss(omega, family, lr_test, 1)
    assert b.test_loss(setting, float(np.sum(omega**2)), lr_test)[0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("e", [0.0, 0.1, 2.5])
def test_best_test_rate_minimises_the_test_loss(e):
    setting = b.Setting()
    found = optimize.minimize_scalar(lambda a: float(b.test_loss(setting, e, a)[0]), bounds=(-2, 2), method="bounded",
                                     options={"xatol": 1e-10})
    assert b.best_test_rate(setting, e) == pytest.approx(found.x, abs=1e-6)
    assert b.best_test_rate(setting, e) > 0


def test_simulation_agrees_with_the_theory():
    setting = b.Setting(p=10, m=2, n_t=8, n_v=2, n_r=6, sigma=0.8, nu=0.9)
    rates, tests = [-1.0, 0.4], [0.1, 0.3]
    sim = b.simulate(setting, rates, tests, runs=3000, test_tasks=4, seed=11)
    theory = b.meta_error(setting, rates, draws=3000, seed=12)
    for k in range(2):
        error = sim["meta_error"][k]
        se = np.hypot(error.std(ddof=1) / np.sqrt(error.size), theory["se"][k])
        assert abs(error.mean() - theory["mean"][k]) < 4 * se
        for j, lr_test in enumerate(tests):
            loss = sim["loss"][k, j]
            exact = b.test_loss(setting, theory["mean"][k], lr_test)[0]
            assert abs(loss.mean() - exact) < 4 * np.hypot(loss.std(ddof=1) / np.sqrt(loss.size), theory["se"][k])


def test_bernacchia_figure_setting_has_a_negative_best_training_rate():
    # Bernacchia's claim at his settings, as a paired difference on the same input draws
    setting = b.Setting()
    result = b.meta_error(setting, [-1.0, 0.0], draws=400, seed=0)
    diff = result["samples"][1] - result["samples"][0]
    assert diff.mean() > 10 * diff.std(ddof=1) / np.sqrt(diff.size)


@pytest.mark.parametrize("kwargs,name", [({"p": 0}, "p"), ({"m": 1.5}, "m"), ({"sigma": -1.0}, "sigma"),
                                         ({"nu": float("nan")}, "nu")])
def test_bad_settings_are_refused(kwargs, name):
    with pytest.raises((ArgumentError, ArgumentTypeError)) as info:
        b.Setting(**kwargs)
    assert info.value.argument == name


def test_bad_arguments_are_refused():
    setting = b.Setting(p=5, m=2, n_t=3, n_v=2)
    Xt, Xv = b.sample_inputs(setting, 2, 0)
    with pytest.raises(ArgumentError) as info:
        b.conditional_meta_error(setting, Xt, Xv, [float("nan")])
    assert info.value.argument == "lr_train"
    with pytest.raises(ArgumentError) as info:
        b.conditional_meta_error(setting, Xt[:, :, :2], Xv, [0.1])
    assert info.value.argument == "Xt"
    with pytest.raises(ArgumentTypeError) as info:
        b.meta_error("not a setting", [0.1])
    assert info.value.argument == "setting"
    with pytest.raises(ArgumentError) as info:
        b.test_loss(setting, -1.0, 0.1)
    assert info.value.argument == "meta_error"


def test_verification_rows_catch_a_wrong_noise_term(monkeypatch):
    # a row that cannot fail checks nothing: drop the inner-noise term a²·C_iC_iᵀ from the closed form
    from linmaml.checks import bernacchia_collins as rows
    from linmaml.verification import all_identities

    original = b.conditional_meta_error_parts

    def wrong(setting, Xt, Xv, lr_train, limit=False):
        parts = original(setting, Xt, Xv, lr_train, limit)
        clean = original(setting, Xt, Xv, np.zeros_like(np.atleast_1d(lr_train)), limit)
        parts[1] = 0.9 * parts[1] + 0.1 * clean[1]
        return parts

    monkeypatch.setattr(b, "conditional_meta_error_parts", wrong)
    row = next(i for i in all_identities() if i.check is rows._conditional_meta_error)
    assert not row.run(0)["passed"]
