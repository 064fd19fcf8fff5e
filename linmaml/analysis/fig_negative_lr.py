"""Negative meta-training rates (Bernacchia 2021): with few tasks of few noisy points, the inner
learning rate that is best for *meta-training* can be negative while the test rate is positive.

A linear regression family (d = 5, task spread Ω = 0.05·I around a zero mean, σ = 1, 5 support and
5 query points). For each training rate, MAML is meta-trained *exactly* on ``n_tasks`` sampled
tasks (the least-squares MAML initialisation, :func:`linmaml.closedform.gaussian_lr.maml_trained_init`),
and that initialisation is scored by its exact expected test loss after one inner step at the
optimal positive test rate (:func:`linmaml.closedform.gaussian.expected_post_adaptation_loss`).
Only the choice of training tasks is random (the same draws for every rate), so the differences
between rates are paired: the figure shows each rate's mean test loss (a) and its gap to the best
rate with the paired 95 % interval (b) — the comparison the claim is about. With infinitely many
tasks every rate reaches the same loss (the MAML optimum is the task mean at every rate): the effect
is one of finitely many tasks. :mod:`linmaml.analysis.fig_bernacchia` and
:mod:`linmaml.analysis.fig_bernacchia_phase` show the same effect at Bernacchia's own settings.

Run: ``python -m linmaml.analysis.fig_negative_lr [--out DIR] [--quick]``; writes negative_lr.png
and negative_lr.json.
"""
from __future__ import annotations

import pathlib

from linmaml.closedform.gaussian_lr import negative_lr_table
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module
from linmaml.tasks import RegressionFamily

NAME = "negative_lr"

SETTINGS = {
    "family": {"d_in": 5, "d_out": 1, "task_mean": 0.0, "task_cov": 0.05, "x_cov": 1.0, "noise_std": 1.0,
               "n_support": 5, "n_query": 5},
    "n_tasks": 10,
    "lr_train": [-1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5],
    "lr_test": "optimal at the task mean",
    "seed": 0,
}
FULL = {"repeats": 400}
QUICK = {"repeats": 40}


def family(settings: dict):
    f = settings["family"]
    return RegressionFamily(f["d_in"], f["d_out"], task_mean=f["task_mean"], task_cov=f["task_cov"],
                            x_cov=f["x_cov"], noise_std=f["noise_std"], n_support=f["n_support"],
                            n_query=f["n_query"])


def compute(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    table = negative_lr_table(family(SETTINGS), SETTINGS["lr_train"], n_tasks=SETTINGS["n_tasks"],
                              repeats=size["repeats"], seed=SETTINGS["seed"])
    rates, losses = table["lr_train"], table["test_loss"]
    zero = rates.index(0.0)
    numbers = {
        **table,
        "gap_of_rate_zero_in_paired_se": (losses[zero] - min(losses)) / table["gap_se"][zero]
        if table["gap_se"][zero] > 0 else 0.0,
    }
    return {"figure": NAME, "settings": {**SETTINGS, **size, "quick": quick}, "numbers": numbers}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    n = result["numbers"]
    s = result["settings"]
    # Every rate is scored on the same draws of training tasks, so the claim (the best training rate
    # beats the others, rate 0 included) is about paired differences: panel (b) draws each rate's gap
    # to the best rate with its paired 95 % interval; unpaired per-rate error bars would overstate the
    # uncertainty of the comparison (the draws' common part cancels in the differences).
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.5, 4.2))
    ax.plot(n["lr_train"], n["test_loss"], marker="o", label="mean exact test loss over the draws")
    ax.axvline(0.0, color="0.6", lw=0.8)
    ax.axvline(n["best_lr_train"], color="C3", ls="--", lw=1, label=f"best training rate {n['best_lr_train']:g}")
    ax.axhline(n["infinite_tasks_loss"], color="0.3", ls=":", lw=1,
               label=f"infinitely many tasks: {n['infinite_tasks_loss']:.4f}")
    ax.set_xlabel("inner learning rate used for meta-training")
    ax.set_ylabel(f"exact test loss after one step at α = {n['lr_test']:.3f}")
    ax.set_title(f"(a) MAML trained on {s['n_tasks']} tasks of {s['family']['n_support']} noisy points "
                 f"({s['repeats']} draws)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    best = n["test_loss"][n["lr_train"].index(n["best_lr_train"])]
    gaps = [loss - best for loss in n["test_loss"]]
    half = [1.96 * se for se in n["gap_se"]]
    ax2.errorbar(n["lr_train"], gaps, yerr=half, marker="o", capsize=3, color="C1",
                 label="gap to the best rate, paired 95 % CI (same draws)")
    ax2.axhline(0.0, color="0.3", lw=0.8)
    ax2.axvline(0.0, color="0.6", lw=0.8)
    ax2.set_xlabel("inner learning rate used for meta-training")
    ax2.set_ylabel("test loss − test loss at the best rate")
    ax2.set_title(f"(b) paired: rate 0 is {n['gap_of_rate_zero_in_paired_se']:.1f} paired SE above the best",
                  fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw, quick_help="40 draws instead of 400 (a second)")

if __name__ == "__main__":
    main()
