"""Collins, Mokhtari & Shakkottai 2020, "How does the task landscape affect MAML performance?", exactly.

A mixture of easy tasks (inputs x ~ N(0, ρ_E·I), ρ_E = 1, centre 0, spread R_E = 1) and hard tasks
(ρ_H = 0.1, centre at distance D, spread R_H), half of each, d = 5, label noise σ = 0.1
(:func:`linmaml.closedform.mixture.easy_hard_mixture`). The MAML solution (trained with one inner step
at rate α) and the average-loss solution (ERM, the paper's NAL) are adapted by that same step and
compared by the exact ratio of their excess post-adaptation losses E_ERM/E_MAML
(:func:`linmaml.closedform.mixture.maml_gain`: fixed points and mixture expectations of
:mod:`linmaml.closedform.gaussian`, exact, finite-n Wishart moments included).

(a) over the hard tasks' spread R_H and the distance D between the centres, with population-level
adaptation (the expected gradient) at α = 1/ρ_E, where one step solves an easy task exactly: the
paper's regime. The line D = √R_H bounds the region where the paper says the gain is large (hard
tasks closely packed — small R_H — with their centre far from the easy centre: D² > R_H).
(b) the same with one step on n = 100 noisy support points at the easy tasks' best rate
α = 1/(ρ_E(1 + (d + 1)/n)): an easy task is no longer solved in one step, and the ratio saturates.
(c) the ratio against the hardness ρ_H/ρ_E at R_H = 0.01, D = 3, for population, n = 100 and n = 20.
Crosses: Monte Carlo (:func:`linmaml.closedform.mixture.simulate`: sampled tasks and support sets,
explicit inner steps, paired), ratio ± 2 delta-method SE, written beside the cells they check.

Run: ``python -m linmaml.analysis.fig_task_landscape [--out DIR] [--quick]``; writes task_landscape.png
and task_landscape.json.
"""
from __future__ import annotations

import pathlib

import numpy as np

from linmaml.closedform.mixture import easy_hard_mixture, maml_gain, simulate
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module

NAME = "task_landscape"
PAPER = ("L. Collins, A. Mokhtari, S. Shakkottai, 'How does the task landscape affect MAML performance?', "
         "arXiv 2010.14672 (2020): two-component mixture of easy and hard linear regression tasks")

SETTINGS = {
    "family": {"d": 5, "rho_easy": 1.0, "rho_hard": 0.1, "spread_easy": 1.0, "weight_hard": 0.5, "noise_std": 0.1},
    "spread_hard": [1e-3, 1e2],
    "distance": [0.03, 30.0],
    "finite_n": 100,
    "hardness": {"spread_hard": 0.01, "distance": 3.0, "rho_hard": [0.01, 0.9, 41], "n": [100, 20],
                 "monte_carlo": [0.03, 0.1, 0.3]},
    "monte_carlo_cells": [[0.01, 3.0], [1.0, 3.0], [0.01, 0.3], [10.0, 10.0]],
    "seed": 0,
}
FULL = {"grid": 41, "tasks": 20000}
QUICK = {"grid": 7, "tasks": 2000}


def _lr(regime, family) -> float:
    """Population: α = 1/ρ_E; n points: the easy tasks' best one-step rate 1/(ρ_E(1 + (d + 1)/n))."""
    if regime == "population":
        return 1.0 / family["rho_easy"]
    return 1.0 / (family["rho_easy"] * (1 + (family["d"] + 1) / regime))


def _mixture(regime, spread_hard, distance, rho_hard=None):
    family = dict(SETTINGS["family"])
    if rho_hard is not None:
        family["rho_hard"] = rho_hard
    n = 20 if regime == "population" else regime  # unused at the population level
    return easy_hard_mixture(spread_hard=spread_hard, distance=distance, n_support=n, **family)


def _exact(regime, spread_hard, distance, rho_hard=None) -> dict:
    mixture = _mixture(regime, spread_hard, distance, rho_hard)
    return maml_gain(mixture, _lr(regime, SETTINGS["family"]), population=(regime == "population"))


def _monte_carlo(regime, spread_hard, distance, tasks, seed, rho_hard=None) -> dict:
    exact = _exact(regime, spread_hard, distance, rho_hard)
    mc = simulate(_mixture(regime, spread_hard, distance, rho_hard), exact["W_maml"], exact["W_erm"],
                  _lr(regime, SETTINGS["family"]), tasks=tasks, population=(regime == "population"), seed=seed)
    return {"spread_hard": spread_hard, "distance": distance, "rho_hard": rho_hard,
            "exact_ratio": exact["excess_ratio"], "ratio": mc["excess_ratio"], "ratio_se": mc["excess_ratio_se"],
            "z": abs(mc["excess_ratio"] - exact["excess_ratio"]) / mc["excess_ratio_se"],
            "exact_gain": exact["gain"], "gain": mc["gain"], "gain_se": mc["gain_se"]}


def compute(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    cfg = SETTINGS
    spreads = np.geomspace(*cfg["spread_hard"], size["grid"])
    distances = np.geomspace(*cfg["distance"], size["grid"])
    numbers = {"spread_hard": [float(x) for x in spreads], "distance": [float(x) for x in distances]}
    seed = cfg["seed"]
    all_z = []
    for key, regime in (("population", "population"), ("finite_n", cfg["finite_n"])):
        ratio = np.empty((distances.size, spreads.size))
        gain = np.empty_like(ratio)
        for i, D in enumerate(distances):
            for j, R in enumerate(spreads):
                result = _exact(regime, float(R), float(D))
                ratio[i, j], gain[i, j] = result["excess_ratio"], result["gain"]
        cells = []
        for k, (R, D) in enumerate(cfg["monte_carlo_cells"]):
            cells.append(_monte_carlo(regime, R, D, size["tasks"], seed + 10 * k + (key == "finite_n")))
        all_z += [c["z"] for c in cells]
        inside = np.array([[D * D > R for R in spreads] for D in distances])
        numbers[key] = {
            "lr": _lr(regime, cfg["family"]), "n_support": None if regime == "population" else regime,
            "excess_ratio": ratio.tolist(), "gain": gain.tolist(), "monte_carlo": cells,
            "max_ratio": float(ratio.max()),
            "median_ratio_paper_region": float(np.median(ratio[inside])),
            "median_ratio_outside": float(np.median(ratio[~inside])) if (~inside).any() else None,
            "gain_spread_independent": float(np.max(np.ptp(gain, axis=1) / np.maximum(np.abs(gain).max(axis=1), 1e-300))),
        }
    h = cfg["hardness"]
    rho = np.geomspace(h["rho_hard"][0], h["rho_hard"][1], h["rho_hard"][2] if not quick else 7)
    curves = []
    for regime in ["population", *h["n"]]:
        values = [_exact(regime, h["spread_hard"], h["distance"], float(r))["excess_ratio"] for r in rho]
        points = [_monte_carlo(regime, h["spread_hard"], h["distance"], size["tasks"], seed + 500 + k, float(r))
                  for k, r in enumerate(h["monte_carlo"])]
        all_z += [p["z"] for p in points]
        curves.append({"regime": "population" if regime == "population" else f"n = {regime}",
                       "lr": _lr(regime, cfg["family"]), "excess_ratio": values, "monte_carlo": points})
    numbers["hardness"] = {"rho_hard_over_rho_easy": [float(r / cfg["family"]["rho_easy"]) for r in rho], "curves": curves}
    numbers["monte_carlo_max_z"] = float(max(all_z))
    numbers["monte_carlo_checks"] = len(all_z)
    return {"figure": NAME, "paper": PAPER, "settings": {**cfg, **size, "quick": quick}, "numbers": numbers}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    n, s = result["numbers"], result["settings"]
    spreads, distances = np.array(n["spread_hard"]), np.array(n["distance"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.0))
    x, y = np.log10(spreads), np.log10(distances)
    for ax, key, title in ((axes[0], "population", "(a) population step, α = 1/ρ_E (the paper's regime)"),
                           (axes[1], "finite_n", f"(b) one step on n = {s['finite_n']} noisy points, "
                                                 f"α = {n['finite_n']['lr']:.3f}")):
        ratio = np.log10(np.array(n[key]["excess_ratio"]))
        vmax = max(float(ratio.max()), 0.1)  # each panel its own scale: (b)'s range is 300× smaller
        image = ax.pcolormesh(x, y, ratio, cmap="magma", vmin=0.0, vmax=vmax, shading="nearest")
        levels = [lv for lv in (np.log10(1.1), np.log10(2), 1, 2, 3) if lv < ratio.max()]
        if levels:
            contours = ax.contour(x, y, ratio, levels=levels, colors="w", linewidths=0.7)
            ax.clabel(contours, fmt=lambda v: f"×{10 ** v:.3g}", fontsize=7)
        fig.colorbar(image, ax=ax, label="log10 E_ERM / E_MAML (excess post-adaptation loss)")
        ax.plot(x, 0.5 * x, color="c", lw=1.5, ls="--", label="D = √R_H: the paper's large-gain region is above")
        ax.set_ylim(y[0], y[-1])
        for cell in n[key]["monte_carlo"]:
            ax.plot(np.log10(cell["spread_hard"]), np.log10(cell["distance"]), "x", color="lime", ms=7, mew=2)
            ax.annotate(f"MC {cell['ratio']:.3g} ± {2 * cell['ratio_se']:.2g}\nexact {cell['exact_ratio']:.3g}",
                        (np.log10(cell["spread_hard"]), np.log10(cell["distance"])), xytext=(4, 4),
                        textcoords="offset points", fontsize=6.5, color="lime")
        ax.set_xlabel("log10 R_H (hard tasks' spread E‖w − w_H‖²)")
        ax.set_ylabel("log10 D (distance between the easy and hard centres)")
        ax.set_title(title, fontsize=9.5)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    h = n["hardness"]
    for k, curve in enumerate(h["curves"]):
        ax.plot(h["rho_hard_over_rho_easy"], curve["excess_ratio"], color=f"C{k}", label=f"{curve['regime']} (α = {curve['lr']:.3g})")
        ax.errorbar([p["rho_hard"] for p in curve["monte_carlo"]], [p["ratio"] for p in curve["monte_carlo"]],
                    yerr=[2 * p["ratio_se"] for p in curve["monte_carlo"]], fmt="x", color=f"C{k}", capsize=3)
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hardness ρ_H / ρ_E (1: no discrepancy)")
    ax.set_ylabel("E_ERM / E_MAML")
    ax.set_title(f"(c) R_H = {s['hardness']['spread_hard']}, D = {s['hardness']['distance']}: exact (lines), "
                 "Monte Carlo ± 2 SE (×)", fontsize=9.5)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    f = s["family"]
    fig.suptitle(f"Collins, Mokhtari & Shakkottai 2020: MAML's gain over ERM on easy (ρ_E = {f['rho_easy']}, R_E = "
                 f"{f['spread_easy']}) and hard (ρ_H = {f['rho_hard']}) tasks, d = {f['d']}, σ = {f['noise_std']}, "
                 f"π_H = {f['weight_hard']} (exact; Monte Carlo {s['tasks']} tasks per check)", fontsize=10)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw,
                          quick_help="a 7 × 7 grid and 2,000 Monte Carlo tasks per check (seconds)")

if __name__ == "__main__":
    main()
