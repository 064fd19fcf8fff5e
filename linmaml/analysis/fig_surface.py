"""Figure 1: the MAML loss surface of a deep scalar chain, with meta-training trajectories.

Model f(x) = w2·w1·x (deep) beside f(x) = w·x (shallow), inputs x ~ N(0, V), tasks y = a·x with
a ~ N(m, s²), population inner and outer losses ½·V·(w_eff − a)², k inner steps with learning rate
α. The objective is computed exactly (``linmaml.closedform.scalar``) and meta-training is plain
gradient descent on it with its exact gradient.

With a small inner learning rate (αV = 0.1) the shallow model can only shrink the task error by
the factor (1 − αV)^k, so its best MAML loss is ½V(1 − αV)^{2k}s², barely below the ½Vs² of a
model that does not adapt. The deep model's upper weight scales the lower one's step (the learned
preconditioner). The infimum of the deep objective is exactly 0, reached on the zero set
w1·w2 = 0, w1² + w2² = 1/(αV) (four points): at w1 = 0, w2² = 1/(αV) one inner step moves w1 to
αV·a·w2, so w1′w2′ = a for every task a (and symmetrically). Meta-training approaches those points;
each run's final value is reported (runs that have not reached 0 are still falling). Panels: (a) the deep surface with trajectories, (b) the shallow
objective with its trajectories' iterates, (c) the MAML loss along meta-training for both.

Run: ``python -m linmaml.analysis.fig_surface [--out DIR] [--quick]``; writes surface.png and surface.json.
"""
from __future__ import annotations

import pathlib

import numpy as np

from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots import surface as S
from linmaml.plots.figure import figure_module

NAME = "surface"

SETTINGS = {
    "inner_lr": 0.1,
    "inner_steps": 1,
    "task_mean": 0.5,
    "task_std": 1.0,
    "x_var": 1.0,
    "range": 4.0,
    "meta_lr": 0.2,
    "deep_starts": [[0.5, 1.0], [-1.0, 0.5], [1.5, -0.3], [-2.0, -2.5], [2.0, -3.0]],
    "shallow_starts": [-3.0, -1.0, 2.0, 3.5],
}
FULL = {"grid": 201, "curve_points": 801, "meta_steps": 1500}
#: Panel (b)'s y scale is linear below this loss and logarithmic above, so that 0 (the deep model's
#: infimum) can be drawn where it is.
SYMLOG_LINTHRESH = 1e-6
#: The shallow runs' colours, distinct from the deep runs' C1, C2, …
SHALLOW_COLORS = ["tab:blue", "tab:cyan", "tab:olive", "tab:pink", "tab:gray"]
QUICK = {"grid": 61, "curve_points": 201, "meta_steps": 120}


def _trajectory_record(trajectory, names) -> list[dict]:
    records = []
    for r in range(trajectory.weights.shape[1]):
        records.append({
            "start": dict(zip(names, trajectory.weights[0, r].tolist())),
            "end": dict(zip(names, trajectory.final_weights[r].tolist())),
            "meta_steps_taken": int(trajectory.stopped[r]),
            "diverged": bool(trajectory.diverged[r]),
            "start_loss": float(trajectory.losses[0, r]),
            "final_loss": float(trajectory.final_losses[r]),
        })
    return records


def zero_set(setting) -> list[list[float]]:
    """The four points where the one-step deep objective is exactly 0: (0, ±r) and (±r, 0), r = 1/√(αV)."""
    r = 1.0 / np.sqrt(setting.lr * setting.x_var)
    return [[0.0, r], [0.0, -r], [r, 0.0], [-r, 0.0]]


def compute(quick: bool = False) -> dict:
    """Every number the figure draws (no plotting): surfaces, trajectories and summary numbers."""
    size = QUICK if quick else FULL
    cfg = SETTINGS
    setting = S.TaskSetting(lr=cfg["inner_lr"], steps=cfg["inner_steps"], mean=cfg["task_mean"],
                            std=cfg["task_std"], x_var=cfg["x_var"])
    w1, w2, deep_loss = S.depth2_surface(setting, size["grid"], cfg["range"])
    w, shallow_loss = S.depth1_curve(setting, size["curve_points"], cfg["range"])
    deep_runs = S.meta_train(np.array(cfg["deep_starts"]), setting, meta_lr=cfg["meta_lr"],
                             meta_steps=size["meta_steps"])
    shallow_runs = S.meta_train(np.array(cfg["shallow_starts"])[:, None], setting, meta_lr=cfg["meta_lr"],
                                meta_steps=size["meta_steps"])
    i, j = np.unravel_index(np.nanargmin(deep_loss), deep_loss.shape)
    k = int(np.nanargmin(shallow_loss))
    deep_best = float(np.nanmin(deep_runs.final_losses))
    shallow_best = float(np.nanmin(shallow_runs.final_losses))
    a, V, s, steps = setting.lr, setting.x_var, setting.std, setting.steps
    numbers = {
        "deep_grid": {"w1": [float(w1[0]), float(w1[-1])], "w2": [float(w2[0]), float(w2[-1])],
                      "points_per_axis": int(w1.size)},
        "deep_grid_min": {"loss": float(deep_loss[i, j]), "w1": float(w1[i]), "w2": float(w2[j])},
        "deep_grid_max_finite": float(np.nanmax(np.where(np.isfinite(deep_loss), deep_loss, np.nan))),
        "shallow_grid": {"w": [float(w[0]), float(w[-1])], "points": int(w.size)},
        "shallow_grid_min": {"loss": float(shallow_loss[k]), "w": float(w[k])},
        "deep_trajectories": _trajectory_record(deep_runs, ("w1", "w2")),
        "shallow_trajectories": _trajectory_record(shallow_runs, ("w",)),
        "deep_best_final_loss": deep_best,
        "shallow_best_final_loss": shallow_best,
        "deep_to_shallow_ratio": deep_best / shallow_best,
        # ½Vs²: a model that does not adapt can at best predict the mean slope.
        "no_adaptation_loss": setting.no_adaptation_floor,
        # The shallow model's exact optimum, w = m: each inner step shrinks the error by (1 − αV).
        "shallow_optimum_closed_form": 0.5 * V * (1 - a * V) ** (2 * steps) * s ** 2,
        "zero_model_loss": setting.zero_model_loss,
        # The zero set of the deep objective (k = 1): w1·w2 = 0, w1² + w2² = 1/(αV).
        "zero_set": zero_set(setting),
        "zero_set_objective": [float(S.objective([np.array(p[0]), np.array(p[1])], setting)) for p in zero_set(setting)],
        "deep_final_losses": [float(v) for v in deep_runs.final_losses],
    }
    settings = dict(cfg, depth_deep=2, depth_shallow=1, quick=bool(quick), **size,
                    model_deep="f(x) = w2*w1*x", model_shallow="f(x) = w*x",
                    objective="exact population MAML loss E_a[1/2 V (w_eff' - a)^2], a ~ N(task_mean, task_std^2)",
                    meta_training="gradient descent on the exact objective with its exact gradient")
    return {"figure": NAME, "settings": settings, "numbers": numbers,
            "_arrays": {"setting": setting, "w1": w1, "w2": w2, "deep_loss": deep_loss, "w": w,
                        "shallow_loss": shallow_loss, "deep_runs": deep_runs, "shallow_runs": shallow_runs}}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    arr, num, cfg = result["_arrays"], result["numbers"], result["settings"]
    setting = arr["setting"]
    fig, (ax_deep, ax_shallow, ax_curve) = plt.subplots(1, 3, figsize=(15.5, 4.8),
                                                        gridspec_kw={"width_ratios": [1.15, 1, 1]})
    image = S.draw_surface(ax_deep, arr["w1"], arr["w2"], arr["deep_loss"], setting)
    fig.colorbar(image, ax=ax_deep, label="MAML objective (log scale)")
    x, y = S.hyperbola(setting.mean, cfg["range"])
    ax_deep.plot(x, y, ":", color="white", lw=1, label="$w_1 w_2 = m$ (mean task solved)")
    S.draw_trajectories(ax_deep, arr["deep_runs"])  # each run labelled in (c), same colours
    zeros = np.array(num["zero_set"])
    ax_deep.plot(zeros[:, 0], zeros[:, 1], "D", color="gold", mec="k", ms=8, zorder=5,
                 label=r"objective 0: $w_1 w_2 = 0,\ w_1^2 + w_2^2 = 1/(\alpha V)$")
    ax_deep.set_xlim(-cfg["range"], cfg["range"])
    ax_deep.set_ylim(-cfg["range"], cfg["range"])
    handles, _ = ax_deep.get_legend_handles_labels()
    ax_deep.legend(handles=handles + S.marker_legend_handles("run (colours as in c)"), loc="upper left",
                   fontsize=7, framealpha=0.8)
    ax_deep.set_title(f"(a) deep $f(x)=w_2 w_1 x$: infimum 0 at the gold diamonds\n{len(num['deep_final_losses'])} "
                      f"meta-training runs approach them (final values in c)", fontsize=9)

    S.draw_shallow(ax_shallow, arr["w"], arr["shallow_loss"], arr["shallow_runs"], colors=SHALLOW_COLORS)
    ax_shallow.axhline(num["no_adaptation_loss"], color="gray", ls="--", lw=1,
                       label=r"no adaptation $\frac{1}{2}Vs^2$")
    # The deep model's infimum is exactly 0 (the zero set of a): drawn at 0 on a scale that is linear
    # below 1e-6 and logarithmic above, with the runs' best value said, not drawn as if it were the floor.
    ax_shallow.axhline(0.0, color="tab:red", ls="-.", lw=1.5,
                       label=f"deep model's infimum: 0 (exact);\nits runs reach {num['deep_best_final_loss']:.1g} "
                             f"and still fall")
    ax_shallow.set_yscale("symlog", linthresh=SYMLOG_LINTHRESH)
    top = float(np.nanmax(np.where(np.isfinite(arr["shallow_loss"]), arr["shallow_loss"], np.nan)))
    ax_shallow.set_ylim(-0.3 * SYMLOG_LINTHRESH, 3 * top)
    ax_shallow.legend(fontsize=7, loc="center")
    ax_shallow.set_title(f"(b) shallow $f(x)=w x$: best {num['shallow_best_final_loss']:.3g} "
                         f"(stars: ends of its runs)", fontsize=10)

    for r, run_record in enumerate(num["deep_trajectories"]):
        start = run_record["start"]
        ax_curve.plot(arr["deep_runs"].losses[:, r], color=f"C{(r % 9) + 1}", lw=1.5,
                      label=f"deep run from ({start['w1']:g}, {start['w2']:g}): ends at {run_record['final_loss']:.1g}")
    shallow_runs = arr["shallow_runs"].weights.shape[1]
    for r in range(shallow_runs):
        ax_curve.plot(arr["shallow_runs"].losses[:, r], color=SHALLOW_COLORS[r % len(SHALLOW_COLORS)], lw=1, ls="--",
                      label=f"the {shallow_runs} shallow runs (all end at {num['shallow_best_final_loss']:.3g})"
                      if r == 0 else None)
    ax_curve.axhline(num["no_adaptation_loss"], color="gray", ls="--", lw=1, label="no adaptation")
    ax_curve.axhline(num["shallow_optimum_closed_form"], color="k", ls=":", lw=1,
                     label=r"shallow optimum $\frac{1}{2}V(1-\alpha V)^{2k}s^2$")
    ax_curve.set_yscale("log")
    ax_curve.set_xlabel("meta-iteration")
    ax_curve.set_ylabel("MAML objective (after adaptation)")
    ax_curve.legend(fontsize=6.5, loc="center right")
    ax_curve.set_title("(c) meta-training (deep runs: infimum 0, still falling)", fontsize=10)
    fig.suptitle(f"MAML with a small inner learning rate: α={cfg['inner_lr']}, k={cfg['inner_steps']}, "
                 f"V={cfg['x_var']}, a ~ N({cfg['task_mean']}, {cfg['task_std']}²)", fontsize=11)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw, quick_help="small grids and short runs (a few seconds)")

if __name__ == "__main__":
    main()
