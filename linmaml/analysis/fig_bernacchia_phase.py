"""Where Bernacchia's negative training rate appears, and how much it helps: a phase diagram.

Mixed linear regression as in :mod:`linmaml.analysis.fig_bernacchia` (n_v = 2 outer and n_r = 20
adaptation points, w ~ N(0, ν²/p·I), σ = 1). The best training rate α_t* minimises
e(α_t) = E‖ω* − w0‖² whatever the test rate (:mod:`linmaml.closedform.bernacchia`), and the average
test loss at the best test rate is L*(e) = min over α_r of ½[h_r(e + ν²) + α_r²σ²p/n_r + σ²]. e is
exact given the training inputs and linear in (ν², σ²): e = ν²·s(α_t) + σ²·c(α_t), so one set of
input draws per (p, m, n_t) serves every ν²/σ². α_t* is the minimiser over a grid from −8 to 2
(step 0.1; "≤ −8" marks the edge), and the gain is the paired relative drop
[L*(e(0)) − L*(e(α_t*))]/L*(e(0)), with its standard error over the same input draws (delta method,
dL*/de = ½h_r at the best α_r).

(a) α_t* over ν²/σ² and p/(m·n_v) (m = 10 tasks, n_t = 30, p from 5 to 120); (b) the gain there;
(c) α_t* and the gain over the number of tasks m and inner points n_t (p = 60, ν²/σ² = 0.25, the
paper's values).

Run: ``python -m linmaml.analysis.fig_bernacchia_phase [--out DIR] [--quick]``; writes
bernacchia_phase.png and bernacchia_phase.json.
"""
from __future__ import annotations

import pathlib

import numpy as np

from linmaml.closedform import bernacchia as b
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module

NAME = "bernacchia_phase"
PAPER = ("A. Bernacchia, 'Meta-learning with negative learning rates', ICLR 2021: the optimal training "
         "rate is negative (over-parameterised mixed linear regression)")

SETTINGS = {
    "n_v": 2, "n_r": 20, "sigma": 1.0,
    "lr_train_grid": [-8.0, 2.0, 101],
    "a": {"m": 10, "n_t": 30, "p": [5, 10, 15, 25, 30, 40, 60, 120], "spread_over_noise": [0.01, 100.0, 17]},
    "c": {"p": 60, "spread_over_noise": 0.25, "m": [1, 2, 3, 5, 10, 20], "n_t": [5, 10, 20, 30, 60]},
    "seed": 0,
}
FULL = {"draws": 300}
QUICK = {"draws": 12, "a_p": [5, 30], "c_m": [1, 3], "c_n_t": [5, 30], "a_ratios": 5}


def _rates():
    low, high, points = SETTINGS["lr_train_grid"]
    return np.round(np.linspace(low, high, int(points)), 12)


def _best_loss(setting, e):
    e = max(float(e), 0.0)
    rate = b.best_test_rate(setting, e)
    return float(b.test_loss(setting, e, rate)[0]), rate


def analyse(setting, parts: np.ndarray, rates: np.ndarray) -> dict:
    """Best α_t, and the paired gain at the best test rate, from the (2, rates, draws) parts."""
    samples = setting.nu**2 * parts[0] + setting.sigma**2 * parts[1]
    mean = samples.mean(axis=1)
    best = int(np.argmin(mean))
    zero = int(np.argmin(np.abs(rates)))
    loss_zero, rate_zero = _best_loss(setting, mean[zero])
    loss_best, rate_best = _best_loss(setting, mean[best])
    diff = samples[zero] - samples[best]
    slope = 0.5 * float(b.adaptation_factor(setting, rate_best)[0])  # envelope: dL*/de at the best α_r
    return {
        "best_lr_train": float(rates[best]), "at_grid_edge": best in (0, rates.size - 1),
        "gain_relative": (loss_zero - loss_best) / loss_zero,
        "gain_relative_se": slope * float(diff.std(ddof=1) / np.sqrt(diff.size)) / loss_zero,
        "loss_at_zero": loss_zero, "loss_at_best": loss_best, "best_lr_test_at_zero": rate_zero,
    }


def compute(quick: bool = False) -> dict:
    cfg = SETTINGS
    draws = (QUICK if quick else FULL)["draws"]
    rates = _rates()
    seed = cfg["seed"]
    a_p = QUICK["a_p"] if quick else cfg["a"]["p"]
    low, high, count = cfg["a"]["spread_over_noise"]
    ratios = np.geomspace(low, high, QUICK["a_ratios"] if quick else int(count))
    grid_a = []
    for i, p in enumerate(a_p):
        base = b.Setting(p=p, m=cfg["a"]["m"], n_t=cfg["a"]["n_t"], n_v=cfg["n_v"], n_r=cfg["n_r"], sigma=cfg["sigma"])
        parts = b.meta_error_parts(base, rates, draws=draws, seed=seed + i)
        row = []
        for ratio in ratios:
            setting = b.Setting(p=p, m=base.m, n_t=base.n_t, n_v=base.n_v, n_r=base.n_r, sigma=cfg["sigma"],
                                nu=float(np.sqrt(ratio)) * cfg["sigma"])
            row.append(analyse(setting, parts, rates))
        grid_a.append(row)
    c_m = QUICK["c_m"] if quick else cfg["c"]["m"]
    c_n = QUICK["c_n_t"] if quick else cfg["c"]["n_t"]
    nu = float(np.sqrt(cfg["c"]["spread_over_noise"])) * cfg["sigma"]
    grid_c = []
    for i, n_t in enumerate(c_n):
        row = []
        for j, m in enumerate(c_m):
            setting = b.Setting(p=cfg["c"]["p"], m=m, n_t=n_t, n_v=cfg["n_v"], n_r=cfg["n_r"], sigma=cfg["sigma"], nu=nu)
            parts = b.meta_error_parts(setting, rates, draws=draws, seed=seed + 1000 + 100 * i + j)
            row.append(analyse(setting, parts, rates))
        grid_c.append(row)
    flat_a = [cell for row in grid_a for cell in row]
    numbers = {
        "a": {"p": list(a_p), "p_over_m_n_v": [p / (cfg["a"]["m"] * cfg["n_v"]) for p in a_p],
              "spread_over_noise": [float(r) for r in ratios], "cells": grid_a},
        "c": {"m": list(c_m), "n_t": list(c_n), "cells": grid_c},
        "a_negative_fraction": float(np.mean([c["best_lr_train"] < 0 for c in flat_a])),
        "a_max_gain_relative": float(max(c["gain_relative"] for c in flat_a)),
        "a_cells": len(flat_a),
    }
    return {"figure": NAME, "paper": PAPER, "settings": {**cfg, "draws": draws, "quick": quick}, "numbers": numbers}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)
    from matplotlib.colors import LogNorm, TwoSlopeNorm  # lazy: an optional extra (linmaml/_extras.py)

    n, s = result["numbers"], result["settings"]
    low = s["lr_train_grid"][0]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.0), gridspec_kw={"width_ratios": [1.15, 1.15, 1]})
    a = n["a"]
    best = np.array([[c["best_lr_train"] for c in row] for row in a["cells"]])
    gain = np.array([[c["gain_relative"] for c in row] for row in a["cells"]])
    gain_se = np.array([[c["gain_relative_se"] for c in row] for row in a["cells"]])
    ratios = np.array(a["spread_over_noise"])
    norm = TwoSlopeNorm(vmin=low, vcenter=0.0, vmax=max(1e-3, s["lr_train_grid"][1]))
    extent_x = np.log10(ratios)
    half = (extent_x[1] - extent_x[0]) / 2 if extent_x.size > 1 else 0.5
    rows = len(a["p"])
    extent = [extent_x[0] - half, extent_x[-1] + half, -0.5, rows - 0.5]

    ax = axes[0]
    image = ax.imshow(best, origin="lower", aspect="auto", cmap="RdBu", norm=norm, extent=extent)
    fig.colorbar(image, ax=ax, label="best training rate α_t*")
    ax.set_title("(a) best α_t (red: negative; × : gain within 2 SE; ≤ : grid edge)", fontsize=9.5)
    edges = np.array([[c["at_grid_edge"] for c in row] for row in a["cells"]])
    for i in range(rows):
        for j in range(ratios.size):
            mark = ("≤" if edges[i, j] else "") + ("×" if gain[i, j] < 2 * gain_se[i, j] else "")
            if mark:
                ax.text(extent_x[j], i, mark, ha="center", va="center", fontsize=7)
    ax2 = axes[1]
    shown = np.clip(100 * gain, 1e-3, None)
    image2 = ax2.imshow(shown, origin="lower", aspect="auto", cmap="viridis",
                        norm=LogNorm(vmin=max(shown.min(), 1e-3), vmax=max(shown.max(), 1e-2)), extent=extent)
    fig.colorbar(image2, ax=ax2, label="test-loss drop at α_t* vs α_t = 0 (%, best α_r each)")
    for i in range(rows):
        for j in range(ratios.size):
            if gain[i, j] < 2 * gain_se[i, j]:
                ax2.text(extent_x[j], i, "×", ha="center", va="center", fontsize=7, color="w")
    ax2.set_title("(b) how much it helps (× : within 2 paired SE of 0)", fontsize=9.5)
    for axis in (ax, ax2):
        axis.set_yticks(range(rows))
        axis.set_yticklabels([f"{r:g} (p={p})" for r, p in zip(a["p_over_m_n_v"], a["p"])], fontsize=7.5)
        axis.set_ylabel(f"p/(m·n_v), m = {s['a']['m']}, n_t = {s['a']['n_t']}")
        axis.set_xlabel("log10 ν²/σ²  (task spread over label noise)")
        axis.axhline(next((k for k, r in enumerate(a["p_over_m_n_v"]) if r > 1), rows) - 0.5, color="k", lw=1)

    c = n["c"]
    best_c = np.array([[cell["best_lr_train"] for cell in row] for row in c["cells"]])
    ax3 = axes[2]
    image3 = ax3.imshow(best_c, origin="lower", aspect="auto", cmap="RdBu", norm=norm)
    fig.colorbar(image3, ax=ax3, label="best training rate α_t*")
    for i, row in enumerate(c["cells"]):
        for j, cell in enumerate(row):
            mark = "≤" if cell["at_grid_edge"] else ""
            ax3.text(j, i, f"{mark}{cell['best_lr_train']:.1f}\n{100 * cell['gain_relative']:.1f}%",
                     ha="center", va="center", fontsize=7)
    ax3.set_xticks(range(len(c["m"])))
    ax3.set_xticklabels(c["m"])
    ax3.set_yticks(range(len(c["n_t"])))
    ax3.set_yticklabels(c["n_t"])
    ax3.set_xlabel("number of training tasks m")
    ax3.set_ylabel("inner points per task n_t")
    ax3.set_title(f"(c) p = {s['c']['p']}, ν²/σ² = {s['c']['spread_over_noise']}: α_t* and % drop", fontsize=9.5)
    fig.suptitle(f"Bernacchia 2021: the best training rate (exact given the inputs, {s['draws']} input draws per cell; "
                 f"n_v = {s['n_v']}, n_r = {s['n_r']})", fontsize=10.5)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw,
                          quick_help="a 2 × 5 and a 2 × 2 grid with 12 input draws (seconds)")

if __name__ == "__main__":
    main()
