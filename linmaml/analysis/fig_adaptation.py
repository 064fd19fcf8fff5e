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

Curves: mean query loss (and accuracy) after 0…10 inner steps over held-out tasks, with 95%
Student-t bands. Numbers (one-step ratio and accuracy gap with confidence intervals, final weights)
go to adaptation.json.

Run: ``python -m linmaml.analysis.fig_adaptation [--out DIR] [--quick]``; writes adaptation.png and adaptation.json.
"""
from __future__ import annotations

import pathlib


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
FULL = {"meta_iterations": 1000, "test_tasks": 2000}
QUICK = {"meta_iterations": 40, "test_tasks": 200}

#: What the default settings must show: the paper's figure 2 claims, with their bounds.
MAX_LOSS_RATIO = 0.25
MIN_ACCURACY_GAP_POINTS = 10.0


def families(settings: dict):
    """The regression and classification task families the settings describe."""
    from linmaml.analysis._common import classification_family, regression_family

    return regression_family(settings["regression"]), classification_family(settings["classification"])


def models(settings: dict):
    """{"regression": [Shallow, Deep], "classification": [LogR, LogR+LinNet]} as LinearChains."""
    from linmaml.simulator import deep, linnet, logr, shallow

    r, c = settings["regression"], settings["classification"]
    return {
        "regression": [shallow(r["d_in"], r["d_out"]), deep(r["d_in"], r["d_out"], r["deep_widths"])],
        "classification": [logr(c["d_in"]), linnet(logr(c["d_in"]), c["linnet_widths"])],
    }


def _summary(values, level) -> dict:
    from linmaml.simulator import mean_ci

    mean, half = mean_ci(values, level)
    return {"mean": float(mean), "ci95": float(half)}


def compute(quick: bool = False) -> dict:
    """Meta-train the four models, evaluate them on held-out tasks; every number the figure draws."""
    from linmaml.simulator import mean_ci, meta_train, per_task_curves, ratio_of_means_ci

    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    level = cfg["ci_level"]
    fams = dict(zip(("regression", "classification"), families(cfg)))
    numbers, arrays = {}, {}
    for problem, chains in models(cfg).items():
        family = fams[problem]
        test_tasks = family.sample(cfg["test_tasks"], cfg["test_seed"])
        curves, per_task, finals, meta_losses = [], {}, {}, {}
        for chain in chains:
            run = meta_train(chain, family, lr=cfg["inner_lr"], steps=cfg["inner_steps_meta_training"],
                             meta_steps=cfg["meta_iterations"], meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"],
                             optimizer=cfg["meta_optimizer"], first_order=cfg["first_order"],
                             init_scale=cfg["init_scale"], seed=cfg["seed"])
            values = per_task_curves(chain, run.weights_at(), test_tasks, cfg["inner_lr"], cfg["eval_inner_steps"])
            per_task[chain.name] = values
            curve = {"name": chain.name, "steps": list(range(cfg["eval_inner_steps"] + 1))}
            for key, table in values.items():
                mean, half = mean_ci(table, level, axis=1)
                curve[f"{key}_mean"], curve[f"{key}_ci"] = mean.tolist(), half.tolist()
            curves.append(curve)
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
    numbers["criteria"] = {
        "deep_over_shallow_one_step_query_loss": {"value": ratio, "ci95": ratio_ci, "required": f"<= {MAX_LOSS_RATIO}",
                                                  "met": bool(ratio <= MAX_LOSS_RATIO)},
        "linnet_minus_logr_one_step_accuracy_points": {
            "value": gap_summary["mean"], "ci95": gap_summary["ci95"],
            "required": f">= {MIN_ACCURACY_GAP_POINTS}", "met": bool(gap_summary["mean"] >= MIN_ACCURACY_GAP_POINTS)},
    }
    settings = dict(cfg, models={k: [{"name": c.name, "sizes": list(c.sizes), "loss": c.loss,
                                      "adapt_layers": list(c.adapt_layers)} for c in v]
                                 for k, v in models(cfg).items()},
                    evaluation="fresh held-out tasks from family.sample(test_tasks, test_seed); the same tasks "
                               "for both models of a pair; plain GD inner steps with inner_lr on every layer")
    return {"figure": NAME, "settings": settings, "numbers": numbers, "_arrays": arrays}


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linmaml.plots.figure import save_figure
    from linmaml.plots.curves import adaptation_panel

    num, cfg = result["numbers"], result["settings"]
    fig, (ax_reg, ax_loss, ax_acc) = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = ["tab:blue", "tab:red"]
    adaptation_panel(ax_reg, num["regression"]["curves"], "loss", colors=colors, logy=True)
    ideal = num["regression"]["ideal_preconditioned_step"]["query_loss_at_optimum"]
    ax_reg.axhline(ideal, color="k", ls="--", lw=1, label="best one-step preconditioner (theory)")
    one = num["regression"]["one_step"]["deep_over_shallow"]
    ax_reg.set_title(f"(a) regression: after 1 step Deep/Shallow = {one['ratio']:.2f} ± {one['ci95']:.2f}", fontsize=10)
    ax_reg.set_ylabel("query loss (held-out tasks)")
    ax_reg.legend(fontsize=8)

    adaptation_panel(ax_loss, num["classification"]["curves"], "loss", colors=colors)
    ax_loss.set_ylabel("query cross-entropy (held-out tasks)")
    ax_loss.set_title("(b) classification: loss", fontsize=10)
    ax_loss.legend(fontsize=8)

    adaptation_panel(ax_acc, num["classification"]["curves"], "accuracy", colors=colors, percent=True)
    gap = num["classification"]["one_step"]["accuracy_gap_points"]
    ax_acc.set_ylabel("query accuracy (%)")
    ax_acc.set_title(f"(c) accuracy: after 1 step LinNet − LogR = {gap['mean']:.1f} ± {gap['ci95']:.1f} points",
                     fontsize=10)
    ax_acc.legend(fontsize=8)
    fig.suptitle(f"MAML-trained with the same inner lr α={cfg['inner_lr']} and {cfg['meta_iterations']} "
                 f"meta-iterations; mean and {int(100 * cfg['ci_level'])}% CI over {cfg['test_tasks']} held-out tasks",
                 fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def run(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Compute, draw ``<out_dir>/adaptation.png`` and write ``<out_dir>/adaptation.json``; return the JSON's dict."""
    from linmaml.plots.figure import run_figure

    return run_figure(NAME, compute, draw, out_dir, quick)


def main(argv=None) -> None:
    from linmaml.plots.figure import figure_main

    record = figure_main(NAME, __doc__, run, argv, quick_help="short meta-training, fewer test tasks (a few seconds)")
    crit = record["numbers"]["criteria"]
    for key, value in crit.items():
        print(f"  {key}: {value['value']:.3f} ± {value['ci95']:.3f} (required {value['required']}: "
              f"{'met' if value['met'] else 'NOT met'})")


if __name__ == "__main__":
    main()
