"""linmaml.plots.surface against an independent reference.

The reference runs the k inner steps of one task with plain Python floats and integrates over the
task slope a ~ N(m, s²) with adaptive quadrature (scipy.integrate.quad on a = m + s·z, z ∈ [−14, 14];
the Gaussian tail beyond is below 1e-40), and meta-trains with central finite differences of that.
Nothing here uses Gauss–Hermite nodes or the library's gradient (the ``ref_*`` fixtures of
tests/plots/conftest.py).
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from linmaml.plots import surface as S  # noqa: E402


def args_of(setting):
    return (setting.lr, setting.steps, setting.mean, setting.std, setting.x_var)


SETTINGS = [
    S.TaskSetting(lr=0.1, steps=1, mean=0.5, std=1.0, x_var=1.0),
    S.TaskSetting(lr=0.05, steps=2, mean=-0.7, std=0.6, x_var=2.0),
    S.TaskSetting(lr=0.2, steps=3, mean=1.2, std=0.3, x_var=0.5),
    S.TaskSetting(lr=0.1, steps=0, mean=0.4, std=1.1, x_var=1.3),
    S.TaskSetting(lr=0.15, steps=2, mean=0.9, std=0.0, x_var=1.0),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"lr{s.lr}-k{s.steps}-s{s.std}")
def test_depth2_surface_equals_quadrature(setting, ref_objective):
    w1, w2, loss = S.depth2_surface(setting, 17, 2.5)
    assert loss.shape == (17, 17)
    np.testing.assert_allclose(w1, np.linspace(-2.5, 2.5, 17), rtol=0, atol=1e-15)
    rng = np.random.default_rng(1)
    for i, j in [(0, 16), (8, 8), (3, 11)] + [tuple(rng.integers(0, 17, 2)) for _ in range(3)]:
        ref = ref_objective([w1[i], w2[j]], *args_of(setting))
        assert loss[i, j] == pytest.approx(ref, rel=1e-10, abs=1e-14), (i, j)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"lr{s.lr}-k{s.steps}-s{s.std}")
def test_depth1_curve_equals_closed_form(setting, ref_objective):
    # Shallow: each inner step multiplies the error by (1 − αV), so L(w) = ½V(1−αV)^{2k}((w−m)² + s²).
    w, loss = S.depth1_curve(setting, 9, 3.0)
    a, V, k, m, s = setting.lr, setting.x_var, setting.steps, setting.mean, setting.std
    expected = 0.5 * V * (1 - a * V) ** (2 * k) * ((w - m) ** 2 + s ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-12, atol=1e-15)
    assert loss[4] == pytest.approx(ref_objective([w[4]], a, k, m, s, V), rel=1e-10)


@pytest.mark.parametrize("setting", SETTINGS[:3], ids=lambda s: f"lr{s.lr}-k{s.steps}")
def test_meta_train_matches_finite_difference_descent(setting, ref_objective, ref_meta_train):
    starts = np.array([[0.6, 1.1], [-1.2, 0.4]])
    traj = S.meta_train(starts, setting, meta_lr=0.15, meta_steps=8)
    assert traj.weights.shape == (9, 2, 2) and traj.losses.shape == (9, 2)
    assert not traj.diverged.any()
    for r in range(2):
        ref = ref_meta_train(starts[r], args_of(setting), 0.15, 8)
        np.testing.assert_allclose(traj.weights[:, r], ref, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(traj.final_weights[r], ref[-1], rtol=1e-7)
        ref_loss = ref_objective(ref[-1], *args_of(setting))
        assert traj.final_losses[r] == pytest.approx(ref_loss, rel=1e-6)


def test_meta_train_depth1_converges_to_closed_form_optimum():
    setting = SETTINGS[0]
    traj = S.meta_train(np.array([[-2.0], [3.0]]), setting, meta_lr=0.5, meta_steps=300)
    # The optimum of ½V(1−αV)^{2k}((w−m)² + s²) is w = m with value ½V(1−αV)^{2k}s².
    np.testing.assert_allclose(traj.final_weights[:, 0], setting.mean, atol=1e-9)
    floor = 0.5 * setting.x_var * (1 - setting.lr * setting.x_var) ** (2 * setting.steps) * setting.std ** 2
    np.testing.assert_allclose(traj.final_losses, floor, rtol=1e-12)
    # the shallow model stays far above zero: its floor is close to the no-adaptation loss ½Vs².
    assert floor > 0.8 * setting.no_adaptation_floor


def test_deep_one_step_solution_is_exact():
    # At w1 = 0, w2² = 1/(αV) one inner step lands on w1·w2 = a for every task a.
    lr, V = 0.1, 2.0
    start = [0.0, 1 / math.sqrt(lr * V)]
    setting = S.TaskSetting(lr=lr, steps=1, mean=0.0, std=1.3, x_var=V)
    for a in (-1.7, 0.3, 2.2):
        path = S.inner_path(start, a, setting)
        assert path[-1][0] * path[-1][1] == pytest.approx(a, rel=1e-14)
    assert float(S.objective(start, setting)) == pytest.approx(0.0, abs=1e-24)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_inner_path_equals_reference(depth, ref_inner):
    rng = np.random.default_rng(depth)
    ws = rng.normal(size=depth)
    setting = S.TaskSetting(lr=0.13, steps=4, mean=0.0, std=1.0, x_var=1.4)
    path = S.inner_path(ws, 0.8, setting)
    assert path.shape == (5, depth)
    np.testing.assert_allclose(path, ref_inner(ws, 0.8, 0.13, 4, 1.4), rtol=1e-13, atol=1e-15)
    assert S.task_loss(path[-1], 0.8, 1.4) == pytest.approx(0.5 * 1.4 * (np.prod(path[-1]) - 0.8) ** 2)


def test_meta_train_stops_diverging_runs():
    setting = S.TaskSetting(lr=0.1, steps=1, mean=0.5, std=1.0, x_var=1.0)
    traj = S.meta_train(np.array([[0.5, 1.0], [3.5, 3.5]]), setting, meta_lr=5.0, meta_steps=50, bound=100.0)
    assert traj.diverged[1]
    last = traj.stopped[1]
    assert np.all(np.isnan(traj.weights[last + 1:, 1])) and np.all(np.isnan(traj.losses[last + 1:, 1]))
    assert np.all(np.isfinite(traj.final_weights[1])) and np.all(np.abs(traj.final_weights[1]) <= 100)
    assert np.isfinite(traj.final_losses[1])


def test_draw_surface_and_update(ref_objective):
    setting = SETTINGS[1]
    w1, w2, loss = S.depth2_surface(setting, 21, 2.0)
    fig, ax = plt.subplots()
    try:
        image = S.draw_surface(ax, w1, w2, loss, setting)
        array = image.get_array()
        assert array.shape == (21, 21)
        # rows of the image are w2, columns w1: pixel (row j, column i) holds the objective at (w1[i], w2[j]).
        ref = ref_objective([w1[4], w2[15]], *args_of(setting))
        assert array[15, 4] == pytest.approx(ref, rel=1e-10)
        left, right, bottom, top = image.get_extent()
        step = 4.0 / 20
        assert (left, right, bottom, top) == pytest.approx((-2 - step / 2, 2 + step / 2, -2 - step / 2, 2 + step / 2))
        vmin, vmax = image.norm.vmin, image.norm.vmax
        assert vmax == pytest.approx(min(loss.max(), S.COLOR_CEILING * setting.zero_model_loss))
        assert vmin == pytest.approx(max(loss.min(), vmax * 10 ** -S.COLOR_DECADES))

        other = SETTINGS[0]
        w1b, w2b, lossb = S.depth2_surface(other, 21, 3.0)
        S.update_surface(image, w1b, w2b, lossb, other)
        ref = ref_objective([w1b[2], w2b[7]], other.lr, other.steps, other.mean, other.std, other.x_var)
        assert image.get_array()[7, 2] == pytest.approx(ref, rel=1e-10)
        assert image.get_extent()[1] == pytest.approx(3.0 + 3.0 / 20)
    finally:
        plt.close(fig)


def test_color_limits_ignore_non_finite_and_cap_top():
    setting = S.TaskSetting(lr=0.1, steps=1, mean=1.0, std=0.0, x_var=1.0)  # zero-model loss 0.5
    loss = np.array([[0.0, 1e-30, np.inf], [np.nan, 3.0, 1e6]])
    vmin, vmax = S.color_limits(loss, setting)
    assert vmax == pytest.approx(50.0)
    assert vmin == pytest.approx(50.0 * 10 ** -S.COLOR_DECADES)


def test_hyperbola_points_solve_the_task():
    for a in (-1.3, 0.4):
        x, y = S.hyperbola(a, 3.0)
        ok = np.isfinite(x)
        np.testing.assert_allclose(x[ok] * y[ok], a, rtol=1e-13)
        assert np.all(np.abs(x[ok]) <= 3.0 + 1e-12) and np.all(np.abs(y[ok]) <= 3.0 + 1e-12)
        assert np.isnan(x).sum() == 1  # the two branches are separated
    x, y = S.hyperbola(0.0, 2.0)
    ok = np.isfinite(x)
    np.testing.assert_array_equal(x[ok] * y[ok], 0.0)


def test_draw_trajectories_and_shallow_use_the_runs():
    setting = SETTINGS[0]
    traj = S.meta_train(np.array([[0.5, 1.0], [3.5, 3.5]]), setting, meta_lr=5.0, meta_steps=20, bound=100.0)
    fig, (ax1, ax2) = plt.subplots(1, 2)
    try:
        artists = S.draw_trajectories(ax1, traj)
        for r, (line, start, end) in enumerate(artists):
            rows = traj.weights[: traj.stopped[r] + 1, r]
            np.testing.assert_array_equal(np.c_[line.get_xdata(), line.get_ydata()], rows)
            np.testing.assert_array_equal(np.c_[end.get_xdata(), end.get_ydata()][0], traj.final_weights[r])
            np.testing.assert_array_equal(np.c_[start.get_xdata(), start.get_ydata()][0], traj.weights[0, r])
        shallow = S.meta_train(np.array([[-1.0]]), setting, meta_lr=0.3, meta_steps=10)
        w, loss = S.depth1_curve(setting, 11, 2.0)
        curve, runs = S.draw_shallow(ax2, w, loss, shallow)
        np.testing.assert_array_equal(curve.get_ydata(), loss)
        np.testing.assert_array_equal(runs[0][0].get_xdata(), shallow.weights[:, 0, 0])
        expected = 0.5 * (1 - 0.1) ** 2 * ((shallow.weights[:, 0, 0] - 0.5) ** 2 + 1.0)
        np.testing.assert_allclose(runs[0][0].get_ydata(), expected, rtol=1e-12)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("kwargs, name", [
    ({"steps": -1}, "steps"), ({"lr": -0.1}, "lr"), ({"std": -1.0}, "task_std"), ({"x_var": 0.0}, "x_var"),
    ({"mean": float("nan")}, "task_mean"), ({"lr": float("inf")}, "lr"), ({"steps": 1.5}, "steps"),
])
def test_setting_rejects_bad_values(kwargs, name):
    with pytest.raises((ValueError, TypeError)) as info:
        S.TaskSetting(**kwargs)
    assert str(info.value).startswith(name)


def test_helpers_reject_bad_values():
    setting = S.TaskSetting()
    with pytest.raises(ValueError, match="^grid"):
        S.depth2_surface(setting, 1, 2.0)
    with pytest.raises(ValueError, match="^range"):
        S.depth1_curve(setting, 10, 0.0)
    with pytest.raises(ValueError, match="^meta_lr"):
        S.meta_train([[0.1, 0.2]], setting, meta_lr=0.0, meta_steps=3)
    with pytest.raises(ValueError, match="^meta_steps"):
        S.meta_train([[0.1, 0.2]], setting, meta_lr=0.1, meta_steps=-1)
    with pytest.raises(ValueError, match="^starts"):
        S.meta_train([[0.1, float("nan")]], setting, meta_lr=0.1, meta_steps=3)
    with pytest.raises(ValueError, match="^task_slope"):
        S.inner_path([0.1, 0.2], float("nan"), setting)


def test_meta_train_stops_on_an_overflowing_step(ref_objective):
    # A step so large that the new weights overflow: the run stops at its last finite point.
    traj = S.meta_train([[3.0, 3.0]], S.TaskSetting(), meta_lr=1e305, meta_steps=5, bound=1e308)
    assert traj.diverged[0] and traj.stopped[0] == 0
    np.testing.assert_array_equal(traj.final_weights[0], [3.0, 3.0])
    assert traj.final_losses[0] == pytest.approx(ref_objective([3.0, 3.0], 0.1, 1, 0.5, 1.0, 1.0), rel=1e-10)
