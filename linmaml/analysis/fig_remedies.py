"""The remedies figure: two remedies let the Shallow model adapt like the Deep one — a learned
Kronecker-factored meta-optimizer (MAML+KFO) and linear layers on its output (MAML+LinNet).

Regression family of figure 2 (isotropic Gaussian inputs, tasks y = W_τ x + ε around a non-zero
mean), the same small inner learning rate α and the same number of meta-iterations for every
model. Plain MAML on the Shallow model can only take the step α·G and stays near the mean task;
KFO learns U(G) = (LᵀL) G (RᵀR) and LinNet (x ↦ A₂A₁Wx, A₁, A₂ scalars here) learns an implicit
preconditioner, and both reach the one-step query loss of the Deep model, whose upper layer does
the same job (DESIGN.md). The shallow learners run through :mod:`linmaml.meta` (model-agnostic,
vmapped over the tasks of a meta-batch by ``linmaml.meta.engine.Engine``); the Deep
reference through :mod:`linmaml.simulator`.

Run: ``python -m linmaml.analysis.fig_remedies [--out DIR] [--quick]``; writes remedies.png and remedies.json.
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

NAME = "remedies"

SETTINGS = {
    "inner_lr": 0.05,
    "inner_steps_meta_training": 1,
    "meta_optimizer": "adam",
    "meta_lr": 0.03,
    "meta_batch": 32,
    "init_scale": 1.0,
    "eval_inner_steps": 10,
    "seed": 0,
    "test_seed": 20210413,
    "ci_level": 0.95,
    "family": {"d_in": 4, "d_out": 1, "task_mean": 1.0, "task_var": 1.0, "x_var": 1.0, "noise_std": 0.1,
               "n_support": 40, "n_query": 40},
    "deep_widths": [8],
    "kfo": {"psd": True, "hidden_layers": 0},
    "linnet": {"layers": 2, "width": None},
}
FULL = {"meta_iterations": 300, "test_tasks": 2000}
QUICK = {"meta_iterations": 20, "test_tasks": 200}

#: What the figure must show: remedies within 1.5x of Deep, plain MAML far above (3x here).
MAX_REMEDY_OVER_DEEP = 1.5
MIN_PLAIN_OVER_DEEP = 3.0

LABELS = {"plain": "Shallow, MAML", "kfo": "Shallow, MAML+KFO", "linnet": "Shallow, MAML+LinNet", "deep": "Deep, MAML"}


def family(settings: dict):
    from linmaml.analysis._common import regression_family

    return regression_family(settings["family"])


def _learner(kind: str, cfg: dict, start):
    """A linmaml.meta learner around a bias-free float64 linear map initialised to ``start``."""
    import torch
    from torch import nn

    from linmaml import meta

    f = cfg["family"]
    linear = nn.Linear(f["d_in"], f["d_out"], bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(start)
    if kind == "plain":
        return meta.MAML(linear, lr=cfg["inner_lr"], steps=cfg["inner_steps_meta_training"])
    if kind == "kfo":
        return meta.MAML(linear, lr=cfg["inner_lr"], steps=cfg["inner_steps_meta_training"], transform=meta.KFO(**cfg["kfo"]))
    if kind == "linnet":
        return meta.MAML(meta.LinNet(linear, **cfg["linnet"]), lr=cfg["inner_lr"], steps=cfg["inner_steps_meta_training"])
    raise ValueError(f"kind: expected plain, kfo or linnet, got {kind!r}")


def _effective_step(kind: str, learner, alpha: float) -> list[float]:
    """Eigenvalues of the learned one-step map α·P on vec W_e (sorted)."""
    import torch

    from linmaml.simulator import implicit_preconditioner

    with torch.no_grad():
        if kind == "plain":
            d = learner.model.weight.numel()
            return [alpha] * d
        if kind == "kfo":
            left, right = learner.transform.preconditioners("weight")
            P = torch.kron(right, left)  # vec(L G R) = (Rᵀ ⊗ L) vec G, both symmetric here
            return sorted((alpha * torch.linalg.eigvalsh(P)).tolist())
        if kind == "linnet":
            chain = [learner.model.model.weight] + [m.weight for m in learner.model.linear]
            return sorted((alpha * torch.linalg.eigvalsh(implicit_preconditioner(chain))).tolist())
    raise ValueError(kind)


def _parameters(kind: str, learner) -> dict:
    """The meta-learned parameters as nested lists (for the JSON, and for checking it)."""
    if kind == "plain":
        return {"W": learner.model.weight.detach().tolist()}
    if kind == "kfo":
        left, right = learner.transform.preconditioners("weight")
        return {"W": learner.model.weight.detach().tolist(), "LtL": left.detach().tolist(), "RtR": right.detach().tolist()}
    chain = [learner.model.model.weight] + [m.weight for m in learner.model.linear]
    return {"chain": [W.detach().tolist() for W in chain]}


def compute(quick: bool = False) -> dict:
    from linmaml.analysis._common import meta_learner_curves, squared_loss
    from linmaml.simulator import deep, mean_ci, meta_train, per_task_curves, ratio_of_means_ci, shallow

    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    fam = family(cfg)
    f, alpha = cfg["family"], cfg["inner_lr"]
    tasks = fam.sample(cfg["test_tasks"], cfg["test_seed"])
    init_rng = np.random.default_rng(np.random.SeedSequence(cfg["seed"]).spawn(2)[0])
    start = shallow(f["d_in"], f["d_out"]).init(init_rng, cfg["init_scale"])[0]

    per_task, meta_losses, steps_eig, seconds, params = {}, {}, {}, {}, {}
    for kind in ("plain", "kfo", "linnet"):
        began = time.perf_counter()
        learner = _learner(kind, cfg, start)
        meta_losses[kind] = meta_train(learner, fam, meta_steps=cfg["meta_iterations"], meta_batch=cfg["meta_batch"],
                                       meta_lr=cfg["meta_lr"], optimizer=cfg["meta_optimizer"], seed=cfg["seed"], loss="squared").meta_loss
        per_task[kind] = meta_learner_curves(learner, tasks, squared_loss, cfg["eval_inner_steps"])["loss"]
        steps_eig[kind] = _effective_step(kind, learner, alpha)
        params[kind] = _parameters(kind, learner)
        seconds[kind] = round(time.perf_counter() - began, 3)
    began = time.perf_counter()
    chain = deep(f["d_in"], f["d_out"], cfg["deep_widths"])
    run = meta_train(chain, fam, lr=alpha, steps=cfg["inner_steps_meta_training"], meta_steps=cfg["meta_iterations"],
                     meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"], optimizer=cfg["meta_optimizer"],
                     init_scale=cfg["init_scale"], seed=cfg["seed"])
    per_task["deep"] = per_task_curves(chain, run.weights_at(), tasks, alpha, cfg["eval_inner_steps"])["loss"]
    meta_losses["deep"] = run.meta_loss
    steps_eig["deep"] = (alpha * run.preconditioner_eigenvalues[-1]).tolist()
    params["deep"] = {"chain": [W.tolist() for W in run.weights_at()]}
    seconds["deep"] = round(time.perf_counter() - began, 3)

    level = cfg["ci_level"]
    curves, one_step, ratios = [], {}, {}
    for kind in ("plain", "kfo", "linnet", "deep"):
        mean, half = mean_ci(per_task[kind], level, axis=1)
        curves.append({"name": LABELS[kind], "steps": list(range(cfg["eval_inner_steps"] + 1)),
                       "loss_mean": mean.tolist(), "loss_ci": half.tolist()})
        one_step[kind] = {"mean": float(mean[1]), "ci95": float(half[1])}
        ratio, ratio_half = ratio_of_means_ci(per_task[kind][1], per_task["deep"][1], level)
        ratios[kind] = {"ratio": ratio, "ci95": ratio_half}
    from linmaml.closedform import gaussian

    M = np.asarray(fam.task_mean)
    c_star = float(gaussian.optimal_inner_lr(M, fam, 1))
    numbers = {
        "curves": curves,
        "one_step_query_loss": one_step,
        "one_step_over_deep": {k: v for k, v in ratios.items() if k != "deep"},
        "alpha_P_eigenvalues": steps_eig,
        "best_isotropic_step_c_star": c_star,
        "expected_one_step_loss_at_c_star": float(gaussian.expected_post_adaptation_loss(M, fam, c_star, 1)),
        "meta_loss_last50": {k: float(v[-50:].mean()) for k, v in meta_losses.items()},
        "final_parameters": params,
        "seconds_per_model": seconds,
        "criteria": {
            "kfo_over_deep": {"value": ratios["kfo"]["ratio"], "ci95": ratios["kfo"]["ci95"],
                              "required": f"<= {MAX_REMEDY_OVER_DEEP}", "met": bool(ratios["kfo"]["ratio"] <= MAX_REMEDY_OVER_DEEP)},
            "linnet_over_deep": {"value": ratios["linnet"]["ratio"], "ci95": ratios["linnet"]["ci95"],
                                 "required": f"<= {MAX_REMEDY_OVER_DEEP}",
                                 "met": bool(ratios["linnet"]["ratio"] <= MAX_REMEDY_OVER_DEEP)},
            "plain_over_deep": {"value": ratios["plain"]["ratio"], "ci95": ratios["plain"]["ci95"],
                                "required": f">= {MIN_PLAIN_OVER_DEEP}", "met": bool(ratios["plain"]["ratio"] >= MIN_PLAIN_OVER_DEEP)},
        },
    }
    settings = dict(cfg, models={LABELS[k]: v for k, v in {
        "plain": "linmaml.meta.MAML(Linear(d_in, d_out, bias=False)), transform Identity",
        "kfo": "linmaml.meta.MAML(Linear, transform=KFO(psd=True)): U(G) = (L^T L) G (R^T R)",
        "linnet": "linmaml.meta.MAML(LinNet(Linear, layers=2)): x -> A2 A1 W x, A_j identity-initialised",
        "deep": f"linmaml.simulator.deep(d_in, d_out, {cfg['deep_widths']}), all layers adapt",
    }.items()}, evaluation="the same held-out tasks for all models; plain GD inner steps of size inner_lr "
                           "(KFO: transformed steps); ratios by the delta method on paired tasks")
    return {"figure": NAME, "settings": settings, "numbers": numbers, "_arrays": {"meta_loss": meta_losses}}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linmaml.plots.figure import save_figure
    from linmaml.plots.curves import adaptation_panel, running_mean

    num, cfg = result["numbers"], result["settings"]
    colors = ["tab:blue", "tab:green", "tab:orange", "tab:red"]
    fig, (ax_curve, ax_bar, ax_meta) = plt.subplots(1, 3, figsize=(15, 4.6))
    adaptation_panel(ax_curve, num["curves"], "loss", colors=colors, logy=True)
    ax_curve.set_ylabel("query loss (held-out tasks)")
    ax_curve.set_title("(a) held-out adaptation, same inner lr", fontsize=10)
    ax_curve.legend(fontsize=8)

    kinds = ["plain", "kfo", "linnet", "deep"]
    means = [num["one_step_query_loss"][k]["mean"] for k in kinds]
    errs = [num["one_step_query_loss"][k]["ci95"] for k in kinds]
    ax_bar.bar(range(4), means, yerr=errs, color=colors, capsize=4)
    ax_bar.set_xticks(range(4), [LABELS[k].replace(", ", "\n") for k in kinds], fontsize=8)
    ax_bar.set_yscale("log")
    ax_bar.axhline(num["expected_one_step_loss_at_c_star"], color="k", ls="--", lw=1,
                   label="best isotropic step (theory)")
    for i, k in enumerate(kinds[:3]):
        r = num["one_step_over_deep"][k]
        ax_bar.text(i, means[i] * 1.08, f"{r['ratio']:.2f}× Deep", ha="center", fontsize=8)
    ax_bar.set_ylim(top=max(means) * 1.6)
    ax_bar.set_ylabel("query loss after one inner step")
    ax_bar.set_title("(b) after one step (mean, 95% CI)", fontsize=10)
    ax_bar.legend(fontsize=8)

    for kind, color in zip(kinds, colors):
        ax_meta.plot(running_mean(result["_arrays"]["meta_loss"][kind], 25), color=color, label=LABELS[kind])
    ax_meta.set_yscale("log")
    ax_meta.set_xlabel("meta-iteration")
    ax_meta.set_ylabel("MAML objective (running mean of 25)")
    ax_meta.set_title("(c) meta-training", fontsize=10)
    ax_meta.grid(alpha=0.3)
    ax_meta.legend(fontsize=8)
    fig.suptitle(f"Remedies for the shallow model: KFO and LinNet (inner lr α = {cfg['inner_lr']}, "
                 f"{cfg['meta_iterations']} meta-iterations each, {cfg['test_tasks']} held-out tasks)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def run(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Compute, draw ``<out_dir>/remedies.png`` and write ``<out_dir>/remedies.json``; return the JSON's dict."""
    from linmaml.plots.figure import run_figure

    return run_figure(NAME, compute, draw, out_dir, quick)


def main(argv=None) -> None:
    from linmaml.plots.figure import figure_main

    record = figure_main(NAME, __doc__, run, argv, quick_help="short meta-training, fewer test tasks (a few seconds)")
    for key, value in record["numbers"]["criteria"].items():
        print(f"  {key}: {value['value']:.3f} ± {value['ci95']:.3f} (required {value['required']}: "
              f"{'met' if value['met'] else 'NOT met'})")


if __name__ == "__main__":
    main()
