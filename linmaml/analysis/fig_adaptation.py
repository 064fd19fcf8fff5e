"""Figure 2: held-out adaptation curves — Shallow vs Deep on regression, LogR vs LogR+LinNet on
classification — all meta-trained by MAML with the same small inner learning rate and the same
number of meta-iterations.

Same capacity, different depth: each pair represents exactly the same set of linear maps. With a
small inner learning rate α a shallow model can only move α·G in one step, so its MAML optimum is
(close to) the mean task and one step barely helps. The deep model's upper layers act as a learned
preconditioner P on the end-to-end map (vec ΔW_e = −α P vec G + O(α²)), and meta-training grows α·P
to the size of the best step. For classification, accuracy is scale-invariant, so what matters is
whether one step can turn the decision boundary: with a non-zero task mean and a large spread, LogR
settles near the mean task's direction and its small step cannot turn it, while LogR+LinNet (linear
layers appended to the logit) learns a large isotropic step.

Curves: mean query loss (and accuracy) after 0…10 inner steps over held-out tasks (seed 0), with 95%
Student-t bands. The one-step claims come from ``len(seeds)`` training seeds (Adam with a cosine
schedule to 0 over the meta-iterations; the loss at ``snapshot_fraction`` of it is reported for
convergence): regression by the exact conditional query loss ½‖W′ − W_τ‖²_Σ + ½σ² of every seed's
adapted map on the same ``exact_tasks`` fresh tasks (``simulator.held_out``; paired ratios with
intervals over tasks and seeds, and the fraction of the gain from Shallow's step α·G to the best linear
one-step map captured — for this isotropic family the best linear map is the best scalar step c*·I);
classification, which has no simple exact conditional loss, on the same ``test_tasks`` tasks with
``classification_eval_query`` query points each, seed i of LinNet paired with seed i of LogR. Final
weights and every number go to adaptation.json.

Run: ``python -m linmaml.analysis.fig_adaptation [--out DIR] [--quick]``; writes adaptation.png and adaptation.json.
"""
from __future__ import annotations

import pathlib

import numpy as np

from linmaml.analysis._common import classification_family, convergence, regression_family
from linmaml.closedform import gaussian_lr as glr
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.curves import adaptation_panel
from linmaml.plots.figure import figure_module
from linmaml.simulator import deep, linnet, logr, mean_ci, meta_train, per_task_curves, ratio_of_means_ci, shallow
from linmaml.simulator.held_out import (AdaptationCurve, adapted_end_to_end, paired_exact_losses,
                                        seed_gain_summary, seed_ratio_summary)


NAME = "adaptation"

SETTINGS = {
    "inner_lr": 0.05,
    "inner_steps_meta_training": 1,
    "meta_optimizer": "adam",
    "meta_lr": 0.03,
    "meta_batch": 32,
    "first_order": False,
    "init_scale": 1.0,
    "eval_inner_steps": 10,
    "seed": 0,
    "seeds": [0, 1, 2],
    "schedule": "cosine",
    "snapshot_fraction": 0.9,
    "convergence_tolerance": 0.01,
    "classification_eval_query": 500,
    "test_seed": 20210413,
    "ci_level": 0.95,
    "regression": {
        "d_in": 4, "d_out": 1, "task_mean": 1.0, "task_var": 1.0, "x_var": 1.0, "noise_std": 0.1,
        "n_support": 40, "n_query": 40, "deep_widths": [8],
    },
    "classification": {
        "d_in": 5, "task_mean": [1.0, 0.0, 0.0, 0.0, 0.0], "task_var": 1.0, "x_var": 1.0, "flip": 0.0,
        "n_support": 20, "n_query": 50, "linnet_widths": [8, 8],
    },
}
FULL = {"meta_iterations": 1000, "test_tasks": 2000, "exact_tasks": 100_000}
QUICK = {"meta_iterations": 40, "test_tasks": 200, "exact_tasks": 2000, "seeds": [0, 1]}

#: What the default settings must show: the paper's figure 2 claims, with their bounds.
MAX_LOSS_RATIO = 0.25
MIN_ACCURACY_GAP_POINTS = 10.0


def families(settings: dict):
    """The regression and classification task families the settings describe."""
    return regression_family(settings["regression"]), classification_family(settings["classification"])


def models(settings: dict):
    """{"regression": [Shallow, Deep], "classification": [LogR, LogR+LinNet]} as LinearChains."""
    r, c = settings["regression"], settings["classification"]
    return {
        "regression": [shallow(r["d_in"], r["d_out"]), deep(r["d_in"], r["d_out"], r["deep_widths"])],
        "classification": [logr(c["d_in"]), linnet(logr(c["d_in"]), c["linnet_widths"])],
    }


def _summary(values, level) -> dict:
    mean, half = mean_ci(values, level)
    return {"mean": float(mean), "ci95": float(half)}


def compute(quick: bool = False) -> dict:
    """Meta-train the four models, evaluate them on held-out tasks; every number the figure draws."""
    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    level = cfg["ci_level"]
    fams = dict(zip(("regression", "classification"), families(cfg)))
    numbers, arrays, trained = {}, {}, {}
    for problem, chains in models(cfg).items():
        family = fams[problem]
        test_tasks = family.sample(cfg["test_tasks"], cfg["test_seed"])
        curves, per_task, finals, meta_losses = [], {}, {}, {}
        for chain in chains:
            runs = [meta_train(chain, family, lr=cfg["inner_lr"], steps=cfg["inner_steps_meta_training"],
                               meta_steps=cfg["meta_iterations"], meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"],
                               optimizer=cfg["meta_optimizer"], first_order=cfg["first_order"],
                               init_scale=cfg["init_scale"], seed=seed, schedule=cfg["schedule"])
                    for seed in cfg["seeds"]]
            trained.setdefault(problem, {})[chain.name] = (chain, runs)
            run = runs[cfg["seeds"].index(cfg["seed"])]
            values = per_task_curves(chain, run.weights_at(), test_tasks, cfg["inner_lr"], cfg["eval_inner_steps"])
            per_task[chain.name] = values
            curves.append(AdaptationCurve.from_per_task(chain.name, values, level).to_dict(sizes=False))
            finals[chain.name] = {
                "sizes": list(chain.sizes),
                "weights": [W.tolist() for W in run.weights_at()],
                "alpha_P_eigenvalues": (cfg["inner_lr"] * run.preconditioner_eigenvalues[-1]).tolist(),
                "meta_seconds": round(run.seconds, 3),
            }
            meta_losses[chain.name] = run.meta_loss
        numbers[problem] = {"curves": curves, "models": finals,
                            "final_meta_loss_last50": {k: float(v[-50:].mean()) for k, v in meta_losses.items()}}
        arrays[problem] = {"per_task": per_task, "meta_loss": meta_losses}

    shallow_name, deep_name = (c.name for c in models(cfg)["regression"])
    logr_name, linnet_name = (c.name for c in models(cfg)["classification"])
    reg, cls = arrays["regression"]["per_task"], arrays["classification"]["per_task"]
    ratio, ratio_ci = ratio_of_means_ci(reg[deep_name]["loss"][1], reg[shallow_name]["loss"][1], level)
    gap = 100 * (cls[linnet_name]["accuracy"][1] - cls[logr_name]["accuracy"][1])
    gap_summary = _summary(gap, level)
    numbers["regression"]["one_step"] = {
        "shallow_query_loss": _summary(reg[shallow_name]["loss"][1], level),
        "deep_query_loss": _summary(reg[deep_name]["loss"][1], level),
        "deep_over_shallow": {"ratio": ratio, "ci95": ratio_ci, "method": "delta method, paired tasks"},
    }
    numbers["regression"]["ideal_preconditioned_step"] = _ideal_step(cfg["regression"], cfg["inner_lr"])
    numbers["classification"]["one_step"] = {
        "logr_accuracy": _summary(cls[logr_name]["accuracy"][1], level),
        "linnet_accuracy": _summary(cls[linnet_name]["accuracy"][1], level),
        "accuracy_gap_points": {"mean": gap_summary["mean"], "ci95": gap_summary["ci95"],
                                "method": "paired per-task differences, Student t"},
        "logr_query_loss": _summary(cls[logr_name]["loss"][1], level),
        "linnet_query_loss": _summary(cls[linnet_name]["loss"][1], level),
    }
    numbers["regression"]["exact_paired"] = _exact_regression(cfg, fams["regression"], trained["regression"],
                                                              shallow_name, deep_name)
    numbers["classification"]["seeds_paired"] = _classification_seeds(cfg, trained["classification"], logr_name,
                                                                      linnet_name)
    exact_ratio = numbers["regression"]["exact_paired"]["deep_over_shallow"]
    seeds_gap = numbers["classification"]["seeds_paired"]["accuracy_gap_points"]
    numbers["criteria"] = {
        "deep_over_shallow_one_step_query_loss": {
            "value": exact_ratio["ratio"], "ci95": exact_ratio["ci95"], "required": f"<= {MAX_LOSS_RATIO}",
            "met": bool(exact_ratio["ratio"] <= MAX_LOSS_RATIO),
            "what": "exact conditional loss, paired tasks and seeds (regression.exact_paired)"},
        "linnet_minus_logr_one_step_accuracy_points": {
            "value": seeds_gap["mean"], "ci95": seeds_gap["ci95"],
            "required": f">= {MIN_ACCURACY_GAP_POINTS}", "met": bool(seeds_gap["mean"] >= MIN_ACCURACY_GAP_POINTS),
            "what": "same tasks, large query sets, seed-paired (classification.seeds_paired)"},
    }
    settings = dict(cfg, models={k: [{"name": c.name, "sizes": list(c.sizes), "loss": c.loss,
                                      "adapt_layers": list(c.adapt_layers)} for c in v]
                                 for k, v in models(cfg).items()},
                    evaluation="fresh held-out tasks from family.sample(test_tasks, test_seed); the same tasks "
                               "for both models of a pair; plain GD inner steps with inner_lr on every layer")
    return {"figure": NAME, "settings": settings, "numbers": numbers, "_arrays": arrays}


def _exact_regression(cfg: dict, family, trained: dict, shallow_name: str, deep_name: str) -> dict:
    """Every seed's adapted Shallow and Deep maps (final and at ``snapshot_fraction``) and the closed-form
    maps, scored by the exact conditional loss on the same tasks (module docstring)."""
    alpha, level = cfg["inner_lr"], cfg["ci_level"]
    M = family.task_mean
    _, Q = glr.optimal_one_step_map(family)
    d = len(Q)
    snapshot = int(cfg["snapshot_fraction"] * cfg["meta_iterations"])
    maps = {"shallow step": lambda b: glr.apply_one_step_map(b, alpha * np.eye(d), M),
            "best": lambda b: glr.apply_one_step_map(b, Q, M)}
    for name, (chain, runs) in trained.items():
        for i, run in enumerate(runs):
            for when, step in (("final", -1), ("snapshot", snapshot)):
                learner = chain.learner(run.weights_at(step), alpha, cfg["inner_steps_meta_training"])
                maps[(name, i, when)] = lambda b, L=learner: adapted_end_to_end(L, b)
    losses = paired_exact_losses(maps, family, cfg["exact_tasks"], seed=cfg["test_seed"] + 1, chunk=20_000)
    S = range(len(cfg["seeds"]))
    stack = {name: np.stack([losses[(name, i, "final")] for i in S]) for name in trained}
    shallow, deep = stack[shallow_name], stack[deep_name]
    base, best = losses["shallow step"], losses["best"]
    converged = {name: convergence([losses[(name, i, "final")] for i in S], [losses[(name, i, "snapshot")] for i in S],
                                   cfg["convergence_tolerance"]) for name in trained}
    return {"tasks": int(best.size), "seed": cfg["test_seed"] + 1,
            "best_linear_map_step": float(Q[0, 0]),
            "best_linear_map_loss_exact": glr.expected_one_step_map_loss(family, Q),
            "shallow_step_at_mean_loss_exact": glr.expected_one_step_map_loss(family, alpha * np.eye(d)),
            "mean_loss": {name: float(v.mean()) for name, v in stack.items()},
            "mean_loss_per_seed": {name: v.mean(axis=1).tolist() for name, v in stack.items()},
            "deep_over_shallow": seed_ratio_summary(deep, shallow, level),
            "deep_over_best_linear_map": seed_ratio_summary(deep, best, level),
            "shallow_over_best_linear_map": seed_ratio_summary(shallow, best, level),
            "deep_gain_captured_shallow_step_to_best": seed_gain_summary(deep, base, best, level),
            "convergence": converged}


def _classification_seeds(cfg: dict, trained: dict, logr_name: str, linnet_name: str) -> dict:
    """One-step accuracy and loss of every seed on the same tasks with large query sets; the LinNet −
    LogR accuracy gap paired by task and by seed, intervals over tasks and seeds combined."""
    level = cfg["ci_level"]
    family = classification_family(dict(cfg["classification"], n_query=cfg["classification_eval_query"]))
    tasks = family.sample(cfg["test_tasks"], cfg["test_seed"] + 1)
    acc, loss = {}, {}
    for name, (chain, runs) in trained.items():
        values = [per_task_curves(chain, run.weights_at(), tasks, cfg["inner_lr"], 1) for run in runs]
        acc[name] = 100 * np.stack([v["accuracy"][1] for v in values])
        loss[name] = np.stack([v["loss"][1] for v in values])

    def summary(per):  # (S, T)
        _, task_half = mean_ci(per.mean(axis=0), level)
        _, seed_half = mean_ci(per.mean(axis=1), level)
        return {"mean": float(per.mean()), "ci95": float(np.hypot(task_half, seed_half)),
                "ci95_tasks": float(task_half), "ci95_seeds": float(seed_half), "per_seed": per.mean(axis=1).tolist()}

    return {"tasks": len(tasks), "query_points": cfg["classification_eval_query"], "seed": cfg["test_seed"] + 1,
            "accuracy_percent": {name: summary(v) for name, v in acc.items()},
            "query_loss": {name: summary(v) for name, v in loss.items()},
            "accuracy_gap_points": summary(acc[linnet_name] - acc[logr_name])}


def _ideal_step(reg: dict, inner_lr: float) -> dict:
    """Reference: the best isotropic one-step preconditioner for this family (Σ = vI, Ω = ωI, from M).

    One step W' = M − c·G from the task mean leaves the error Δ(I − cS) + c·εᵀX/n with S = XᵀX/n,
    E S = vI, E S² = v²(n+d+1)/n·I, so the expected query loss is
    ½[ωv·d(1 − 2cv + c²v²(n+d+1)/n) + c²σ²v²·d/n] + ½σ² (times d_out), minimised at
    c* = ωn / (ωv(n+d+1) + σ²).
    """
    d, n, v, w, s2 = reg["d_in"], reg["n_support"], reg["x_var"], reg["task_var"], reg["noise_std"] ** 2
    c_star = w * n / (w * v * (n + d + 1) + s2)

    def loss(c):
        return reg["d_out"] * 0.5 * (w * v * d * (1 - 2 * c * v + c * c * v * v * (n + d + 1) / n)
                                     + c * c * s2 * v * v * d / n + s2)

    return {"alpha_P_optimal": c_star, "query_loss_at_optimum": loss(c_star),
            "query_loss_shallow_at_mean": loss(inner_lr), "query_loss_no_adaptation": loss(0.0)}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    num, cfg = result["numbers"], result["settings"]
    fig, (ax_reg, ax_loss, ax_acc) = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = ["tab:blue", "tab:red"]
    adaptation_panel(ax_reg, num["regression"]["curves"], "loss", colors=colors, logy=True)
    ideal = num["regression"]["ideal_preconditioned_step"]["query_loss_at_optimum"]
    ax_reg.axhline(ideal, color="k", ls="--", lw=1, label="best one-step preconditioner (theory)")
    one = num["regression"]["exact_paired"]["deep_over_shallow"]
    ax_reg.set_title(f"(a) regression: after 1 step Deep/Shallow = {one['ratio']:.3f} ± {one['ci95']:.3f} (exact)",
                     fontsize=10)
    ax_reg.set_ylabel("query loss (held-out tasks)")
    ax_reg.legend(fontsize=8)

    adaptation_panel(ax_loss, num["classification"]["curves"], "loss", colors=colors)
    ax_loss.set_ylabel("query cross-entropy (held-out tasks)")
    ax_loss.set_title("(b) classification: loss", fontsize=10)
    ax_loss.legend(fontsize=8)

    adaptation_panel(ax_acc, num["classification"]["curves"], "accuracy", colors=colors, percent=True)
    gap = num["classification"]["seeds_paired"]["accuracy_gap_points"]
    ax_acc.set_ylabel("query accuracy (%)")
    ax_acc.set_title(f"(c) accuracy: after 1 step LinNet − LogR = {gap['mean']:.1f} ± {gap['ci95']:.1f} points",
                     fontsize=10)
    ax_acc.legend(fontsize=8)
    fig.suptitle(f"MAML-trained with the same inner lr α={cfg['inner_lr']}, Adam + cosine over {cfg['meta_iterations']} "
                 f"meta-iterations; curves: seed 0, mean and {int(100 * cfg['ci_level'])}% CI over {cfg['test_tasks']} "
                 f"held-out tasks; titles: {len(cfg['seeds'])} seeds, paired (regression exact)", fontsize=10)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw, summary=plots_figure.criteria_summary,
                          quick_help="short meta-training, fewer test tasks (a few seconds)")

if __name__ == "__main__":
    main()
