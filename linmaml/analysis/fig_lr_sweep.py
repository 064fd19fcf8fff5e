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

Every trained model gets the same budget (meta-iterations, meta-batch, Adam's rate) and is scored
on the same held-out tasks: mean and 95% Student-t interval. At small α the shallow model cannot
adapt and depth (or a learned step) wins by a wide margin; near c* a tuned scalar step reaches the
best one-step loss and depth brings nothing more.

Run: ``python -m linmaml.analysis.fig_lr_sweep [--out DIR] [--quick]``; writes lr_sweep.png and lr_sweep.json.
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

NAME = "lr_sweep"

SETTINGS = {
    "inner_steps_meta_training": 1,
    "meta_optimizer": "adam",
    "meta_lr": 0.03,
    "meta_batch": 16,
    "init_scale": 1.0,
    "seed": 0,
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
FULL = {"meta_iterations": 150, "test_tasks": 500,
        "alphas": {"regression": [0.01, 0.04, 0.2, 1.0], "classification": [0.05, 0.3, 2.0, 8.0]}}
QUICK = {"meta_iterations": 6, "test_tasks": 60,
         "alphas": {"regression": [0.01, 1.0], "classification": [0.05, 8.0]}}

MODELS = {
    "regression": ["Deep L=2", "Deep L=3", "Shallow+LinNet", "Shallow+Meta-SGD", "Shallow+KFO"],
    "classification": ["LogR", "LogR+LinNet", "LogR+Meta-SGD", "LogR+KFO"],
}
COLORS = {"Deep L=2": "tab:red", "Deep L=3": "tab:purple", "Shallow+LinNet": "tab:orange", "LogR+LinNet": "tab:orange",
          "Shallow+Meta-SGD": "tab:green", "LogR+Meta-SGD": "tab:green", "Shallow+KFO": "tab:brown",
          "LogR+KFO": "tab:brown", "LogR": "tab:blue"}


def families(cfg: dict):
    from linmaml.analysis._common import classification_family, regression_family

    return {"regression": regression_family(cfg["regression"]),
            "classification": classification_family(cfg["classification"])}


def shallow_exact(family, alphas) -> dict:
    """The Shallow model's exact one-step query loss after meta-training, at every α: the expected
    loss at the MAML fixed point (the task mean for one Gaussian family), and the optimal α."""
    from linmaml.closedform import gaussian

    losses = [gaussian.expected_post_adaptation_loss(gaussian.maml_fixed_point(family, a, 1), family, a, 1)
              for a in alphas]
    M = np.asarray(family.task_mean)
    c_star = float(gaussian.optimal_inner_lr(M, family, 1))
    return {"alpha": [float(a) for a in alphas], "query_loss": [float(v) for v in losses],
            "optimal_alpha": c_star,
            "query_loss_at_optimal_alpha": float(gaussian.expected_post_adaptation_loss(M, family, c_star, 1)),
            "no_adaptation_loss": float(gaussian.expected_post_adaptation_loss(M, family, 0.0, 1))}


def _chain(label: str, cfg: dict, problem: str):
    from linmaml.simulator import deep, linnet, logr, shallow

    r, c = cfg["regression"], cfg["classification"]
    if problem == "regression":
        if label in cfg["deep_widths"]:
            return deep(r["d_in"], r["d_out"], cfg["deep_widths"][label])
        return linnet(shallow(r["d_in"], r["d_out"]), cfg["linnet_widths"])
    return logr(c["d_in"]) if label == "LogR" else linnet(logr(c["d_in"]), cfg["linnet_widths"])


def _meta_learner(label: str, cfg: dict, problem: str, alpha: float):
    """Meta-SGD or KFO (``linmaml.meta``) on a bias-free float64 linear map, started like the chains."""
    import torch
    from torch import nn

    from linmaml import meta
    from linmaml.simulator import logr, shallow

    f = cfg[problem]
    d_out = f.get("d_out", 1)
    base = shallow(f["d_in"], d_out) if problem == "regression" else logr(f["d_in"])
    start = base.init(np.random.default_rng(np.random.SeedSequence(cfg["seed"]).spawn(2)[0]), cfg["init_scale"])[0]
    linear = nn.Linear(f["d_in"], d_out, bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(start))
    transform = meta.MetaSGD() if label.endswith("Meta-SGD") else meta.KFO(psd=True)
    return meta.MAML(linear, lr=alpha, steps=cfg["inner_steps_meta_training"], transform=transform)


def train_and_score(label: str, cfg: dict, problem: str, family, tasks, alpha: float) -> dict:
    """Meta-train one model at inner lr ``alpha``; per-task one-step query loss (and accuracy)."""
    from linmaml.analysis._common import logistic_loss, meta_learner_curves, squared_loss
    from linmaml.simulator import meta_train, per_task_curves

    budget = dict(meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"], seed=cfg["seed"])
    if "Meta-SGD" in label or "KFO" in label:
        learner = _meta_learner(label, cfg, problem, alpha)
        loss_fn = squared_loss if problem == "regression" else logistic_loss
        meta_loss = meta_train(learner, family, meta_steps=cfg["meta_iterations"], optimizer=cfg["meta_optimizer"],
                               loss="squared" if problem == "regression" else "logistic", **budget).meta_loss
        values = meta_learner_curves(learner, tasks, loss_fn, 1, accuracy=problem == "classification")
    else:
        chain = _chain(label, cfg, problem)
        run = meta_train(chain, family, lr=alpha, steps=cfg["inner_steps_meta_training"],
                         meta_steps=cfg["meta_iterations"], optimizer=cfg["meta_optimizer"],
                         init_scale=cfg["init_scale"], **budget)
        meta_loss = run.meta_loss
        values = per_task_curves(chain, run.weights_at(), tasks, alpha, 1)
    return {key: np.asarray(v)[1] for key, v in values.items()} | {"meta_loss": np.asarray(meta_loss)}


def compute(quick: bool = False) -> dict:
    from linmaml.simulator import mean_ci

    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    level = cfg["ci_level"]
    fams = families(cfg)
    numbers, arrays = {}, {}
    for problem, family in fams.items():
        tasks = family.sample(cfg["test_tasks"], cfg["test_seed"])
        alphas = cfg["alphas"][problem]
        table = {}
        for label in MODELS[problem]:
            rows = []
            for alpha in alphas:
                began = time.perf_counter()
                scored = train_and_score(label, cfg, problem, family, tasks, alpha)
                row = {"alpha": alpha, "seconds": round(time.perf_counter() - began, 3),
                       "meta_loss_last20": float(scored["meta_loss"][-20:].mean())}
                for key in ("loss", "accuracy"):
                    if key in scored:
                        mean, half = mean_ci(scored[key], level)
                        row[f"query_{key}"] = {"mean": float(mean), "ci95": float(half)}
                rows.append(row)
            table[label] = rows
        numbers[problem] = {"models": table}
        if problem == "regression":
            grid = np.geomspace(min(alphas) / 2, max(alphas) * 2, cfg["shallow_curve_points"])
            exact = shallow_exact(family, grid)
            numbers[problem]["shallow_exact"] = exact
            numbers[problem]["shallow_exact_at_grid"] = shallow_exact(family, alphas)["query_loss"]
            numbers[problem]["summary"] = _regression_summary(table, exact, numbers[problem]["shallow_exact_at_grid"],
                                                              alphas)
    settings = dict(cfg, evaluation="one inner step (the training step size alpha) on fresh held-out tasks "
                                    "family.sample(test_tasks, test_seed), the same tasks for every model; "
                                    "mean and Student-t 95% interval over tasks",
                    shallow="exact: expected one-step query loss at the MAML fixed point (closedform.gaussian)")
    return {"figure": NAME, "settings": settings, "numbers": numbers, "_arrays": arrays}


def _regression_summary(table: dict, exact: dict, shallow_at_grid: list, alphas: list) -> dict:
    """Per α: each trained model's loss over Shallow's exact loss at that α, and over the best loss any
    scalar step reaches (Shallow at c*)."""
    best = exact["query_loss_at_optimal_alpha"]
    out = {"best_scalar_step_loss": best, "optimal_alpha": exact["optimal_alpha"], "per_alpha": []}
    for i, alpha in enumerate(alphas):
        entry = {"alpha": alpha, "shallow_exact": shallow_at_grid[i],
                 "shallow_over_best_scalar": shallow_at_grid[i] / best, "over_shallow_at_alpha": {},
                 "over_best_scalar": {}}
        for label, rows in table.items():
            m, h = rows[i]["query_loss"]["mean"], rows[i]["query_loss"]["ci95"]
            entry["over_shallow_at_alpha"][label] = {"ratio": m / shallow_at_grid[i], "ci95": h / shallow_at_grid[i]}
            entry["over_best_scalar"][label] = {"ratio": m / best, "ci95": h / best}
        out["per_alpha"].append(entry)
    return out


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linmaml.plots.figure import save_figure

    num, cfg = result["numbers"], result["settings"]
    fig, (ax_reg, ax_acc, ax_cls) = plt.subplots(1, 3, figsize=(16, 4.9))
    reg = num["regression"]
    exact = reg["shallow_exact"]
    ax_reg.plot(exact["alpha"], exact["query_loss"], color="tab:blue", lw=2, label="Shallow (exact, closed form)")
    ax_reg.plot([exact["optimal_alpha"]], [exact["query_loss_at_optimal_alpha"]], "*", color="tab:blue", ms=14,
                label=f"Shallow's optimum α = c* = {exact['optimal_alpha']:.3f}")
    ax_reg.axhline(exact["query_loss_at_optimal_alpha"], color="tab:blue", ls=":", lw=1,
                   label=f"best scalar step: {exact['query_loss_at_optimal_alpha']:.3f}")
    _trained(ax_reg, reg["models"], "query_loss")
    ax_reg.set_xscale("log")
    ax_reg.set_yscale("log")
    ax_reg.set_xlabel("inner learning rate α (meta-training and test)")
    ax_reg.set_ylabel("query loss after one step (held-out tasks)")
    ax_reg.set_title("(a) regression: depth matters at small α only", fontsize=10)
    ax_reg.legend(fontsize=7)
    cls = num["classification"]["models"]
    _trained(ax_acc, cls, "query_accuracy", scale=100.0)
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel("inner learning rate α")
    ax_acc.set_ylabel("query accuracy after one step (%)")
    ax_acc.set_title("(b) classification: accuracy", fontsize=10)
    ax_acc.legend(fontsize=7)
    _trained(ax_cls, cls, "query_loss")
    ax_cls.set_xscale("log")
    ax_cls.set_xlabel("inner learning rate α")
    ax_cls.set_ylabel("query cross-entropy after one step")
    ax_cls.set_title("(c) classification: loss", fontsize=10)
    ax_cls.legend(fontsize=7)
    for ax in (ax_reg, ax_acc, ax_cls):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"One-step query loss after MAML meta-training at each inner lr α ({cfg['meta_iterations']} "
                 f"meta-iterations of {cfg['meta_batch']} tasks each; mean and 95% CI over {cfg['test_tasks']} "
                 f"held-out tasks)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def _trained(ax, models: dict, key: str, scale: float = 1.0) -> None:
    for label, rows in models.items():
        alphas = [r["alpha"] for r in rows]
        mean = scale * np.array([r[key]["mean"] for r in rows])
        half = scale * np.array([r[key]["ci95"] for r in rows])
        ax.errorbar(alphas, mean, yerr=half, marker="o", ms=4, capsize=3, lw=1.2, color=COLORS.get(label), label=label)


def run(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Compute, draw ``<out_dir>/lr_sweep.png`` and write ``<out_dir>/lr_sweep.json``; return the JSON's dict."""
    from linmaml.plots.figure import run_figure

    return run_figure(NAME, compute, draw, out_dir, quick)


def main(argv=None) -> None:
    from linmaml.plots.figure import figure_main

    record = figure_main(NAME, __doc__, run, argv, quick_help="two learning rates, a few meta-iterations (seconds)")
    summary = record["numbers"]["regression"]["summary"]
    for entry in summary["per_alpha"]:
        deep = entry["over_best_scalar"]["Deep L=2"]
        print(f"  alpha={entry['alpha']:<6} Shallow/best={entry['shallow_over_best_scalar']:.2f}  "
              f"Deep L=2/best={deep['ratio']:.2f} ± {deep['ci95']:.2f}")


if __name__ == "__main__":
    main()
