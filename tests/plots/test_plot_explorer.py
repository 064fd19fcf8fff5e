"""The explorer driven headless (Agg): sliders via ``set_val``, clicks via canvas callbacks.

What is drawn (image array, trajectory and adaptation line data) is compared with an independent
reference: plain-float inner loops, adaptive quadrature over the task slope (scipy.integrate.quad),
and meta-training by gradient descent with central finite differences of that quadrature (the
``ref_*`` fixtures of tests/plots/conftest.py).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backend_bases import MouseEvent  # noqa: E402
from PIL import Image  # noqa: E402

from linmaml.cli import main  # noqa: E402
from linmaml.plots.explorer import SurfaceExplorer  # noqa: E402


def settings_of(explorer):
    s = explorer.setting
    return (s.lr, s.steps, s.mean, s.std, s.x_var)


def click(explorer, x, y, button=1, ax=None):
    """Send a mouse press at data point (x, y) of ``ax`` (default: the surface) through the canvas."""
    ax = ax or explorer.ax
    canvas = explorer.figure.canvas
    canvas.draw()  # the transforms are final only after a draw
    px, py = ax.transData.transform((x, y))
    event = MouseEvent("button_press_event", canvas, px, py, button=button)
    canvas.callbacks.process("button_press_event", event)
    return event


@pytest.fixture
def make_explorer():
    made = []

    def build(**kwargs):
        defaults = dict(lr=0.1, steps=1, task_mean=0.5, task_std=1.0, x_var=1.0, grid=25, half_width=3.0,
                        meta_lr=0.2, meta_steps=6, seed=3)
        explorer = SurfaceExplorer(**{**defaults, **kwargs})
        made.append(explorer)
        return explorer

    yield build
    for explorer in made:
        plt.close(explorer.figure)


def check_image(explorer, points, ref_objective):
    axis = np.linspace(-explorer.half_width, explorer.half_width, explorer.grid)
    array = explorer.image.get_array()
    assert array.shape == (explorer.grid, explorer.grid)
    for i, j in points:
        ref = ref_objective([axis[i], axis[j]], *settings_of(explorer))
        # image rows are w2, columns w1
        assert array[j, i] == pytest.approx(ref, rel=1e-10, abs=1e-14), (i, j)


def test_initial_surface_equals_quadrature(make_explorer, ref_objective):
    explorer = make_explorer()
    check_image(explorer, [(0, 0), (12, 3), (24, 17), (5, 20)], ref_objective)
    assert explorer.trajectory is None and len(explorer.trajectory_line.get_xdata()) == 0


def test_sliders_recompute_the_surface(make_explorer, ref_objective):
    explorer = make_explorer()
    explorer.sliders["lr"].set_val(0.05)
    explorer.sliders["steps"].set_val(2)
    explorer.sliders["task_mean"].set_val(-0.8)
    explorer.sliders["task_std"].set_val(0.4)
    assert settings_of(explorer) == pytest.approx((0.05, 2, -0.8, 0.4, 1.0))
    assert isinstance(explorer.setting.steps, int)
    check_image(explorer, [(1, 23), (12, 12), (20, 6)], ref_objective)
    explorer.sliders["steps"].set_val(0)  # no adaptation: ½V((w1w2 − m)² + s²)
    axis = np.linspace(-3, 3, 25)
    expected = 0.5 * ((axis[:, None] * axis[None, :] + 0.8) ** 2 + 0.4 ** 2)
    np.testing.assert_allclose(explorer.image.get_array(), expected.T, rtol=1e-12)


def test_click_meta_trains_and_draws_adaptation_path(make_explorer, ref_inner, ref_meta_train):
    explorer = make_explorer()
    click(explorer, 1.0, 2.0)
    assert explorer.start == pytest.approx((1.0, 2.0), abs=1e-9)
    ref = ref_meta_train(explorer.start, settings_of(explorer), 0.2, 6)
    line = np.c_[explorer.trajectory_line.get_xdata(), explorer.trajectory_line.get_ydata()]
    np.testing.assert_allclose(line, ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.array(explorer.end_marker.get_data())[:, 0], ref[-1], rtol=1e-7)

    # the task: a = m + s·z with z the first standard normal of the seeded generator
    z = np.random.default_rng(3).standard_normal()
    assert explorer.task_slope == pytest.approx(0.5 + 1.0 * z, rel=1e-15)
    path = np.c_[explorer.adaptation_line.get_xdata(), explorer.adaptation_line.get_ydata()]
    np.testing.assert_allclose(path, ref_inner(ref[-1], explorer.task_slope, 0.1, 1, 1.0), rtol=1e-6)
    x, y = explorer.task_curve.get_data()
    ok = np.isfinite(x)
    np.testing.assert_allclose(x[ok] * y[ok], explorer.task_slope, rtol=1e-12)
    assert "meta-steps" in explorer.status.get_text()


def test_slider_after_click_reruns_from_the_same_start(make_explorer, ref_inner, ref_meta_train):
    explorer = make_explorer(meta_steps=4)
    click(explorer, -1.5, 0.7)
    start, z = explorer.start, explorer.task_z
    explorer.sliders["task_mean"].set_val(1.1)
    explorer.sliders["lr"].set_val(0.15)
    assert explorer.start == start and explorer.task_z == z
    assert explorer.task_slope == pytest.approx(1.1 + 1.0 * z)
    ref = ref_meta_train(start, settings_of(explorer), 0.2, 4)
    line = np.c_[explorer.trajectory_line.get_xdata(), explorer.trajectory_line.get_ydata()]
    np.testing.assert_allclose(line, ref, rtol=1e-7, atol=1e-9)
    path = np.c_[explorer.adaptation_line.get_xdata(), explorer.adaptation_line.get_ydata()]
    np.testing.assert_allclose(path, ref_inner(ref[-1], explorer.task_slope, 0.15, 1, 1.0), rtol=1e-6)
    # a new click draws a new task
    click(explorer, 0.5, 0.5)
    rng = np.random.default_rng(3)
    rng.standard_normal()
    assert explorer.task_z == rng.standard_normal()


def test_multi_step_adaptation_path(make_explorer, ref_inner):
    explorer = make_explorer(steps=3, lr=0.08, meta_steps=2)
    click(explorer, 0.4, -1.2)
    end = explorer.trajectory.final_weights[0]
    path = np.c_[explorer.adaptation_line.get_xdata(), explorer.adaptation_line.get_ydata()]
    assert path.shape == (4, 2)
    np.testing.assert_allclose(path, ref_inner(end, explorer.task_slope, 0.08, 3, 1.0), rtol=1e-12)


def test_other_clicks_are_ignored(make_explorer):
    explorer = make_explorer()
    click(explorer, 1.0, 1.0, button=3)  # right button
    slider_ax = explorer.sliders["lr"].ax
    click(explorer, 0.05, 0.5, ax=slider_ax)  # on a slider: it moves the slider, starts no run
    assert explorer.trajectory is None and explorer.start is None
    assert len(explorer.trajectory_line.get_xdata()) == 0


def test_redraw_200_grid_draws_the_closed_form(make_explorer, ref_objective):
    # Speed is measured by linmaml bench (linmaml/bench/), not asserted here (shared machines are noisy).
    explorer = make_explorer(grid=200, half_width=4.0)
    explorer.sliders["steps"].set_val(3)
    explorer.sliders["lr"].set_val(0.07)
    explorer.redraw()
    assert set(explorer.timings) >= {"surface_s", "draw_s"}
    check_image(explorer, [(17, 150), (199, 0)], ref_objective)


def test_save_writes_a_png(make_explorer, tmp_path):
    explorer = make_explorer()
    click(explorer, 1.0, -1.0)
    target = tmp_path / "snap.png"
    explorer.save(target)
    with Image.open(target) as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["snap.png"]


@pytest.mark.parametrize("kwargs, name", [
    ({"grid": 1}, "grid"), ({"half_width": 0.0}, "range"), ({"meta_lr": -1.0}, "meta_lr"),
    ({"meta_steps": -2}, "meta_steps"), ({"steps": -1}, "steps"), ({"task_std": -0.1}, "task_std"),
    ({"x_var": float("nan")}, "x_var"), ({"lr": float("inf")}, "lr"),
])
def test_bad_arguments(make_explorer, kwargs, name):
    with pytest.raises((ValueError, TypeError)) as info:
        make_explorer(**kwargs)
    assert str(info.value).startswith(name)


# -- the command line -----------------------------------------------------------------------
def test_cli_save_snapshot(tmp_path, capsys):
    target = tmp_path / "explore.png"
    status = main(["explore", "--save", str(target), "--start", "1.0", "2.0", "--grid", "30",
                   "--meta-steps", "5", "--lr", "0.05", "--steps", "2", "--task-mean", "0.2",
                   "--task-std", "0.9", "--x-var", "1.5", "--range", "3"])
    assert status == 0
    with Image.open(target) as image:
        assert image.format == "PNG"
    plt.close("all")


@pytest.mark.parametrize("args, name", [
    (["--grid", "1"], "--grid"), (["--steps", "-1"], "--steps"), (["--task-std", "-1"], "--task-std"),
    (["--x-var", "0"], "--x-var"), (["--lr", "nan"], "--lr"), (["--range", "-2"], "--range"),
    (["--start", "1", "inf"], "--start W2"), (["--meta-lr", "0"], "--meta-lr"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, name):
    target = tmp_path / "x.png"
    status = main(["explore", "--save", str(target), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith(f"linmaml explore: error: {name}")
    assert list(tmp_path.iterdir()) == []


def test_cli_without_display_points_to_save(capsys):
    assert matplotlib.get_backend().lower() == "agg"
    status = main(["explore"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "no interactive display" in err and "--save PATH" in err


def test_click_where_the_inner_loop_overflows(make_explorer):
    # α = 1/V with 10 inner steps: at the corner the adapted weights overflow (objective inf or nan).
    explorer = make_explorer(lr=1.0, steps=10, half_width=3.0)
    assert not np.isfinite(explorer.loss[-1, -1])
    click(explorer, 2.9, 2.9)
    assert explorer.trajectory.diverged[0] and explorer.trajectory.stopped[0] == 0
    assert "diverged" in explorer.status.get_text()
    np.testing.assert_allclose(np.array(explorer.end_marker.get_data())[:, 0], explorer.start)


def test_cli_rejects_unknown_snapshot_format(tmp_path, capsys):
    status = main(["explore", "--save", str(tmp_path / "snap.xyz")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("linmaml explore: error: --save: expected a file name ending in")
    assert list(tmp_path.iterdir()) == []


def test_cli_interactive_path_builds_and_shows(monkeypatch, ref_meta_train):
    # No display here: pretend one exists and record what would be shown instead of opening a window.
    import linmaml.cli.explore as explore_cli

    shown = []
    monkeypatch.setattr(explore_cli, "_interactive_backend", lambda: "qtagg")
    monkeypatch.setattr(SurfaceExplorer, "show", lambda self: shown.append(self))
    status = main(["explore", "--grid", "20", "--range", "2.5", "--steps", "2", "--lr", "0.07",
                   "--start", "0.5", "-1.0", "--meta-steps", "3"])
    assert status == 0 and len(shown) == 1
    explorer = shown[0]
    try:
        assert explorer.grid == 20 and explorer.half_width == 2.5
        assert (explorer.setting.steps, explorer.setting.lr) == (2, 0.07)
        ref = ref_meta_train((0.5, -1.0), settings_of(explorer), 0.2, 3)
        line = np.c_[explorer.trajectory_line.get_xdata(), explorer.trajectory_line.get_ydata()]
        np.testing.assert_allclose(line, ref, rtol=1e-7, atol=1e-9)
    finally:
        plt.close(explorer.figure)


def test_legend_end_star_on_top_and_a_clipped_scale_is_said(make_explorer):
    """The explorer explains what it draws (a legend), keeps the end star above the inner-loop path
    that starts there, and labels a saturated colour scale as clipped."""
    explorer = make_explorer()
    labels = [t.get_text() for t in explorer.ax.get_legend().get_texts()]
    assert labels == ["$w_1 w_2 = a$: the sampled task solved", "meta-training from the clicked point",
                      "start (where you clicked)", "inner-loop steps on the sampled task", "end of meta-training"]
    assert explorer.end_marker.get_zorder() > explorer.adaptation_line.get_zorder()
    click(explorer, 0.5, 1.0)
    end = explorer.trajectory.final_weights[0]
    assert list(explorer.end_marker.get_xdata()) == [end[0]] and list(explorer.adaptation_line.get_xdata())[0] == end[0]
    # A large inner rate makes the corners explode far above the scale's ceiling (100 × the zero
    # model's loss ½V(m² + s²) = 0.625 here): the label says the top colour is clipped.
    explorer.set_setting(lr=0.9)
    label = explorer.colorbar.ax.get_ylabel()
    finite = explorer.loss[np.isfinite(explorer.loss)]
    assert finite.max() > 100 * 0.625 and "clipped: values above 62" in label


def test_clipping_note_against_a_hand_computed_scale():
    from linmaml.plots import surface as S

    setting = S.TaskSetting(lr=0.1, steps=1, mean=0.5, std=1.0, x_var=1.0)  # zero model loss 0.625
    top, bottom = 100 * 0.625, 100 * 0.625 * 1e-8  # the ceiling, and 8 decades below it
    assert S.clipping_note(np.array([[1e-3, 1.0], [2.0, 3.0]]), setting) == ""
    assert S.clipping_note(np.array([[1e-3, 1e6], [np.inf, 3.0]]), setting) == \
        f"clipped: values above {top:.2g} share the top colour"
    assert S.clipping_note(np.array([[1e-12, 1e6], [2.0, 3.0]]), setting) == \
        f"clipped: values above {top:.2g} share the top colour, below {bottom:.2g} the bottom one"
