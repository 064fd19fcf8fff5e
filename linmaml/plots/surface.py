"""Loss surfaces, meta-training trajectories and adaptation paths of the scalar linear chain.

The model is f(x) = w_L⋯w_1·x with x ~ N(0, V) and tasks y = a·x, a ~ N(m, s²); the population task
loss is ½·V·(w_eff − a)² and the MAML objective is its expectation over a after k inner
gradient-descent steps with learning rate α (``linmaml.closedform.scalar`` computes it exactly).

Two kinds of helpers live here:

* computations of what gets drawn: :func:`meta_train` (gradient descent on the exact population
  MAML objective with its exact gradient, from many starting points at once) and
  :func:`inner_path` (the k inner steps of one task, the "adaptation path");
* drawing helpers that put these on matplotlib axes and can update them in place (the explorer
  redraws by changing the data of existing artists rather than drawing new ones).

Grid convention (shared with ``linmaml surface``): ``loss[i, j]`` is the objective at
(w1[i], w2[j]). ``imshow`` wants rows along the vertical axis, so the image's array is ``loss.T``
with w1 on the horizontal axis and w2 on the vertical one.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from linmaml import _validate
from linmaml.closedform import scalar
from linmaml.errors import ArgumentError

#: The colour scale spans at most this many decades below its top (a log scale over the surface).
COLOR_DECADES = 8.0
#: Values above this multiple of the zero model's loss share the top colour, so that the few
#: exploding corners (large weights, large inner learning rate) do not wash out the scale.
COLOR_CEILING = 100.0


@dataclasses.dataclass(frozen=True)
class TaskSetting:
    """Inner-loop and task-family settings of the scalar chain (validated on construction).

    lr: inner learning rate α ≥ 0; steps: inner steps k ≥ 0; mean, std: the task slope a ~ N(mean,
    std²) (std ≥ 0); x_var: the input variance V > 0.
    """

    lr: float = 0.1
    steps: int = 1
    mean: float = 0.5
    std: float = 1.0
    x_var: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "lr", _validate.finite_number(self.lr, "lr", nonnegative=True))
        object.__setattr__(self, "steps", _validate.integer(self.steps, "steps", minimum=0))
        object.__setattr__(self, "mean", _validate.finite_number(self.mean, "task_mean"))
        object.__setattr__(self, "std", _validate.finite_number(self.std, "task_std", nonnegative=True))
        object.__setattr__(self, "x_var", _validate.finite_number(self.x_var, "x_var", positive=True))

    def replace(self, **changes) -> "TaskSetting":
        return dataclasses.replace(self, **changes)

    @property
    def no_adaptation_floor(self) -> float:
        """½·V·s²: the best loss of a model that does not adapt (it predicts the mean slope)."""
        return 0.5 * self.x_var * self.std ** 2

    @property
    def zero_model_loss(self) -> float:
        """½·V·(m² + s²): the objective at w = 0 (where every gradient, inner and outer, vanishes)."""
        return 0.5 * self.x_var * (self.mean ** 2 + self.std ** 2)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def objective(ws, setting: TaskSetting) -> np.ndarray:
    """The exact population MAML objective at weights ``ws`` (L arrays broadcastable together)."""
    return np.asarray(scalar.scalar_maml_loss(list(ws), setting.lr, setting.steps, setting.mean,
                                              setting.std, setting.x_var), dtype=np.float64)


def objective_grad(ws, setting: TaskSetting) -> list[np.ndarray]:
    """Its exact gradient: one array per weight, each of the broadcast shape of ``ws``.

    NaN marks the points where the gradient overflows float64 (``scalar_maml_grad`` refuses those;
    here they are marked instead, so that :func:`meta_train` can stop just those runs).
    """
    shape = np.broadcast_shapes(*(np.shape(w) for w in ws))
    try:
        grads = scalar.scalar_maml_grad(list(ws), setting.lr, setting.steps, setting.mean, setting.std,
                                        setting.x_var)
    except ArgumentError as error:
        if error.argument not in ("lr", "ws"):
            raise
        # Overflow at some points: evaluate point by point and mark the ones that overflow.
        flat = [np.broadcast_to(np.asarray(w, dtype=np.float64), shape).reshape(-1) for w in ws]
        grads = [np.full(flat[0].shape, np.nan) for _ in ws]
        for i in range(flat[0].size):
            try:
                point = scalar.scalar_maml_grad([w[i] for w in flat], setting.lr, setting.steps, setting.mean,
                                                setting.std, setting.x_var)
            except ValueError:
                continue
            for g, value in zip(grads, point):
                g[i] = value
        grads = [g.reshape(shape) for g in grads]
    return [np.broadcast_to(np.asarray(g, dtype=np.float64), shape) for g in grads]


def _grid(depth: int, setting: TaskSetting, grid: int, half_width: float) -> dict:
    grid = _validate.integer(grid, "grid", minimum=2)
    half_width = _validate.finite_number(half_width, "range", positive=True)
    return scalar.surface_grid(depth, setting.lr, setting.steps, setting.mean, setting.std, setting.x_var,
                               grid, half_width)


def depth2_surface(setting: TaskSetting, grid: int, half_width: float):
    """(w1, w2, loss) on a ``grid``×``grid`` lattice over [−R, R]²; ``loss[i, j]`` at (w1[i], w2[j]).

    The axis is ``grid`` evenly spaced points (exactly antisymmetric, see
    ``linmaml.closedform.scalar.symmetric_grid``); points where the inner loop overflows are ``inf``.
    """
    out = _grid(2, setting, grid, half_width)
    return out["w1"], out["w2"], out["loss"]


def depth1_curve(setting: TaskSetting, grid: int, half_width: float):
    """(w, loss) of the shallow model f(x) = w·x on ``grid`` points of [−R, R]."""
    out = _grid(1, setting, grid, half_width)
    return out["w"], out["loss"]


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Meta-training runs from several starts, stepped together.

    weights: (T+1, n_runs, L), the weights after each meta-step (row 0 is the start); losses:
    (T+1, n_runs), the MAML objective there. A run that diverges (a non-finite step or objective,
    or a weight beyond ``bound``) stops: its later rows are NaN and ``stopped[r]`` is the index of
    its last valid row (T for runs that never stopped). Row 0 always holds the starts.
    """

    weights: np.ndarray
    losses: np.ndarray
    stopped: np.ndarray
    meta_lr: float

    @property
    def final_weights(self) -> np.ndarray:
        """(n_runs, L): each run's last valid weights."""
        return self.weights[self.stopped, np.arange(self.weights.shape[1])]

    @property
    def final_losses(self) -> np.ndarray:
        """(n_runs,): the MAML objective at each run's last valid weights."""
        return self.losses[self.stopped, np.arange(self.losses.shape[1])]

    @property
    def diverged(self) -> np.ndarray:
        """(n_runs,) bool: the runs that stopped before the last meta-step."""
        return self.stopped < self.weights.shape[0] - 1


def meta_train(starts, setting: TaskSetting, *, meta_lr: float, meta_steps: int,
               bound: float = 1e3) -> Trajectory:
    """Plain gradient descent w ← w − β·∇L(w) on the exact population MAML objective.

    ``starts``: (n_runs, L) or (L,) starting weights. All runs advance together through one
    vectorised call of the closed-form gradient per meta-step. Runs that leave ``|w| ≤ bound`` or
    meet a non-finite value are frozen (see :class:`Trajectory`).
    """
    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim == 1:
        starts = starts[None, :]
    starts = _validate.real_matrix(starts, "starts")
    meta_lr = _validate.finite_number(meta_lr, "meta_lr", positive=True)
    meta_steps = _validate.integer(meta_steps, "meta_steps", minimum=0)
    bound = _validate.finite_number(bound, "bound", positive=True)
    n_runs, depth = starts.shape
    if depth < 1:
        raise ArgumentError("starts", "expected at least one weight per run")
    weights = np.full((meta_steps + 1, n_runs, depth), np.nan)
    losses = np.full((meta_steps + 1, n_runs), np.nan)
    stopped = np.zeros(n_runs, dtype=int)
    current = starts.copy()  # always finite: a run that diverges keeps its last finite weights
    alive = np.ones(n_runs, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(meta_steps + 1):
            loss = objective(list(current.T), setting)
            if t == 0:  # the starts are drawn whatever they are
                weights[0], losses[0] = current, loss
            alive &= np.isfinite(loss) & np.all(np.abs(current) <= bound, axis=1)
            if t > 0:
                weights[t, alive], losses[t, alive] = current[alive], loss[alive]
                stopped[alive] = t
            if t == meta_steps or not alive.any():
                break
            candidate = current.copy()  # only the live runs move (a frozen one may overflow)
            grads = np.stack(objective_grad(list(current[alive].T), setting), axis=1)
            candidate[alive] = current[alive] - meta_lr * grads
            alive &= np.all(np.isfinite(candidate), axis=1)
            current = np.where(alive[:, None], candidate, current)
    return Trajectory(weights=weights, losses=losses, stopped=stopped, meta_lr=meta_lr)


def inner_path(ws, task_slope: float, setting: TaskSetting) -> np.ndarray:
    """The k inner steps on one task y = a·x: (k+1, L) weights, row 0 the starting ``ws``.

    Each step is w_j ← w_j − α·V·(w_eff − a)·∏_{i≠j} w_i (all layers at once, from the same point).
    """
    current = np.array([_validate.finite_number(w, f"ws[{j}]") for j, w in enumerate(ws)], dtype=np.float64)
    a = _validate.finite_number(task_slope, "task_slope")
    path = [current.copy()]
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(setting.steps):
            residual = np.prod(current) - a
            others = np.array([np.prod(np.delete(current, j)) for j in range(current.size)])
            current = current - setting.lr * setting.x_var * residual * others
            path.append(current.copy())
    return np.array(path)


def task_loss(ws, task_slope: float, x_var: float) -> float:
    """½·V·(w_eff − a)²: the population loss of one task y = a·x at weights ``ws``."""
    with np.errstate(over="ignore"):  # a float64 square overflows to inf (a Python float would raise)
        return float(0.5 * x_var * (np.prod(np.asarray(ws, dtype=np.float64)) - np.float64(task_slope)) ** 2)


# ---------------------------------------------------------------------------------------------
# Drawing


def color_limits(loss: np.ndarray, setting: TaskSetting) -> tuple[float, float]:
    """(vmin, vmax) of the logarithmic colour scale of a surface.

    The top is the largest finite value, capped at ``COLOR_CEILING`` × the zero model's loss; the
    bottom is the smallest positive value, raised to at most ``COLOR_DECADES`` decades below the top.
    """
    finite = loss[np.isfinite(loss)]
    ceiling = COLOR_CEILING * max(setting.zero_model_loss, np.finfo(float).tiny)
    vmax = float(min(finite.max(), ceiling)) if finite.size else ceiling
    positive = finite[finite > 0]
    vmin = float(positive.min()) if positive.size else vmax * 10 ** -COLOR_DECADES
    vmin = max(vmin, vmax * 10 ** -COLOR_DECADES)
    if not vmin < vmax:
        vmin = vmax / 10.0
    return vmin, vmax


def clipping_note(loss: np.ndarray, setting: TaskSetting) -> str:
    """What the colour scale of :func:`color_limits` cuts off, in words for a colour-bar label: ""
    when every finite value is inside it, else e.g. "clipped: values above 1.2e+02 share the top
    colour" (and/or "below 3.4e-07 the bottom one")."""
    vmin, vmax = color_limits(loss, setting)
    finite = loss[np.isfinite(loss)]
    parts = []
    if finite.size and finite.max() > vmax:
        parts.append(f"values above {vmax:.2g} share the top colour")
    if finite.size and finite.min() < vmin:
        parts.append(f"below {vmin:.2g} the bottom one")
    return ("clipped: " + ", ".join(parts)) if parts else ""


def _extent(w1: np.ndarray, w2: np.ndarray) -> tuple[float, float, float, float]:
    """Pixel edges half a grid step outside the grid points, so pixel centres sit on the points."""
    d1, d2 = (w1[-1] - w1[0]) / (w1.size - 1), (w2[-1] - w2[0]) / (w2.size - 1)
    return (w1[0] - d1 / 2, w1[-1] + d1 / 2, w2[0] - d2 / 2, w2[-1] + d2 / 2)


def draw_surface(ax, w1: np.ndarray, w2: np.ndarray, loss: np.ndarray, setting: TaskSetting, *,
                 cmap: str = "viridis"):
    """Draw ``loss`` (loss[i, j] at (w1[i], w2[j])) as an image with a logarithmic colour scale.

    Returns the ``AxesImage``; its array is ``loss.T`` (non-finite entries masked).
    """
    import matplotlib
    import matplotlib.colors as mcolors

    colormap = matplotlib.colormaps[cmap].with_extremes(bad="white")
    vmin, vmax = color_limits(loss, setting)
    image = ax.imshow(np.ma.masked_invalid(loss.T), origin="lower", extent=_extent(w1, w2),
                      aspect="auto", interpolation="nearest", cmap=colormap,
                      norm=mcolors.LogNorm(vmin=vmin, vmax=vmax, clip=True))
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    return image


def update_surface(image, w1: np.ndarray, w2: np.ndarray, loss: np.ndarray, setting: TaskSetting) -> None:
    """Replace an image's surface (same conventions as :func:`draw_surface`) and its colour scale."""
    image.set_data(np.ma.masked_invalid(loss.T))
    image.set_extent(_extent(w1, w2))
    import matplotlib.colors as mcolors

    # One new norm rather than two assignments: each assignment makes the colorbar redo its ticks.
    image.set_norm(mcolors.LogNorm(*color_limits(loss, setting), clip=True))


def hyperbola(task_slope: float, half_width: float, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Points of {w1·w2 = a} inside [−R, R]² (both branches, separated by a NaN; a = 0: the axes)."""
    r = half_width
    if task_slope == 0.0:
        x = np.array([-r, r, np.nan, 0.0, 0.0])
        y = np.array([0.0, 0.0, np.nan, -r, r])
        return x, y
    lo = abs(task_slope) / r  # below |w1| = |a|/R the branch leaves the square
    if lo >= r:
        return np.array([]), np.array([])
    branch = np.geomspace(lo, r, points)
    x = np.concatenate([branch, [np.nan], -branch])
    return x, task_slope / x


def draw_trajectories(ax, trajectory: Trajectory, *, colors=None, label: str | None = None, labels=None):
    """Draw each run of a depth-2 trajectory as a line from a hollow start (circle) to a filled end
    marker (star); :func:`marker_legend_handles` explains the two markers in a legend.

    ``label``: one legend entry for all runs; ``labels``: one per run (takes precedence).
    Returns a list of (line, start_marker, end_marker) per run; line data are the run's finite
    (w1, w2) rows.
    """
    artists = []
    n_runs = trajectory.weights.shape[1]
    colors = colors or [f"C{r % 10}" for r in range(1, n_runs + 1)]
    for r in range(n_runs):
        rows = trajectory.weights[: trajectory.stopped[r] + 1, r]
        run_label = labels[r] if labels is not None else (label if r == 0 else None)
        (line,) = ax.plot(rows[:, 0], rows[:, 1], "-", color=colors[r], lw=1.6, label=run_label)
        (start,) = ax.plot(rows[:1, 0], rows[:1, 1], "o", mfc="none", mec=colors[r], ms=7)
        (end,) = ax.plot(rows[-1:, 0], rows[-1:, 1], "*", color=colors[r], mec="k", mew=0.5, ms=12)
        artists.append((line, start, end))
    return artists


def marker_legend_handles(what: str = "meta-training run") -> list:
    """Legend entries explaining :func:`draw_trajectories`' markers: a hollow circle where a run
    starts, a star where it ends (grey: the colours are the runs')."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="none", marker="o", mfc="none", mec="0.3", ms=7, label=f"start of a {what}"),
            Line2D([], [], ls="none", marker="*", color="0.6", mec="k", mew=0.5, ms=12, label=f"end of a {what}")]


def draw_adaptation_path(ax, path: np.ndarray, *, color: str = "white"):
    """Draw an inner-loop path ((k+1, 2) weights) as a dashed line with dots at each step."""
    (line,) = ax.plot(path[:, 0], path[:, 1], "--o", color=color, ms=4, lw=1.2)
    return line


def draw_shallow(ax, w: np.ndarray, loss: np.ndarray, trajectory: Trajectory, *, colors=None):
    """The shallow model's objective as a curve, with each meta-training run's iterates on it.

    Returns (curve, [(points, end_marker) per run]).
    """
    (curve,) = ax.plot(w, loss, "k-", lw=1.5, label="MAML objective (depth 1)")
    runs = []
    n_runs = trajectory.weights.shape[1]
    colors = colors or [f"C{r % 10}" for r in range(1, n_runs + 1)]
    for r in range(n_runs):
        rows = slice(0, trajectory.stopped[r] + 1)
        (points,) = ax.plot(trajectory.weights[rows, r, 0], trajectory.losses[rows, r], "o",
                            color=colors[r], ms=3, alpha=0.6)
        (end,) = ax.plot(trajectory.final_weights[r, :1], trajectory.final_losses[r:r + 1], "*",
                         color=colors[r], mec="k", mew=0.5, ms=12)
        runs.append((points, end))
    ax.set_xlabel("$w$")
    ax.set_ylabel("MAML objective")
    return curve, runs
