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

Training and scoring (the paired, exact protocol): every model is meta-trained with ``len(seeds)``
seeds, Adam with a cosine schedule from ``meta_lr`` to 0 over ``meta_iterations`` (convergence is
reported: the exact loss at ``snapshot_fraction`` of the schedule against the final one), on tasks
whose query sets give the exact conditional loss (``analysis._common.ExactQuery``). The one-step
numbers are the exact conditional query loss ½‖W′ − W_τ‖²_Σ + ½σ² of every seed's adapted map on the
same ``exact_tasks`` fresh tasks (``simulator.held_out.paired_exact_losses``): paired ratios to Deep
(seed i with seed i) and to the best linear one-step map (for this isotropic family the best linear map
is the best scalar step c*·I, ``closedform.gaussian_lr.optimal_one_step_map``), with intervals over
tasks and seeds, and the fraction of the gain from plain MAML's step α·G (at the task mean) to the best
map captured. Panel (a)'s curves (0–10 steps) are seed 0 on ``test_tasks`` sampled query sets.

Run: ``python -m linmaml.analysis.fig_remedies [--out DIR] [--quick]``; writes remedies.png and remedies.json.
"""
from __future__ import annotations

import pathlib
import time

import numpy as np
import torch
from torch import nn

from linmaml import meta
from linmaml.analysis._common import ExactQuery, convergence, load_trajectory_step, regression_family
from linmaml.closedform import gaussian, gaussian_lr as glr
from linmaml.intervals import t_quantile
from linmaml.meta.losses import squared_loss
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.curves import adaptation_panel, running_mean
from linmaml.plots.figure import figure_module
from linmaml.simulator import deep, implicit_preconditioner, meta_train, per_task_curves, shallow
from linmaml.simulator.held_out import (AdaptationCurve, adapted_end_to_end, learner_curves, paired_exact_losses,
                                        seed_gain_summary, seed_ratio_summary)

from linmaml.errors import ArgumentError

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
    "seeds": [0, 1, 2],
    "schedule": "cosine",
    "snapshot_fraction": 0.9,
    "convergence_tolerance": 0.01,
    "test_seed": 20210413,
    "ci_level": 0.95,
    "family": {"d_in": 4, "d_out": 1, "task_mean": 1.0, "task_var": 1.0, "x_var": 1.0, "noise_std": 0.1,
               "n_support": 40, "n_query": 40},
    "deep_widths": [8],
    "kfo": {"psd": True, "hidden_layers": 0},
    "linnet": {"layers": 2, "width": None},
}
FULL = {"meta_iterations": 400, "test_tasks": 2000, "exact_tasks": 100_000}
QUICK = {"meta_iterations": 20, "test_tasks": 200, "exact_tasks": 2000}

#: What the figure must show: remedies within 1.5x of Deep, plain MAML far above (3x here).
MAX_REMEDY_OVER_DEEP = 1.5
MIN_PLAIN_OVER_DEEP = 3.0

LABELS = {"plain": "Shallow, MAML", "kfo": "Shallow, MAML+KFO", "linnet": "Shallow, MAML+LinNet", "deep": "Deep, MAML"}


def family(settings: dict):
    return regression_family(settings["family"])


def _learner(kind: str, cfg: dict, start):
    """A linmaml.meta learner around a bias-free float64 linear map initialised to ``start``."""
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
    raise ArgumentError("kind", f"expected plain, kfo or linnet, got {kind!r}")


def _effective_step(kind: str, learner, alpha: float) -> list[float]:
    """Eigenvalues of the learned one-step map α·P on vec W_e (sorted)."""
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
    raise ArgumentError("kind", f"expected plain, kfo or linnet, got {kind!r}")


def _parameters(kind: str, learner) -> dict:
    """The meta-learned parameters as nested lists (for the JSON, and for checking it)."""
    if kind == "plain":
        return {"W": learner.model.weight.detach().tolist()}
    if kind == "kfo":
        left, right = learner.transform.preconditioners("weight")
        return {"W": learner.model.weight.detach().tolist(), "LtL": left.detach().tolist(), "RtR": right.detach().tolist()}
    chain = [learner.model.model.weight] + [m.weight for m in learner.model.linear]
    return {"chain": [W.detach().tolist() for W in chain]}


def _exact_paired(cfg: dict, fam, learners: dict) -> dict:
    """Every seed's final and snapshot adapted maps, and the references, scored on the same tasks by
    the exact conditional loss; ratios, gain captured and convergence (module docstring)."""
    alpha, level = cfg["inner_lr"], cfg["ci_level"]
    M = fam.task_mean
    _, Q = glr.optimal_one_step_map(fam)
    maps = {"plain step alpha*G from the task mean": lambda b: glr.apply_one_step_map(b, alpha * np.eye(len(Q)), M),
            "best linear one-step map": lambda b: glr.apply_one_step_map(b, Q, M)}
    for kind, pairs in learners.items():
        for i, (final, early) in enumerate(pairs):
            maps[(kind, i)] = lambda b, L=final: adapted_end_to_end(L, b)
            maps[(kind, i, "snapshot")] = lambda b, L=early: adapted_end_to_end(L, b)
    losses = paired_exact_losses(maps, fam, cfg["exact_tasks"], seed=cfg["test_seed"] + 1, chunk=20_000)
    S = range(len(cfg["seeds"]))
    base, best = losses["plain step alpha*G from the task mean"], losses["best linear one-step map"]
    deep = np.stack([losses[("deep", i)] for i in S])
    out = {"tasks": int(best.size), "seed": cfg["test_seed"] + 1,
           "best_linear_map_is_scalar": bool(np.allclose(Q, Q[0, 0] * np.eye(len(Q)), rtol=1e-10)),
           "best_linear_map_step": float(Q[0, 0]),
           "best_linear_map_loss_exact": glr.expected_one_step_map_loss(fam, Q),
           "plain_step_loss_exact": glr.expected_one_step_map_loss(fam, alpha * np.eye(len(Q))),
           "models": {}}
    for kind in learners:
        L = np.stack([losses[(kind, i)] for i in S])
        early = np.stack([losses[(kind, i, "snapshot")] for i in S])
        mean, se_seeds = L.mean(), L.mean(axis=1).std(ddof=1) / np.sqrt(len(S))
        out["models"][kind] = {
            "mean_loss": float(mean), "mean_loss_per_seed": L.mean(axis=1).tolist(),
            "mean_loss_ci95": float(np.hypot(stats_t(len(S)) * se_seeds,
                                             stats_t(L.shape[1]) * L.mean(axis=0).std(ddof=1) / np.sqrt(L.shape[1]))),
            "over_deep": seed_ratio_summary(L, deep, level) if kind != "deep" else None,
            "over_best_linear_map": seed_ratio_summary(L, best, level),
            "gain_captured_plain_to_best": seed_gain_summary(L, base, best, level),
            "convergence": convergence(L, early, cfg["convergence_tolerance"]),
        }
    return out


def stats_t(n: int) -> float:
    """The 0.975 Student-t quantile with n − 1 degrees of freedom."""
    return t_quantile(n - 1, 0.95)


def compute(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    fam = family(cfg)
    f, alpha = cfg["family"], cfg["inner_lr"]
    tasks = fam.sample(cfg["test_tasks"], cfg["test_seed"])

    per_task, meta_losses, steps_eig, seconds, params = {}, {}, {}, {}, {}
    learners = {k: [] for k in ("plain", "kfo", "linnet", "deep")}  # per seed: (final, snapshot) learners
    snapshot = int(cfg["snapshot_fraction"] * cfg["meta_iterations"])
    budget = dict(meta_steps=cfg["meta_iterations"], meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"],
                  optimizer=cfg["meta_optimizer"], schedule=cfg["schedule"])
    for seed in cfg["seeds"]:
        seed_start = shallow(f["d_in"], f["d_out"]).init(
            np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0]), cfg["init_scale"])[0]
        for kind in ("plain", "kfo", "linnet"):
            began = time.perf_counter()
            learner = _learner(kind, cfg, seed_start)
            run = meta_train(learner, ExactQuery(fam), seed=seed, loss="squared", **budget)
            early = _learner(kind, cfg, seed_start)
            load_trajectory_step(early, run, snapshot)
            learners[kind].append((learner, early))
            if seed == cfg["seed"]:
                meta_losses[kind] = run.meta_loss
                per_task[kind] = learner_curves(learner, tasks, squared_loss, cfg["eval_inner_steps"])["loss"]
                steps_eig[kind] = _effective_step(kind, learner, alpha)
                params[kind] = _parameters(kind, learner)
                seconds[kind] = round(time.perf_counter() - began, 3)
        began = time.perf_counter()
        chain = deep(f["d_in"], f["d_out"], cfg["deep_widths"])
        run = meta_train(chain, ExactQuery(fam), lr=alpha, steps=cfg["inner_steps_meta_training"],
                         init_scale=cfg["init_scale"], seed=seed, **budget)
        learners["deep"].append((run.learner, chain.learner(run.weights_at(snapshot), alpha, 1)))
        if seed == cfg["seed"]:
            per_task["deep"] = per_task_curves(chain, run.weights_at(), tasks, alpha, cfg["eval_inner_steps"])["loss"]
            meta_losses["deep"] = run.meta_loss
            steps_eig["deep"] = (alpha * run.preconditioner_eigenvalues[-1]).tolist()
            params["deep"] = {"chain": [W.tolist() for W in run.weights_at()]}
            seconds["deep"] = round(time.perf_counter() - began, 3)
    exact = _exact_paired(cfg, fam, learners)

    level = cfg["ci_level"]
    curves, one_step, ratios = [], {}, {}
    for kind in ("plain", "kfo", "linnet", "deep"):
        curve = AdaptationCurve.from_per_task(LABELS[kind], {"loss": per_task[kind]}, level)
        curves.append(curve.to_dict(sizes=False))
        one_step[kind] = {"mean": float(curve.loss_mean[1]), "ci95": float(curve.loss_ci[1])}
        ratios[kind] = {"ratio": exact["models"][kind]["over_deep"]["ratio"] if kind != "deep" else 1.0,
                        "ci95": exact["models"][kind]["over_deep"]["ci95"] if kind != "deep" else 0.0}

    M = np.asarray(fam.task_mean)
    c_star = float(gaussian.optimal_inner_lr(M, fam, 1))
    numbers = {
        "curves": curves,
        "one_step_query_loss": one_step,
        "one_step_query_loss_what": "seed 0, sampled query sets of the test_tasks (the curves of panel a)",
        "exact_paired": exact,
        "one_step_over_deep": {k: v for k, v in ratios.items() if k != "deep"},
        "one_step_over_deep_what": "exact paired ratio over seeds (exact_paired.models.*.over_deep)",
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
    }.items()}, evaluation="one-step numbers: exact conditional query loss of every seed's adapted map on the same "
                           "exact_tasks fresh tasks; ratios of means with delta-method (tasks) and Student-t (seeds) "
                           "intervals combined; curves: seed 0 on test_tasks sampled query sets",
        convergence="Adam, cosine schedule from meta_lr to 0 over meta_iterations; converged = exact loss at "
                    "snapshot_fraction of the schedule within convergence_tolerance (relative) of the final one")
    return {"figure": NAME, "settings": settings, "numbers": numbers, "_arrays": {"meta_loss": meta_losses}}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    num, cfg = result["numbers"], result["settings"]
    colors = ["tab:blue", "tab:green", "tab:orange", "tab:red"]
    fig, (ax_curve, ax_bar, ax_meta) = plt.subplots(1, 3, figsize=(15, 4.6))
    adaptation_panel(ax_curve, num["curves"], "loss", colors=colors, logy=True)
    ax_curve.set_ylabel("query loss (held-out tasks)")
    ax_curve.set_title("(a) held-out adaptation, same inner lr", fontsize=10)
    ax_curve.legend(fontsize=8)

    kinds = ["plain", "kfo", "linnet", "deep"]
    ex = num["exact_paired"]
    means = [ex["models"][k]["mean_loss"] for k in kinds]
    errs = [ex["models"][k]["mean_loss_ci95"] for k in kinds]
    # a linear axis from 0: bar heights are losses, so their ratios read off the picture
    ax_bar.bar(range(4), means, yerr=errs, color=colors, capsize=4)
    ax_bar.set_xticks(range(4), [LABELS[k].replace(", ", "\n") for k in kinds], fontsize=8)
    ax_bar.set_ylim(0, max(m + e for m, e in zip(means, errs)) * 1.25)
    ax_bar.axhline(ex["best_linear_map_loss_exact"], color="k", ls="--", lw=1,
                   label=f"best linear one-step map (= best scalar step c* = {ex['best_linear_map_step']:.3f})")
    ax_bar.axhline(0.5 * cfg["family"]["noise_std"] ** 2 * cfg["family"]["d_out"], color="0.5", ls=":", lw=1,
                   label="noise floor ½σ²")
    for i, k in enumerate(kinds[:3]):
        r = ex["models"][k]["over_deep"]
        ax_bar.text(i, means[i] + errs[i] + 0.02 * max(means) + (0.06 * max(means) if i == 2 else 0),
                    f"{r['ratio']:.3f} ± {r['ci95']:.3f}\n× Deep", ha="center", fontsize=7)
    ax_bar.set_ylabel("exact query loss after one step (linear axis)")
    ax_bar.set_title(f"(b) one step, exact, {ex['tasks']:,} paired tasks × {len(cfg['seeds'])} seeds", fontsize=10)
    ax_bar.legend(fontsize=7, loc="upper right")

    for kind, color in zip(kinds, colors):
        ax_meta.plot(running_mean(result["_arrays"]["meta_loss"][kind], 25), color=color, label=LABELS[kind])
    ax_meta.set_yscale("log")
    ax_meta.set_xlabel("meta-iteration")
    ax_meta.set_ylabel("MAML objective, exact query (running mean of 25)")
    ax_meta.set_title("(c) meta-training", fontsize=10)
    ax_meta.grid(alpha=0.3)
    ax_meta.legend(fontsize=8)
    fig.suptitle(f"Remedies for the shallow model: KFO and LinNet (inner lr α = {cfg['inner_lr']}, Adam + cosine over "
                 f"{cfg['meta_iterations']} meta-iterations, {len(cfg['seeds'])} seeds; curves: seed 0, "
                 f"{cfg['test_tasks']} held-out tasks)", fontsize=11)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw, summary=plots_figure.criteria_summary,
                          quick_help="short meta-training, fewer test tasks (a few seconds)")

if __name__ == "__main__":
    main()
