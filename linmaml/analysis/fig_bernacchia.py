"""Bernacchia 2021, "Meta-learning with negative learning rates", Figure 2, against exact answers.

Mixed linear regression at the paper's settings (p = 60 parameters, m = 3 training tasks with
n_t = 30 inner and n_v = 2 outer points, n_r = 20 adaptation points, σ = 1, ν = 0.5, w0 = ω0 = 0;
w ~ N(w0, ν²/p·I), x ~ N(0, I)): (a) the average test loss against the test rate α_r at α_t = 0.2,
(b) against the training rate α_t at α_r = 0.2, and (c) (b) in an under-parameterised setting
(p = 10, m = 10 tasks: p < m·n_v = 20). ν is read as the total task spread (E‖w − w0‖² = ν²); the
JSON also records the main numbers under the other reading, ν² per coordinate
(``other_reading_nu_per_coordinate``).

Theory (lines): :mod:`linmaml.closedform.bernacchia`, exact over the test task, the task parameters
and all label noise; the expectation over the training inputs is a sample average of the exact
conditional value (the same draws at every rate, with the exact α_t = 0 value as control variate),
drawn with ±2 standard errors (thinner than the line). No large-p approximation. Simulation
(points, ±2 SE over independent runs): the whole experiment sampled
(:func:`linmaml.closedform.bernacchia.simulate`: training tasks, the minimum-norm MAML solution
of the sampled objective, fresh test tasks adapted on sampled noisy points). The best training
rate's advantage over α_t = 0 is a paired difference (same input draws / same runs), reported with
its paired standard error.

Run: ``python -m linmaml.analysis.fig_bernacchia [--out DIR] [--quick]``; writes bernacchia.png and
bernacchia.json.
"""
from __future__ import annotations

import pathlib

import numpy as np

from linmaml.closedform import bernacchia as b
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module

NAME = "bernacchia"
PAPER = ("A. Bernacchia, 'Meta-learning with negative learning rates', ICLR 2021, Figure 2 "
         "(mixed linear regression)")

SETTINGS = {
    "over": {"p": 60, "m": 3, "n_t": 30, "n_v": 2, "n_r": 20, "sigma": 1.0, "nu": 0.5},
    "under": {"p": 10, "m": 10, "n_t": 30, "n_v": 2, "n_r": 20, "sigma": 1.0, "nu": 0.5},
    "lr_train_fixed": 0.2,
    "lr_test_fixed": 0.2,
    "lr_test_curve": [-0.5, 1.0, 151],
    "lr_train_curve": [-6.0, 1.0, 141],
    "lr_test_points": [-0.4, -0.2, 0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8],
    "lr_train_points": [-6.0, -4.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.2, 0.5, 1.0],
    "test_tasks_per_run": 10,
    "seed": 0,
}
FULL = {"draws": 3000, "draws_under": 1000, "runs": 2000}
QUICK = {"draws": 100, "draws_under": 40, "runs": 60}


def _grid(spec):
    low, high, points = spec
    return np.round(np.linspace(low, high, int(points)), 12)


def _panel_over_rates(setting, rates, draws, seed, lr_test):
    """Theory curve of the test loss against α_t (exact in α_r given e), its SE, and the best α_t
    with its paired advantage over α_t = 0 (rates must contain 0)."""
    e = b.meta_error(setting, rates, draws=draws, seed=seed)
    h = float(b.adaptation_factor(setting, lr_test)[0])
    loss = b.test_loss(setting, np.maximum(e["mean"], 0.0), lr_test)
    se = 0.5 * h * e["se"]
    best = int(np.argmin(e["mean"]))
    limit = b.meta_error_limit(setting, draws, seed + 100)
    zero = int(np.argmin(np.abs(rates)))
    gap = 0.5 * h * (e["samples"][zero] - e["samples"][best])
    return {
        "lr_train": [float(r) for r in rates], "test_loss": [float(x) for x in loss], "se": [float(x) for x in se],
        "meta_error": [float(x) for x in e["mean"]], "meta_error_se": [float(x) for x in e["se"]],
        "best_lr_train": float(rates[best]), "best_test_loss": float(loss[best]),
        "gain_over_zero": float(gap.mean()),
        "gain_over_zero_paired_se": float(gap.std(ddof=1) / np.sqrt(gap.size)),
        "gain_over_zero_relative": float(gap.mean() / loss[zero]),
        "best_at_grid_edge": best in (0, rates.size - 1),
        "limit_large_rate_test_loss": float(b.test_loss(setting, limit["mean"], lr_test)[0]),
        "limit_large_rate_se": 0.5 * h * limit["se"],
    }


def _points(sim, axis_rates, index_fixed, along):
    losses = sim["loss"]
    if along == "lr_test":
        per_run = losses[index_fixed]  # (len(lr_test), runs)
    else:
        per_run = losses[:, index_fixed]  # (len(lr_train), runs)
    mean = per_run.mean(axis=1)
    se = per_run.std(axis=1, ddof=1) / np.sqrt(per_run.shape[1])
    return per_run, {"rates": [float(r) for r in axis_rates], "test_loss": [float(x) for x in mean],
                     "se": [float(x) for x in se]}


def _paired_point_gap(per_run, rates, best_rate):
    """MC paired difference loss(0) − loss(point nearest best_rate), same runs."""
    rates = np.asarray(rates)
    zero = int(np.argmin(np.abs(rates)))
    near = int(np.argmin(np.abs(rates - best_rate)))
    diff = per_run[zero] - per_run[near]
    return {"at_rate": float(rates[near]), "gain_over_zero": float(diff.mean()),
            "paired_se": float(diff.std(ddof=1) / np.sqrt(diff.size))}


def compute(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    cfg = SETTINGS
    seed = cfg["seed"]
    over = b.Setting(**cfg["over"])
    under = b.Setting(**cfg["under"])
    lr_t, lr_r = cfg["lr_train_fixed"], cfg["lr_test_fixed"]
    numbers = {}

    # (a) against α_r at α_t = 0.2: the curve is exact in α_r given e(0.2)
    e_fixed = b.meta_error(over, [lr_t], draws=size["draws"], seed=seed)
    test_rates = _grid(cfg["lr_test_curve"])
    e_value, e_se = float(e_fixed["mean"][0]), float(e_fixed["se"][0])
    curve = b.test_loss(over, e_value, test_rates)
    band = 0.5 * b.adaptation_factor(over, test_rates) * e_se
    best_test = b.best_test_rate(over, e_value)
    train_rates = _grid(cfg["lr_train_curve"])
    sim = b.simulate(over, cfg["lr_train_points"], cfg["lr_test_points"], runs=size["runs"],
                     test_tasks=cfg["test_tasks_per_run"], seed=seed + 1)
    k_fixed = cfg["lr_train_points"].index(lr_t)
    j_fixed = cfg["lr_test_points"].index(lr_r)
    _, points_a = _points(sim, cfg["lr_test_points"], k_fixed, "lr_test")
    numbers["a_vs_lr_test"] = {
        "lr_test": [float(r) for r in test_rates], "test_loss": [float(x) for x in curve],
        "se": [float(x) for x in band], "meta_error": e_value, "meta_error_se": e_se,
        "best_lr_test": best_test, "best_test_loss": float(b.test_loss(over, e_value, best_test)[0]),
        "monte_carlo": points_a,
    }
    # (b) against α_t at α_r = 0.2
    panel_b = _panel_over_rates(over, train_rates, size["draws"], seed, lr_r)
    per_run_b, points_b = _points(sim, cfg["lr_train_points"], j_fixed, "lr_train")
    panel_b["monte_carlo"] = points_b
    panel_b["monte_carlo_paired_gain"] = _paired_point_gap(per_run_b, cfg["lr_train_points"], panel_b["best_lr_train"])
    panel_b["meta_error_at_zero_exact"] = b.meta_error_at_zero(over)
    numbers["b_vs_lr_train"] = panel_b
    # (c) the under-parameterised setting
    panel_c = _panel_over_rates(under, train_rates, size["draws_under"], seed + 2, lr_r)
    sim_u = b.simulate(under, cfg["lr_train_points"], [lr_r], runs=size["runs"] // 2,
                       test_tasks=cfg["test_tasks_per_run"], seed=seed + 3)
    per_run_c, points_c = _points(sim_u, cfg["lr_train_points"], 0, "lr_train")
    panel_c["monte_carlo"] = points_c
    panel_c["monte_carlo_paired_gain"] = _paired_point_gap(per_run_c, cfg["lr_train_points"], panel_c["best_lr_train"])
    numbers["c_under_vs_lr_train"] = panel_c
    # The other reading of ν: per coordinate (w ~ N(w0, ν²·I), total spread p·ν² = 15), theory only
    other = b.Setting(**{**cfg["over"], "nu": float(np.sqrt(cfg["over"]["p"])) * cfg["over"]["nu"]})
    panel_o = _panel_over_rates(other, train_rates, size["draws"], seed, lr_r)
    e_o = panel_o["meta_error"][panel_o["lr_train"].index(lr_t)]
    numbers["other_reading_nu_per_coordinate"] = {
        "nu_total": other.nu, "best_lr_test_at_lr_train_fixed": b.best_test_rate(other, max(e_o, 0.0)),
        **{key: panel_o[key] for key in ("best_lr_train", "gain_over_zero", "gain_over_zero_paired_se",
                                         "gain_over_zero_relative", "best_at_grid_edge")},
    }
    # theory vs simulation, point by point, in combined standard errors
    z = []
    for panel, points, rates_key in ((numbers["a_vs_lr_test"], points_a, "lr_test"),
                                     (panel_b, points_b, "lr_train"), (panel_c, points_c, "lr_train")):
        grid = np.asarray(panel[rates_key])
        for rate, mean, se in zip(points["rates"], points["test_loss"], points["se"]):
            k = int(np.argmin(np.abs(grid - rate)))
            if abs(grid[k] - rate) < 1e-9:
                z.append(abs(mean - panel["test_loss"][k]) / np.hypot(se, panel["se"][k]))
    numbers["theory_vs_simulation_max_z"] = float(max(z))
    numbers["theory_vs_simulation_points"] = len(z)
    return {"figure": NAME, "paper": PAPER, "settings": {**cfg, **size, "quick": quick}, "numbers": numbers}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    n, s = result["numbers"], result["settings"]
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.4))

    def theory(ax, x, y, se, label):
        x, y, se = np.asarray(x), np.asarray(y), np.asarray(se)
        ax.fill_between(x, y - 2 * se, y + 2 * se, color="C0", alpha=0.3, lw=0)
        ax.plot(x, y, color="C0", lw=1.6, label=label)

    def points(ax, mc, label):
        ax.errorbar(mc["rates"], mc["test_loss"], yerr=[2 * e for e in mc["se"]], fmt="o", color="C3", ms=4,
                    capsize=3, label=label)

    a = n["a_vs_lr_test"]
    ax = axes[0]
    theory(ax, a["lr_test"], a["test_loss"], a["se"], "exact theory (± 2 SE of the input average)")
    points(ax, a["monte_carlo"], f"simulation ± 2 SE ({s['runs']} runs)")
    ax.axvline(a["best_lr_test"], color="C2", ls="--", lw=1, label=f"best α_r = {a['best_lr_test']:.3f}")
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("test (adaptation) rate α_r")
    ax.set_ylabel("average test loss")
    ax.set_title(f"(a) p = 60, m = 3: α_t = {s['lr_train_fixed']}", fontsize=10)

    for ax, key, label in ((axes[1], "b_vs_lr_train", "(b) p = 60, m = 3 (p > m·n_v = 6)"),
                           (axes[2], "c_under_vs_lr_train", "(c) p = 10, m = 10 (p < m·n_v = 20)")):
        c = n[key]
        theory(ax, c["lr_train"], c["test_loss"], c["se"], "exact theory (± 2 SE)")
        runs = s["runs"] if key.startswith("b") else s["runs"] // 2
        points(ax, c["monte_carlo"], f"simulation ± 2 SE ({runs} runs)")
        ax.axvline(c["best_lr_train"], color="C2", ls="--", lw=1,
                   label=f"best α_t = {c['best_lr_train']:.2f}: −{100 * c['gain_over_zero_relative']:.1f} % "
                         f"vs α_t = 0\n(paired gain {c['gain_over_zero']:.4f} ± {2 * c['gain_over_zero_paired_se']:.1e}, 2 SE)")
        ax.axhline(c["limit_large_rate_test_loss"], color="0.4", ls=":", lw=1,
                   label=f"|α_t| → ∞ limit {c['limit_large_rate_test_loss']:.3f}")
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_xlabel("training (inner) rate α_t")
        ax.set_title(f"{label}: α_r = {s['lr_test_fixed']}", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper left")
    fig.suptitle("Bernacchia 2021, Fig. 2 (mixed linear regression, n_t = 30, n_v = 2, n_r = 20, σ = 1, ν = 0.5, "
                 "E‖w − w0‖² = ν²): "
                 "best test rate > 0, best training rate < 0", fontsize=10.5)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw,
                          quick_help="100 input draws and 60 runs instead of 4,000 and 2,000 (seconds)")

if __name__ == "__main__":
    main()
