"""The interactive loss-surface explorer behind ``linmaml explore``.

One matplotlib figure: the exact population MAML objective of the scalar depth-2 chain
f(x) = w2·w1·x over the (w1, w2) plane (log colour scale), with sliders for the inner learning
rate, the number of inner steps, the task mean and the task spread. A left click on the surface
starts a meta-training run there (gradient descent on the exact objective with its exact gradient)
and draws its trajectory; then a task a ~ N(m, s²) is sampled and its inner-loop adaptation path
from the trajectory's end point is drawn, with the task's solutions {w1·w2 = a} as a dotted curve.
After a slider moves, the surface and the current run (same start, same standard-normal draw
z, so a = m + s·z follows the sliders) are recomputed.

The class never picks a matplotlib backend: the CLI does that, and tests drive it under Agg by
calling ``slider.set_val`` and sending ``button_press_event`` events through the canvas.
"""
from __future__ import annotations

import time

import numpy as np

from linmaml import _validate
from linmaml._io import atomic_path
from linmaml.plots import surface as S

#: Slider ranges: at least these, widened to contain the starting values.
LR_MAX_TIMES_X_VAR = 1.0  # α up to 1/V: beyond it one inner step overshoots every task
MAX_STEPS = 10
MEAN_LIMIT = 3.0
STD_MAX = 3.0


class SurfaceExplorer:
    """The explorer's figure, artists and state; drive it with sliders and clicks, or with methods.

    Parameters: ``lr``, ``steps``, ``task_mean``, ``task_std``, ``x_var`` (see
    :class:`linmaml.plots.surface.TaskSetting`); ``grid`` points per axis over [−``half_width``,
    ``half_width``]²; ``meta_lr`` and ``meta_steps`` of each meta-training run; ``seed`` of the
    sampled tasks; ``figure``: draw into this figure (default: a new ``pyplot`` figure).

    Attributes tests and callers read: ``setting`` (the current TaskSetting), ``w1``, ``w2``,
    ``loss`` (the surface, loss[i, j] at (w1[i], w2[j])), ``image`` (its AxesImage, array loss.T),
    ``trajectory`` (the current :class:`~linmaml.plots.surface.Trajectory` or None),
    ``trajectory_line``, ``adaptation_line``, ``task_curve`` (Line2D), ``task_slope`` (the sampled
    a), ``sliders`` (dict of matplotlib Sliders: "lr", "steps", "task_mean", "task_std"),
    ``timings`` (seconds of the last surface computation and of the last redraw).
    """

    def __init__(self, *, lr: float = 0.1, steps: int = 1, task_mean: float = 0.5, task_std: float = 1.0,
                 x_var: float = 1.0, grid: int = 200, half_width: float = 4.0, meta_lr: float = 0.2,
                 meta_steps: int = 300, seed: int = 0, figure=None):
        checked = self.check_arguments(lr=lr, steps=steps, task_mean=task_mean, task_std=task_std, x_var=x_var,
                                       grid=grid, half_width=half_width, meta_lr=meta_lr,
                                       meta_steps=meta_steps, seed=seed)
        self.setting = checked["setting"]
        self.grid, self.half_width = checked["grid"], checked["half_width"]
        self.meta_lr, self.meta_steps, self.seed = checked["meta_lr"], checked["meta_steps"], checked["seed"]
        self._rng = np.random.default_rng(self.seed)
        self.start = None
        self.task_z = None
        self.task_slope = None
        self.trajectory = None
        self.adaptation = None
        self.timings: dict[str, float] = {}
        self._build(figure)
        self.recompute_surface()

    @staticmethod
    def check_arguments(*, lr, steps, task_mean, task_std, x_var, grid, half_width, meta_lr, meta_steps,
                        seed) -> dict:
        """Validate the constructor's arguments without building anything (the CLI calls this first)."""
        return {
            "setting": S.TaskSetting(lr=lr, steps=steps, mean=task_mean, std=task_std, x_var=x_var),
            "grid": _validate.integer(grid, "grid", minimum=2),
            "half_width": _validate.finite_number(half_width, "range", positive=True),
            "meta_lr": _validate.finite_number(meta_lr, "meta_lr", positive=True),
            "meta_steps": _validate.integer(meta_steps, "meta_steps", minimum=0),
            "seed": _validate.integer(seed, "seed", minimum=0),
        }

    # -- layout -------------------------------------------------------------------------------
    def _build(self, figure):
        from matplotlib.widgets import Slider  # lazy: an optional extra (linmaml/_extras.py)

        if figure is None:
            import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

            figure = plt.figure(figsize=(7.5, 8.0))
        self.figure = figure
        self.ax = figure.add_axes([0.11, 0.33, 0.70, 0.60])
        self.colorbar_ax = figure.add_axes([0.84, 0.33, 0.03, 0.60])
        s = self.setting
        self.w1, self.w2, self.loss = S.depth2_surface(s, self.grid, self.half_width)
        self.image = S.draw_surface(self.ax, self.w1, self.w2, self.loss, s)
        self.colorbar = figure.colorbar(self.image, cax=self.colorbar_ax)
        self._label_colorbar()
        self.ax.set_xlim(-self.half_width, self.half_width)
        self.ax.set_ylim(-self.half_width, self.half_width)
        (self.task_curve,) = self.ax.plot([], [], ":", color="white", lw=1.2,
                                          label="$w_1 w_2 = a$: the sampled task solved")
        (self.trajectory_line,) = self.ax.plot([], [], "-", color="tab:red", lw=1.8, zorder=3,
                                               label="meta-training from the clicked point")
        (self.start_marker,) = self.ax.plot([], [], "o", mfc="none", mec="tab:red", ms=8, zorder=4,
                                            label="start (where you clicked)")
        # the inner path starts at the end of meta-training: drawn below the end star, which stays visible
        (self.adaptation_line,) = self.ax.plot([], [], "--o", color="magenta", ms=4, lw=1.2, zorder=4,
                                               label="inner-loop steps on the sampled task")
        (self.end_marker,) = self.ax.plot([], [], "*", color="tab:red", mec="k", mew=0.5, ms=14, zorder=6,
                                          label="end of meta-training")
        self.ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
        self.status = self.ax.set_title("click the surface to meta-train from that point", fontsize=9)

        def slider(row, label, lo, hi, value, **kw):
            axis = figure.add_axes([0.22, 0.20 - 0.05 * row, 0.56, 0.03])
            return Slider(axis, label, lo, hi, valinit=value, **kw)

        lr_max = max(LR_MAX_TIMES_X_VAR / s.x_var, 2 * s.lr)
        self.sliders = {
            "lr": slider(0, "inner lr α", 0.0, lr_max, s.lr),
            "steps": slider(1, "inner steps k", 0, max(MAX_STEPS, s.steps), s.steps, valstep=1),
            "task_mean": slider(2, "task mean m", -max(MEAN_LIMIT, abs(s.mean)), max(MEAN_LIMIT, abs(s.mean)),
                                s.mean),
            "task_std": slider(3, "task spread s", 0.0, max(STD_MAX, s.std), s.std),
        }
        for widget in self.sliders.values():
            # The slider would redraw before our callback has new data; our one idle redraw covers both.
            widget.drawon = False
            widget.on_changed(self._on_slider)
        self._click_id = figure.canvas.mpl_connect("button_press_event", self._on_click)

    # -- events -------------------------------------------------------------------------------
    def _on_slider(self, _value):
        v = {name: widget.val for name, widget in self.sliders.items()}
        self.set_setting(lr=float(v["lr"]), steps=int(round(v["steps"])), mean=float(v["task_mean"]),
                         std=float(v["task_std"]))

    def _on_click(self, event):
        if event.inaxes is not self.ax or event.button != 1 or event.xdata is None:
            return
        toolbar = getattr(self.figure.canvas, "toolbar", None)
        if toolbar is not None and getattr(toolbar, "mode", ""):
            return  # the user is zooming or panning, not choosing a start
        self.start_run(event.xdata, event.ydata)

    # -- state changes ------------------------------------------------------------------------
    def set_setting(self, **changes) -> None:
        """Change the task setting (lr, steps, mean, std, x_var), recompute and redraw."""
        self.setting = self.setting.replace(**changes)
        self.recompute_surface()
        if self.start is not None:
            self._run_from_start()
        self.redraw(now=False)

    def recompute_surface(self) -> None:
        """Recompute the surface on the grid and put it into the image (timed in ``timings``)."""
        began = time.perf_counter()
        self.w1, self.w2, self.loss = S.depth2_surface(self.setting, self.grid, self.half_width)
        self.timings["surface_s"] = time.perf_counter() - began
        S.update_surface(self.image, self.w1, self.w2, self.loss, self.setting)
        self._label_colorbar()

    def _label_colorbar(self) -> None:
        """The colour bar's label, saying when the scale is clipped (saturated colours are not values)."""
        note = S.clipping_note(self.loss, self.setting)
        self.colorbar.set_label("MAML objective (log scale)" + (f"\n{note}" if note else ""), fontsize=8)

    def start_run(self, w1: float, w2: float) -> None:
        """Meta-train from (w1, w2), sample a task, draw the trajectory and the adaptation path."""
        self.start = (_validate.finite_number(w1, "w1"), _validate.finite_number(w2, "w2"))
        self.task_z = float(self._rng.standard_normal())
        self._run_from_start()
        self.redraw(now=False)

    def _run_from_start(self) -> None:
        s = self.setting
        self.trajectory = S.meta_train(np.array([self.start]), s, meta_lr=self.meta_lr,
                                       meta_steps=self.meta_steps)
        rows = self.trajectory.weights[: self.trajectory.stopped[0] + 1, 0]
        self.trajectory_line.set_data(rows[:, 0], rows[:, 1])
        self.start_marker.set_data(rows[:1, 0], rows[:1, 1])
        self.end_marker.set_data(rows[-1:, 0], rows[-1:, 1])
        self.task_slope = s.mean + s.std * self.task_z
        end = self.trajectory.final_weights[0]
        if np.all(np.isfinite(end)):
            self.adaptation = S.inner_path(end, self.task_slope, s)
            self.adaptation_line.set_data(self.adaptation[:, 0], self.adaptation[:, 1])
            before = S.task_loss(end, self.task_slope, s.x_var)
            after = S.task_loss(self.adaptation[-1], self.task_slope, s.x_var)
            diverged = " (stopped: diverged)" if self.trajectory.diverged[0] else ""
            self.status.set_text(
                f"{self.trajectory.stopped[0]} meta-steps{diverged}: MAML loss "
                f"{self.trajectory.final_losses[0]:.3g} (no-adaptation floor {s.no_adaptation_floor:.3g})\n"
                f"task a = {self.task_slope:.3g}: loss {before:.3g} → {after:.3g} after {s.steps} inner step(s)")
        else:
            self.adaptation = None
            self.adaptation_line.set_data([], [])
            self.status.set_text("the meta-training run diverged at its start")
        self.task_curve.set_data(*S.hyperbola(self.task_slope, self.half_width))

    def redraw(self, now: bool = True) -> None:
        """Render the figure: now (timed in ``timings['draw_s']``), or when the GUI is next idle.

        Event handlers ask for an idle redraw so that a dragged slider does not queue up renders.
        """
        if not now:
            self.figure.canvas.draw_idle()
            return
        began = time.perf_counter()
        self.figure.canvas.draw()
        self.timings["draw_s"] = time.perf_counter() - began

    def save(self, path) -> None:
        """Write the current view to ``path`` (atomically; the format follows the extension)."""
        with atomic_path(path) as tmp:
            self.figure.savefig(tmp, dpi=120)

    def show(self) -> None:
        import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

        plt.show()
