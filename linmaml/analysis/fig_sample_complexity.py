"""Convex meta-learning needs Ω(d) test samples, a meta-trained two-layer network O(1) (Saunshi, Zhang,
Khodak & Arora 2020, "A sample complexity separation between non-convex and convex meta-learning").

Tasks live on a hidden k-dimensional subspace of R^d (:class:`linmaml.tasks.LowRankRegressionFamily`):
y = θ_τᵀ B*ᵀ x, θ_τ ~ N(0, I_k), x ~ N(0, I_d), no noise. At test time a new task gives n samples and
the learner takes one gradient step on them; the question is the fewest n that bring the expected
loss to ε, as d grows. ε is a fraction ``epsilon_fraction`` of ½·E‖w_τ‖² = ½k, the loss of not
adapting at all.

* **Convex, best initialisation-based method** (the linear model w ∈ R^d, exact): the best
  initialisation is the task mean M = 0 (it minimises the one-step loss at every rate) and the best
  scalar step is exact (:func:`linmaml.closedform.lowrank.convex_best_loss`, from
  :mod:`linmaml.closedform.gaussian`). With Σ = I it is ½k·(d + 1)/(n + d + 1) (Wishart moment), so
  n(ε) = ⌈(d + 1)(½k/ε − 1)⌉: linear in d.
* **Non-convex, two-layer linear network** x ↦ W2 W1 x, W1 (k, d), W2 (1, k), meta-trained by ANIL
  (head-only inner step, exact second order) through the one engine (:func:`linmaml.simulator.meta_train`),
  on sampled tasks of ``train_n`` points, from a random orthonormal W1 and W2 = 0: SGD at ``meta_lr``
  then at ``meta_lr_final`` (a two-stage schedule that lowers the stochastic floor). At test time its
  head takes one step at the best rate: the head step is the matrix step Q = αW1ᵀW1 on the end-to-end
  map, whose expected loss given the trained weights is exact for every n
  (:func:`linmaml.closedform.lowrank.anil_best_loss`); n(ε) by bisection
  (:func:`linmaml.closedform.lowrank.samples_to_reach`). If W1 spanned B* exactly the loss would be
  ½k·(k + 1)/(n + k + 1): n(ε) = ⌈(k + 1)(½k/ε − 1)⌉, free of d ("ideal representation").

(a) n(ε) against d: the convex curve (exact), the trained networks' (mean and 95% t interval over
    meta-training seeds) and the ideal representation's. (b) The loss against n at one d, theory
    curves beside Monte Carlo points: each point adapts held-out tasks through the engine
    (:meth:`linmaml.meta.engine.Engine.adapted`) and scores the adapted map by its exact conditional
    loss ½‖w′ − w_τ‖² (mean ± 2 SE over tasks).

Run: ``python -m linmaml.analysis.fig_sample_complexity [--out DIR] [--quick]``; writes sample_complexity.png/.json.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import torch
from scipy import stats

from linmaml.closedform import lowrank
from linmaml.closedform.gaussian import optimal_inner_lr
from linmaml.meta.engine import Engine
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module
from linmaml.simulator import LinearChain, meta_train, squared_loss
from linmaml.tasks import LowRankRegressionFamily, orthonormal_basis, principal_angle_distance

NAME = "sample_complexity"

SOURCE = {"paper": "N. Saunshi, Y. Zhang, M. Khodak, S. Arora, A Sample Complexity Separation between Non-Convex and "
                   "Convex Meta-Learning, ICML 2020 (arXiv:2002.11172)",
          "claim": "on tasks sharing a low-dimensional subspace, every initialisation-based (convex) method needs "
                   "Omega(d) test samples, while a meta-trained two-layer linear network needs O(1) (independent of d)"}

SETTINGS = {
    "k": 2, "noise_std": 0.0, "basis_seed": 0, "epsilon_fraction": 0.2, "tight_epsilon_fraction": 0.02,
    "train_n": 20, "inner_lr": 1.0, "meta_optimizer": "sgd", "meta_lr": 0.12, "meta_lr_final": 0.02, "meta_batch": 20,
    "panel_b_d": 100, "panel_b_n": [2, 5, 10, 20, 50, 100, 200], "test_seed": 20200301, "ci_level": 0.95,
}
FULL = {"dims": [10, 30, 100, 300], "seeds": 3, "meta_iterations": [100, 150], "test_tasks": 500}
QUICK = {"dims": [10, 30], "seeds": 2, "meta_iterations": [10, 10], "test_tasks": 100}


def family(cfg: dict, d: int, n: int = 1):
    return LowRankRegressionFamily(d, 1, rank=cfg["k"], head_cov=1.0, noise_std=cfg["noise_std"], n_support=n,
                                   n_query=n, basis_seed=cfg["basis_seed"])


def train_network(cfg: dict, d: int, seed: int) -> list[np.ndarray]:
    """ANIL meta-training through the engine in two SGD stages; returns [W1 (k, d), W2 (1, k)]."""
    chain = LinearChain((d, cfg["k"], 1), adapt_layers=(1,))
    fam = family(cfg, d, cfg["train_n"])
    weights = [orthonormal_basis(d, cfg["k"], seed=10_000 + seed).T.copy(), np.zeros((1, cfg["k"]))]
    for stage, (steps, rate) in enumerate(zip(cfg["meta_iterations"], (cfg["meta_lr"], cfg["meta_lr_final"]))):
        run = meta_train(chain, fam, lr=cfg["inner_lr"], steps=1, init=[torch.as_tensor(W) for W in weights],
                         meta_steps=steps, meta_batch=cfg["meta_batch"], meta_lr=rate, optimizer=cfg["meta_optimizer"],
                         seed=1000 * seed + stage, record_preconditioner=False)
        weights = [W[-1] for W in run.weights]
    return weights


def ideal_samples(cfg: dict) -> int:
    k, f = cfg["k"], cfg["epsilon_fraction"]
    return int(np.ceil((k + 1) * (1 / f - 1) - 1e-9))


def monte_carlo_losses(cfg: dict, fam, layers, lr: float, tasks: int, seed: int) -> np.ndarray:
    """Per-task exact conditional loss ½‖w′ − w_τ‖² (+ ½σ²) after one engine step at rate ``lr`` on sampled
    support sets; ``layers`` = [w] (the linear model, all adapted) or [W1, W2] (head adapted)."""
    sizes = (fam.d_in, 1) if len(layers) == 1 else (fam.d_in, cfg["k"], 1)
    chain = LinearChain(sizes, adapt_layers=None if len(layers) == 1 else (1,))
    learner = chain.learner([torch.as_tensor(W) for W in layers], lr, steps=1)
    batch = fam.sample(tasks, seed)
    view = batch.torch()
    fast = Engine(learner, squared_loss, strategy="vmap", tasks_per_chunk=100).adapted(view.Xs, view.Ys)
    if len(layers) == 1:
        adapted = fast["0.weight"].numpy()
    else:
        adapted = fast["1.weight"].numpy() @ layers[0]
    error = adapted - batch.W
    return 0.5 * np.sum(error ** 2, axis=(1, 2)) + 0.5 * fam.noise_std ** 2


def compute(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    size = QUICK if quick else FULL
    cfg = {**SETTINGS, **size}
    k = cfg["k"]
    epsilon = cfg["epsilon_fraction"] * 0.5 * k
    tight = cfg["tight_epsilon_fraction"] * 0.5 * k
    t = stats.t.ppf(0.5 + cfg["ci_level"] / 2, cfg["seeds"] - 1)
    per_d, trained = [], {}
    for d in cfg["dims"]:
        fam = family(cfg, d)
        convex = lowrank.samples_to_reach(lambda n: lowrank.convex_best_loss(fam, n), epsilon)
        nets = [train_network(cfg, d, seed) for seed in range(cfg["seeds"])]
        trained[d] = nets
        counts = [lowrank.samples_to_reach(lambda n, L=L: lowrank.anil_best_loss(L, fam, n), epsilon) for L in nets]
        reached = [c for c in counts if c is not None]
        mean = float(np.mean(reached)) if reached else None
        half = float(t * np.std(reached, ddof=1) / np.sqrt(len(reached))) if len(reached) > 1 else None
        per_d.append({
            "d": d, "convex_samples": convex, "convex_formula": int(np.ceil((d + 1) * (1 / cfg["epsilon_fraction"] - 1)
                                                                              - 1e-9)),
            "network_samples_per_seed": counts, "network_samples_mean": mean, "network_samples_ci_half": half,
            "tight": {"convex_samples": lowrank.samples_to_reach(lambda n: lowrank.convex_best_loss(fam, n), tight),
                      "network_samples_per_seed": [lowrank.samples_to_reach(
                          lambda n, L=L: lowrank.anil_best_loss(L, fam, n), tight) for L in nets]},
            "network_distance_per_seed": [principal_angle_distance(L[0].T, fam.basis) for L in nets],
            "network_loss_floor_per_seed": [lowrank.anil_best_loss(L, fam, 10 ** 7) for L in nets],
        })
    # (b) loss against n at one d: theory and engine Monte Carlo, convex and trained networks
    d_b = cfg["panel_b_d"] if cfg["panel_b_d"] in trained else cfg["dims"][-1]
    fam_b = family(cfg, d_b)
    panel = {"d": d_b, "n": cfg["panel_b_n"], "convex_theory": [], "convex_mc": [], "convex_mc_se": [],
             "network_theory_per_seed": [], "network_mc_per_seed": [], "network_mc_se_per_seed": []}
    for j, n in enumerate(cfg["panel_b_n"]):
        fam_n = dataclasses.replace(fam_b, n_support=n, n_query=1)
        alpha = optimal_inner_lr(np.zeros((1, d_b)), fam_n, 1)
        panel["convex_theory"].append(lowrank.convex_best_loss(fam_b, n))
        mc = monte_carlo_losses(cfg, fam_n, [np.zeros((1, d_b))], alpha, cfg["test_tasks"], cfg["test_seed"] + j)
        panel["convex_mc"].append(float(mc.mean()))
        panel["convex_mc_se"].append(float(mc.std(ddof=1) / np.sqrt(mc.size)))
    for layers in trained[d_b]:
        theory, mcs, ses = [], [], []
        for j, n in enumerate(cfg["panel_b_n"]):
            fam_n = dataclasses.replace(fam_b, n_support=n, n_query=1)
            alpha, loss = lowrank.best_head_lr(layers, fam_n)
            theory.append(loss)
            mc = monte_carlo_losses(cfg, fam_n, layers, alpha, cfg["test_tasks"], cfg["test_seed"] + j)
            mcs.append(float(mc.mean()))
            ses.append(float(mc.std(ddof=1) / np.sqrt(mc.size)))
        panel["network_theory_per_seed"].append(theory)
        panel["network_mc_per_seed"].append(mcs)
        panel["network_mc_se_per_seed"].append(ses)
    z = [abs(m - th) / se for row_m, row_t, row_s in zip(panel["network_mc_per_seed"], panel["network_theory_per_seed"],
                                                          panel["network_mc_se_per_seed"])
         for m, th, se in zip(row_m, row_t, row_s)]
    z += [abs(m - th) / se for m, th, se in zip(panel["convex_mc"], panel["convex_theory"], panel["convex_mc_se"])]
    numbers = {"epsilon": epsilon, "ideal_samples": ideal_samples(cfg), "tight_epsilon": tight,
               "tight_ideal_samples": ideal_samples({**cfg, "epsilon_fraction": cfg["tight_epsilon_fraction"]}),
               "per_d": per_d, "panel_b": panel,
               "max_mc_deviation_in_se": float(max(z))}
    dims = np.array(cfg["dims"], dtype=float)
    convex = np.array([row["convex_samples"] for row in per_d], dtype=float)
    numbers["convex_log_log_slope"] = float(np.polyfit(np.log(dims), np.log(convex), 1)[0])
    nets = [row["network_samples_mean"] for row in per_d]
    if all(v is not None for v in nets):
        numbers["network_log_log_slope"] = float(np.polyfit(np.log(dims), np.log(np.array(nets)), 1)[0])
    return {"figure": NAME, "source": SOURCE, "settings": {**cfg, "quick": quick}, "numbers": numbers}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    n = result["numbers"]
    s = result["settings"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    rows = n["per_d"]
    dims = [r["d"] for r in rows]
    ax.plot(dims, [r["convex_samples"] for r in rows], "o-", color="C3",
            label="convex: best init + best step (exact)")
    mean = np.array([np.nan if r["network_samples_mean"] is None else r["network_samples_mean"] for r in rows])
    half = np.array([0.0 if r["network_samples_ci_half"] is None else r["network_samples_ci_half"] for r in rows])
    ax.errorbar(dims, mean, yerr=half, fmt="s-", color="C0", capsize=3,
                label=f"two-layer net, ANIL-trained ({s['seeds']} seeds, 95% CI)")
    for r in rows:
        ax.scatter([r["d"]] * len(r["network_samples_per_seed"]),
                   [np.nan if c is None else c for c in r["network_samples_per_seed"]], color="C0", s=8, alpha=0.5)
    ax.axhline(n["ideal_samples"], color="0.4", ls=":", label=f"ideal representation: {n['ideal_samples']}")
    tight = s["tight_epsilon_fraction"]
    ax.plot(dims, [r["tight"]["convex_samples"] for r in rows], "o--", color="C3", mfc="none",
            label=f"convex, ε = {tight:g}·½k")
    for r in rows:
        counts = [np.nan if c is None else c for c in r["tight"]["network_samples_per_seed"]]
        ax.scatter([r["d"]] * len(counts), counts, color="C0", marker="s", facecolors="none", s=20,
                   label=f"nets, ε = {tight:g}·½k (each seed)" if r is rows[0] else None)
    ax.axhline(n["tight_ideal_samples"], color="0.4", ls="-.", lw=0.8,
               label=f"ideal, ε = {tight:g}·½k: {n['tight_ideal_samples']}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ambient dimension d")
    ax.set_ylabel(f"test samples to reach ε = {s['epsilon_fraction']:g}·½k")
    ax.set_title(f"(a) samples needed, rank-{s['k']} tasks", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    p = n["panel_b"]
    ns = np.array(p["n"], dtype=float)
    bx.plot(ns, p["convex_theory"], color="C3", label="convex, exact")
    bx.errorbar(ns, p["convex_mc"], yerr=2 * np.array(p["convex_mc_se"]), fmt="o", color="C3", ms=4, capsize=2,
                label="convex, engine Monte Carlo ± 2 SE")
    for i, (th, mc, se) in enumerate(zip(p["network_theory_per_seed"], p["network_mc_per_seed"],
                                         p["network_mc_se_per_seed"])):
        bx.plot(ns, th, color="C0", alpha=0.8, label="trained nets, exact given weights" if i == 0 else None)
        bx.errorbar(ns, mc, yerr=2 * np.array(se), fmt="s", color="C0", ms=3, capsize=2,
                    label="trained nets, engine Monte Carlo ± 2 SE" if i == 0 else None)
    bx.axhline(n["epsilon"], color="k", lw=0.8, ls="--", label="ε")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("test samples n")
    bx.set_ylabel("expected loss after one best step")
    bx.set_title(f"(b) loss against n at d = {p['d']}", fontsize=10)
    bx.grid(alpha=0.3, which="both")
    bx.legend(fontsize=8)
    fig.suptitle("Convex vs non-convex meta-learning on a hidden subspace — after Saunshi et al. 2020", fontsize=10)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw,
                          quick_help="d in {10, 30}, 2 seeds, 20 meta-iterations (seconds)")

if __name__ == "__main__":
    main()
