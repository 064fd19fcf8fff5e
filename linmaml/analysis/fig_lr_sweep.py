"""Learning-rate sweep: where depth matters, and where a tuned scalar step does as well.

Figure 2's families (regression: d = 4, Σ = I, Ω = I, task mean 1, σ = 0.1, n = 40; classification:
d = 5, task mean e₁, Ω = I, 20 support / 50 query points), and the one-step query loss (and
accuracy) after MAML meta-training as a function of the inner learning rate α, on a log grid
spanning two decades or more:

* Shallow, exactly: for one Gaussian family the MAML optimum of the shallow model is the task mean
  (``closedform.gaussian.maml_fixed_point``), and its expected one-step query loss there is
  ``closedform.gaussian.expected_post_adaptation_loss`` — an exact curve at every α, no training,
  with its minimum at ``optimal_inner_lr`` = c* (the best any scalar step can do);
* Deep (L = 2, 3) and Shallow + LinNet, meta-trained by ``linmaml.simulator.meta_train``;
* Shallow + Meta-SGD and Shallow + KFO, ``linmaml.meta`` learners meta-trained through the engine
  ``linmaml.meta.engine.Engine`` (``simulator.meta_train``; scored by ``linmaml.analysis._common``);
* classification: LogR, LogR + LinNet, LogR + Meta-SGD and LogR + KFO, all meta-trained (the
  logistic loss has no closed form).

Every trained model gets the same budget (meta-iterations, meta-batch, Adam's peak rate with a cosine
schedule to 0: the stated convergence criterion; the loss at ``snapshot_fraction`` of the schedule is
reported beside the final one) and ``len(seeds)`` training seeds. Regression is trained on tasks whose
query set gives the exact conditional loss (``analysis._common.ExactQuery``) and scored PAIRED: every
seed's adapted map and the closed-form maps (Shallow's step α·G and the best linear map, which for this
isotropic family is the best scalar step c*·I) on the same ``exact_tasks`` fresh tasks by the exact
conditional query loss (``simulator.held_out``), as ratios with intervals over tasks and seeds and as
the fraction of the gain from Shallow at α to the best map captured. Classification has no simple
exact conditional loss: its models are scored on the same ``test_tasks`` tasks with
``classification_eval_query`` query points each (paired, large query sets), mean over seeds with
intervals over tasks and seeds.

Depth's step floor (``closedform.depth_step``): for one output, one step of every layer of a depth-L
chain moves W_e along its own direction u by α·uᵀPu ≥ α·L·‖W_e‖^{2(L−1)/L} (L = 2: 2α‖W_e‖), balanced
or not. At W_e = M this forces a step above c* once α > c*/(L‖M‖^{2(L−1)/L}); the dashed curves of
panel (a) are the least loss of any linear step obeying that floor along M (``overshoot_loss_floor``),
what Deep at W_e = M pays with its α² terms ignored. The JSON records each trained Deep's actual step
along its W_e, the floor, and its imbalance ‖W₂ᵀW₂ − W₁W₁ᵀ‖/‖W₁W₁ᵀ‖ (trained nets are far from balanced,
so the balanced closed forms do not describe them; the floor holds for any weights).

Run: ``python -m linmaml.analysis.fig_lr_sweep [--out DIR] [--quick]``; writes lr_sweep.png and lr_sweep.json.
"""
from __future__ import annotations

import pathlib
import time

import numpy as np
import torch
from torch import nn

from linmaml import meta
from linmaml.analysis._common import (ExactQuery, classification_family, convergence, load_trajectory_step,
                                      regression_family)
from linmaml.closedform import depth_step, gaussian, gaussian_lr as glr
from linmaml.meta.losses import logistic_loss
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module
from linmaml.simulator import deep, linnet, logr, meta_train, shallow
from linmaml.simulator.held_out import (adapted_end_to_end, learner_curves, mean_ci, paired_exact_losses,
                                        seed_gain_summary, seed_ratio_summary)

NAME = "lr_sweep"

SETTINGS = {
    "inner_steps_meta_training": 1,
    "meta_optimizer": "adam",
    "meta_lr": 0.03,
    "meta_batch": 16,
    "init_scale": 1.0,
    "seeds": [0, 1, 2],
    "schedule": "cosine",
    "snapshot_fraction": 0.9,
    "convergence_tolerance": 0.01,
    "classification_eval_query": 500,
    "test_seed": 20210413,
    "ci_level": 0.95,
    "regression": {
        "d_in": 4, "d_out": 1, "task_mean": 1.0, "task_var": 1.0, "x_var": 1.0, "noise_std": 0.1,
        "n_support": 40, "n_query": 40,
    },
    "classification": {
        "d_in": 5, "task_mean": [1.0, 0.0, 0.0, 0.0, 0.0], "task_var": 1.0, "x_var": 1.0, "flip": 0.0,
        "n_support": 20, "n_query": 50,
    },
    "deep_widths": {"Deep L=2": [8], "Deep L=3": [8, 8]},
    "linnet_widths": [8, 8],
    "shallow_curve_points": 81,
}
FULL = {"meta_iterations": 200, "test_tasks": 1000, "exact_tasks": 100_000,
        "alphas": {"regression": [0.01, 0.04, 0.2, 1.0], "classification": [0.05, 0.3, 2.0, 8.0]}}
QUICK = {"meta_iterations": 6, "test_tasks": 60, "exact_tasks": 2000, "seeds": [0, 1],
         "alphas": {"regression": [0.01, 1.0], "classification": [0.05, 8.0]}}

MODELS = {
    "regression": ["Deep L=2", "Deep L=3", "Shallow+LinNet", "Shallow+Meta-SGD", "Shallow+KFO"],
    "classification": ["LogR", "LogR+LinNet", "LogR+Meta-SGD", "LogR+KFO"],
}
COLORS = {"Deep L=2": "tab:red", "Deep L=3": "tab:purple", "Shallow+LinNet": "tab:orange", "LogR+LinNet": "tab:orange",
          "Shallow+Meta-SGD": "tab:green", "LogR+Meta-SGD": "tab:green", "Shallow+KFO": "tab:brown",
          "LogR+KFO": "tab:brown", "LogR": "tab:blue"}


def families(cfg: dict):
    return {"regression": regression_family(cfg["regression"]),
            "classification": classification_family(cfg["classification"])}


def shallow_exact(family, alphas) -> dict:
    """The Shallow model's exact one-step query loss after meta-training, at every α: the expected
    loss at the MAML fixed point (the task mean for one Gaussian family), and the optimal α."""
    losses = [gaussian.expected_post_adaptation_loss(gaussian.maml_fixed_point(family, a, 1), family, a, 1)
              for a in alphas]
    M = np.asarray(family.task_mean)
    c_star = float(gaussian.optimal_inner_lr(M, family, 1))
    return {"alpha": [float(a) for a in alphas], "query_loss": [float(v) for v in losses],
            "optimal_alpha": c_star,
            "query_loss_at_optimal_alpha": float(gaussian.expected_post_adaptation_loss(M, family, c_star, 1)),
            "no_adaptation_loss": float(gaussian.expected_post_adaptation_loss(M, family, 0.0, 1))}


def _chain(label: str, cfg: dict, problem: str):
    r, c = cfg["regression"], cfg["classification"]
    if problem == "regression":
        if label in cfg["deep_widths"]:
            return deep(r["d_in"], r["d_out"], cfg["deep_widths"][label])
        return linnet(shallow(r["d_in"], r["d_out"]), cfg["linnet_widths"])
    return logr(c["d_in"]) if label == "LogR" else linnet(logr(c["d_in"]), cfg["linnet_widths"])


def _meta_learner(label: str, cfg: dict, problem: str, alpha: float, seed: int = 0):
    """Meta-SGD or KFO (``linmaml.meta``) on a bias-free float64 linear map, started like the chains."""
    f = cfg[problem]
    d_out = f.get("d_out", 1)
    base = shallow(f["d_in"], d_out) if problem == "regression" else logr(f["d_in"])
    start = base.init(np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0]), cfg["init_scale"])[0]
    linear = nn.Linear(f["d_in"], d_out, bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(start))
    transform = meta.MetaSGD() if label.endswith("Meta-SGD") else meta.KFO(psd=True)
    return meta.MAML(linear, lr=alpha, steps=cfg["inner_steps_meta_training"], transform=transform)


def train(label: str, cfg: dict, problem: str, family, alpha: float, seed: int) -> dict:
    """Meta-train one model at inner lr ``alpha`` with seed ``seed``: the trained learner, its twin at
    ``snapshot_fraction`` of the schedule, the meta-losses, and for chains the final weights."""
    budget = dict(meta_steps=cfg["meta_iterations"], meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"],
                  optimizer=cfg["meta_optimizer"], seed=seed, schedule=cfg["schedule"])
    tasks = ExactQuery(family) if problem == "regression" else family
    snapshot = int(cfg["snapshot_fraction"] * cfg["meta_iterations"])
    began = time.perf_counter()
    if "Meta-SGD" in label or "KFO" in label:
        learner = _meta_learner(label, cfg, problem, alpha, seed)
        run = meta_train(learner, tasks, loss="squared" if problem == "regression" else "logistic", **budget)
        early = _meta_learner(label, cfg, problem, alpha, seed)
        load_trajectory_step(early, run, snapshot)
        weights = None
    else:
        chain = _chain(label, cfg, problem)
        run = meta_train(chain, tasks, lr=alpha, steps=cfg["inner_steps_meta_training"], init_scale=cfg["init_scale"],
                         record_preconditioner=False, **budget)
        learner, early = run.learner, chain.learner(run.weights_at(snapshot), alpha, cfg["inner_steps_meta_training"])
        weights = [W.numpy() for W in run.weights_at()]
    return {"learner": learner, "snapshot": early, "meta_loss": np.asarray(run.meta_loss), "weights": weights,
            "seconds": time.perf_counter() - began}


def _imbalance(weights) -> float:
    """max over adjacent layers of ‖W_{j+1}ᵀW_{j+1} − W_jW_jᵀ‖_F / ‖W_jW_jᵀ‖_F (0 for balanced weights)."""
    return float(max(np.linalg.norm(B.T @ B - A @ A.T) / np.linalg.norm(A @ A.T) for A, B in zip(weights, weights[1:])))


def _regression_alpha(cfg: dict, family, alpha: float, runs: dict) -> dict:
    """Paired exact scoring at one α of every label's seeds against Shallow at α and the best map."""
    level = cfg["ci_level"]
    M = family.task_mean
    _, Q = glr.optimal_one_step_map(family)
    d = len(Q)
    maps = {"shallow": lambda b: glr.apply_one_step_map(b, alpha * np.eye(d), M),
            "best": lambda b: glr.apply_one_step_map(b, Q, M)}
    for label, seeds in runs.items():
        for i, r in enumerate(seeds):
            maps[(label, i)] = lambda b, L=r["learner"]: adapted_end_to_end(L, b)
            maps[(label, i, "snapshot")] = lambda b, L=r["snapshot"]: adapted_end_to_end(L, b)
    losses = paired_exact_losses(maps, family, cfg["exact_tasks"], seed=cfg["test_seed"] + 1, chunk=20_000)
    shallow, best = losses["shallow"], losses["best"]
    has_gain = bool(shallow.mean() > best.mean() * (1 + 1e-3))
    rows = {}
    for label, seeds in runs.items():
        S = range(len(seeds))
        L = np.stack([losses[(label, i)] for i in S])
        early = np.stack([losses[(label, i, "snapshot")] for i in S])
        over_best = seed_ratio_summary(L, best, level)
        row = {"alpha": alpha, "seconds": round(sum(r["seconds"] for r in seeds), 3),
               "meta_loss_last20": float(np.mean([r["meta_loss"][-20:].mean() for r in seeds])),
               "query_loss": {"mean": float(L.mean()), "ci95": over_best["ci95"] * float(best.mean()),
                              "per_seed": L.mean(axis=1).tolist(),
                              "what": "exact conditional loss, mean over seeds and exact_tasks paired tasks; ci95 "
                                      "from the ratio to the best map (tasks and seeds)"},
               "over_best_linear_map": over_best,
               "over_shallow_at_alpha": seed_ratio_summary(L, shallow, level),
               "gain_captured_shallow_to_best": seed_gain_summary(L, shallow, best, level) if has_gain else None,
               "convergence": convergence(L, early, cfg["convergence_tolerance"])}
        if seeds[0]["weights"] is not None and label.startswith("Deep"):
            depth = len(seeds[0]["weights"])
            steps, floors, imbalance, norms = [], [], [], []
            for r in seeds:
                W_e = r["weights"][0]
                for W in r["weights"][1:]:
                    W_e = W @ W_e
                steps.append(depth_step.step_along_map(r["weights"], alpha))
                floors.append(depth_step.step_floor(np.linalg.norm(W_e), alpha, depth))
                imbalance.append(_imbalance(r["weights"]))
                norms.append(float(np.linalg.norm(W_e)))
            row["depth_step"] = {"alpha_uPu_along_W_e": steps, "floor_alpha_L_norm": floors, "imbalance": imbalance,
                                 "end_to_end_norm": norms, "best_step_c_star": float(Q[0, 0])}
        rows[label] = row
    return {"rows": rows, "shallow_exact_paired_mean": float(shallow.mean()), "best_paired_mean": float(best.mean()),
            "tasks": int(best.size), "has_gain": has_gain}


def _classification_alpha(cfg: dict, runs: dict, tasks) -> dict:
    """Per label: per-task one-step loss and accuracy of each seed on the same tasks (large query sets)."""
    level = cfg["ci_level"]
    rows = {}
    for label, seeds in runs.items():
        values = {"loss": [], "accuracy": []}
        for r in seeds:
            out = learner_curves(r["learner"], tasks, logistic_loss, 1, accuracy=True)
            for key in values:
                values[key].append(out[key][1])
        row = {"seconds": round(sum(r["seconds"] for r in seeds), 3),
               "meta_loss_last20": float(np.mean([r["meta_loss"][-20:].mean() for r in seeds]))}
        for key, per in values.items():
            per = np.stack(per)  # (S, T)
            _, task_half = mean_ci(per.mean(axis=0), level)
            seed_means = per.mean(axis=1)
            _, seed_half = mean_ci(seed_means, level)
            row[f"query_{key}"] = {"mean": float(per.mean()), "ci95": float(np.hypot(task_half, seed_half)),
                                   "ci95_tasks": float(task_half), "ci95_seeds": float(seed_half),
                                   "per_seed": seed_means.tolist()}
        rows[label] = row
    return rows


def compute(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    fams = families(cfg)
    numbers = {}
    for problem, family in fams.items():
        alphas = cfg["alphas"][problem]
        table = {label: [] for label in MODELS[problem]}
        paired = []
        if problem == "classification":
            eval_family = classification_family(dict(cfg["classification"], n_query=cfg["classification_eval_query"]))
            tasks = eval_family.sample(cfg["test_tasks"], cfg["test_seed"])
        for alpha in alphas:
            runs = {label: [train(label, cfg, problem, family, alpha, seed) for seed in cfg["seeds"]]
                    for label in MODELS[problem]}
            if problem == "regression":
                scored = _regression_alpha(cfg, family, alpha, runs)
                paired.append({k: v for k, v in scored.items() if k != "rows"} | {"alpha": alpha})
                for label, row in scored["rows"].items():
                    table[label].append(row)
            else:
                for label, row in _classification_alpha(cfg, runs, tasks).items():
                    table[label].append(dict(row, alpha=alpha))
        numbers[problem] = {"models": table}
        if problem == "regression":
            grid = np.geomspace(min(alphas) / 2, max(alphas) * 2, cfg["shallow_curve_points"])
            exact = shallow_exact(family, grid)
            numbers[problem]["shallow_exact"] = exact
            numbers[problem]["shallow_exact_at_grid"] = shallow_exact(family, alphas)["query_loss"]
            numbers[problem]["paired_references"] = paired
            numbers[problem]["depth_step_floor"] = {
                label: {"depth": len(widths) + 1, "alpha": grid.tolist(),
                        "overshoot_loss_floor": [depth_step.overshoot_loss_floor(family, a, len(widths) + 1)
                                                 for a in grid],
                        "alpha_threshold": float(exact["optimal_alpha"] / ((len(widths) + 1) * np.linalg.norm(
                            family.task_mean) ** (2 * len(widths) / (len(widths) + 1))))}
                for label, widths in cfg["deep_widths"].items()}
            numbers[problem]["summary"] = _regression_summary(table, exact, numbers[problem]["shallow_exact_at_grid"],
                                                              alphas)
    settings = dict(cfg, evaluation=(
        "regression: every seed's adapted map after one inner step (the training step size alpha) on the same "
        "exact_tasks fresh tasks, exact conditional query loss, paired ratios (delta method over tasks, Student t "
        "over seeds); classification: the same test_tasks tasks with classification_eval_query query points each, "
        "mean over seeds, intervals over tasks and seeds combined"),
        convergence="Adam with a cosine schedule from meta_lr to 0 over meta_iterations; converged = the exact loss "
                    "at snapshot_fraction of the schedule within convergence_tolerance (relative) of the final one",
        shallow="exact: expected one-step query loss at the MAML fixed point (closedform.gaussian)")
    return {"figure": NAME, "settings": settings, "numbers": numbers}


def _regression_summary(table: dict, exact: dict, shallow_at_grid: list, alphas: list) -> dict:
    """Per α: each trained model's paired exact ratio to Shallow at that α and to the best map (the best
    scalar step c*, which is the best linear map here)."""
    best = exact["query_loss_at_optimal_alpha"]
    out = {"best_scalar_step_loss": best, "optimal_alpha": exact["optimal_alpha"], "per_alpha": []}
    for i, alpha in enumerate(alphas):
        entry = {"alpha": alpha, "shallow_exact": shallow_at_grid[i],
                 "shallow_over_best_scalar": shallow_at_grid[i] / best, "over_shallow_at_alpha": {},
                 "over_best_scalar": {}, "gain_captured": {}}
        for label, rows in table.items():
            r = rows[i]
            entry["over_shallow_at_alpha"][label] = {k: r["over_shallow_at_alpha"][k] for k in ("ratio", "ci95")}
            entry["over_best_scalar"][label] = {k: r["over_best_linear_map"][k] for k in ("ratio", "ci95")}
            g = r["gain_captured_shallow_to_best"]
            entry["gain_captured"][label] = None if g is None else {k: g[k] for k in ("fraction", "ci95")}
        out["per_alpha"].append(entry)
    return out


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    num, cfg = result["numbers"], result["settings"]
    fig, (ax_reg, ax_acc, ax_cls) = plt.subplots(1, 3, figsize=(16, 6.6))
    reg = num["regression"]
    exact = reg["shallow_exact"]
    ax_reg.plot(exact["alpha"], exact["query_loss"], color="tab:blue", lw=2, label="Shallow (exact, closed form)")
    ax_reg.plot([exact["optimal_alpha"]], [exact["query_loss_at_optimal_alpha"]], "*", color="tab:blue", ms=14,
                label=f"Shallow's optimum α = c* = {exact['optimal_alpha']:.3f}")
    ax_reg.axhline(exact["query_loss_at_optimal_alpha"], color="tab:blue", ls=":", lw=1,
                   label=f"best scalar step: {exact['query_loss_at_optimal_alpha']:.3f}")
    _trained(ax_reg, reg["models"], "query_loss")
    for label, floor in reg["depth_step_floor"].items():
        L = floor["depth"]
        power = "" if L == 2 else f"^({2 * (L - 1)}/{L})"
        ax_reg.plot(floor["alpha"], floor["overshoot_loss_floor"], ls="--", lw=1.2, color=COLORS[label],
                    label=f"{label}, linear step at W_e = M: step along M ≥ {L}α‖M‖{power} (α² terms dropped)")
    ax_reg.set_xscale("log")
    ax_reg.set_yscale("log")
    ax_reg.set_xlabel("inner learning rate α (meta-training and test)")
    ax_reg.set_ylabel("query loss after one step (held-out tasks)")
    ax_reg.set_title("(a) regression (exact, paired): depth matters at small α only", fontsize=10)
    # below the axes: inside, the legend covered the Shallow curve
    ax_reg.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    cls = num["classification"]["models"]
    _trained(ax_acc, cls, "query_accuracy", scale=100.0)
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel("inner learning rate α")
    ax_acc.set_ylabel("query accuracy after one step (%)")
    ax_acc.set_title("(b) classification: accuracy", fontsize=10)
    ax_acc.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    _trained(ax_cls, cls, "query_loss")
    ax_cls.set_xscale("log")
    ax_cls.set_xlabel("inner learning rate α")
    ax_cls.set_ylabel("query cross-entropy after one step")
    ax_cls.set_title("(c) classification: loss", fontsize=10)
    ax_cls.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    for ax in (ax_reg, ax_acc, ax_cls):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"One-step query loss after MAML meta-training at each inner lr α (Adam + cosine over "
                 f"{cfg['meta_iterations']} meta-iterations of {cfg['meta_batch']} tasks, {len(cfg['seeds'])} seeds)\n"
                 f"regression: exact loss on {cfg['exact_tasks']:,} paired tasks; classification: {cfg['test_tasks']} "
                 f"tasks × {cfg['classification_eval_query']} query points; 95% CI over tasks and seeds)", fontsize=10)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


def _trained(ax, models: dict, key: str, scale: float = 1.0) -> None:
    for label, rows in models.items():
        alphas = [r["alpha"] for r in rows]
        mean = scale * np.array([r[key]["mean"] for r in rows])
        half = scale * np.array([r[key]["ci95"] for r in rows])
        ax.errorbar(alphas, mean, yerr=half, marker="o", ms=4, capsize=3, lw=1.2, color=COLORS.get(label), label=label)


def summary(record: dict) -> list[str]:
    """One line per inner rate α (printed by ``main``)."""
    lines = []
    for entry in record["numbers"]["regression"]["summary"]["per_alpha"]:
        deep = entry["over_best_scalar"]["Deep L=2"]  # exact, paired, over seeds
        lines.append(f"alpha={entry['alpha']:<6} Shallow/best={entry['shallow_over_best_scalar']:.2f}  "
                     f"Deep L=2/best={deep['ratio']:.2f} ± {deep['ci95']:.2f}")
    return lines


run, main = figure_module(NAME, __doc__, compute, draw, summary=summary,
                          quick_help="two learning rates, a few meta-iterations (seconds)")

if __name__ == "__main__":
    main()
