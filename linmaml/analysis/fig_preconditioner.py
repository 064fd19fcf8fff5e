"""Figure 3: the upper layers as a meta-optimizer — the implicit preconditioner along meta-training.

A deep linear model W_e = W_L ⋯ W_1 adapted by one gradient step of size α moves its end-to-end map
by vec ΔW_e = −α P vec G + O(α²) with P = Σ_j (B_jᵀB_j) ⊗ (A_jA_jᵀ) (``linmaml.closedform.preconditioner``).
We meta-train Deep models (depth 2 and 3) with MAML on isotropic Gaussian regression tasks and
evaluate P in closed form on every recorded meta-step's weights. For this family the best one-step
preconditioner from the task mean is c*·I with c* = ωn / (ωv(n+d+1) + σ²) (derived in ``_optimum``;
the target is c*·I, which equals c*·v·Σ⁻¹ here only because Σ = vI): meta-training drives every
eigenvalue of α·P to c*, far above the α that the shallow model is stuck with. On this isotropic
family the learned map is a step size (one number); ``fig_anisotropic`` shows the learned
*direction* on anisotropic families. The statistic reported everywhere (titles, JSON, README) is
the mean over the last 100 meta-iterations (Adam's steady-state jitter averages out). The trained
Deep models are far from balanced (‖W2ᵀW2 − W1W1ᵀ‖_F/‖W1W1ᵀ‖_F is reported per model), so the
balanced closed forms of ``closedform.preconditioner`` do not describe them; P is evaluated from
the actual weights.

Run: ``python -m linmaml.analysis.fig_preconditioner [--out DIR] [--quick]``; writes preconditioner.png/.json.
"""
from __future__ import annotations

import pathlib

import numpy as np

NAME = "preconditioner"

SETTINGS = {
    "inner_lr": 0.05,
    "inner_steps_meta_training": 1,
    "meta_optimizer": "adam",
    "meta_lr": 0.01,
    "meta_batch": 32,
    "init_scale": 0.7,
    "seed": 0,
    "family": {"d_in": 6, "d_out": 1, "task_mean": 1.0, "task_var": 1.0, "x_var": 1.0, "noise_std": 0.1,
               "n_support": 30, "n_query": 30},
    "deep_widths": {"L=2": [8], "L=3": [8, 8]},
}
FULL = {"meta_iterations": 1000}
QUICK = {"meta_iterations": 40}


def family(settings: dict):
    from linmaml.analysis._common import regression_family

    return regression_family(settings["family"])


def _optimum(f: dict) -> dict:
    """The best isotropic one-step map from the task mean, and the expected query losses around it.

    Σ = vI, Ω = ωI, noise σ: one step W' = M − c·G leaves the error Δ(I − cS) + c·εᵀX/n with
    S = XᵀX/n (E S = vI, E S² = v²(n+d+1)/n·I, Wishart), so the expected query loss is
    ½[ωv·d(1 − 2cv + c²v²(n+d+1)/n) + c²σ²v²·d/n] + ½σ² per output, minimised at
    c* = ωn / (ωv(n+d+1) + σ²); α·P = c*·I is c*·v·Σ⁻¹.
    """
    d, n, v, w, s2 = f["d_in"], f["n_support"], f["x_var"], f["task_var"], f["noise_std"] ** 2

    def loss(c):
        return f["d_out"] * 0.5 * (w * v * d * (1 - 2 * c * v + c * c * v * v * (n + d + 1) / n) + c * c * s2 * v * v * d / n + s2)

    c_star = w * n / (w * v * (n + d + 1) + s2)
    return {"c_star": c_star, "loss_at_c_star": loss(c_star), "loss": loss}


def _gaussian_cross_check(fam, c_star: float):
    """c* and the loss there again, from linmaml.closedform.gaussian: the shallow model at W = M has
    α·P = α·I, so its optimal inner lr is c* and its expected loss at lr c* is the optimum's."""
    from linmaml.closedform import gaussian

    M = np.asarray(fam.task_mean)
    return {"c_star": float(gaussian.optimal_inner_lr(M, fam, 1)),
            "loss_at_c_star": float(gaussian.expected_post_adaptation_loss(M, fam, c_star, 1))}


def _imbalance(weights) -> float:
    """max_j ‖W_{j+1}ᵀW_{j+1} − W_jW_jᵀ‖_F / ‖W_jW_jᵀ‖_F (0 for balanced weights)."""
    Ws = [np.asarray(W, dtype=np.float64) for W in weights]
    return float(max(np.linalg.norm(Ws[j + 1].T @ Ws[j + 1] - Ws[j] @ Ws[j].T) / np.linalg.norm(Ws[j] @ Ws[j].T)
                     for j in range(len(Ws) - 1)))


def compute(quick: bool = False) -> dict:
    from linmaml.closedform.preconditioner import preconditioner
    from linmaml.simulator import deep, meta_train

    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    fam = family(cfg)
    f, alpha = cfg["family"], cfg["inner_lr"]
    optimum = _optimum(f)
    c_star = optimum["c_star"]
    numbers = {"c_star": c_star, "optimal_one_step_query_loss": optimum["loss_at_c_star"],
               "shallow_one_step_query_loss_at_mean": optimum["loss"](alpha),
               "no_adaptation_query_loss": optimum["loss"](0.0), "models": {}}
    gaussian = _gaussian_cross_check(fam, c_star)
    numbers["closedform_gaussian"] = gaussian
    numbers["c_star_rel_diff_vs_gaussian"] = abs(gaussian["c_star"] - c_star) / c_star
    numbers["loss_rel_diff_vs_gaussian"] = abs(gaussian["loss_at_c_star"] - optimum["loss_at_c_star"]) / optimum["loss_at_c_star"]
    arrays = {}
    for label, widths in cfg["deep_widths"].items():
        chain = deep(f["d_in"], f["d_out"], widths)
        run = meta_train(chain, fam, lr=alpha, steps=cfg["inner_steps_meta_training"], meta_steps=cfg["meta_iterations"],
                         meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"], optimizer=cfg["meta_optimizer"],
                         init_scale=cfg["init_scale"], seed=cfg["seed"])
        # The figure's eigenvalues come from the closed form on the recorded weights; the simulator's
        # own autograd eigenvalues (P = J Jᵀ) must agree with them.
        eig = np.stack([np.linalg.eigvalsh(alpha * preconditioner([W[s] for W in run.weights], adapt_layers=chain.adapt_layers))
                        for s in range(run.meta_steps + 1)])
        autograd_eig = alpha * run.preconditioner_eigenvalues
        agreement = float(np.abs(eig - autograd_eig).max() / np.abs(eig).max())
        distance = np.sqrt(((eig - c_star) ** 2).sum(axis=1)) / (c_star * np.sqrt(eig.shape[1]))
        numbers["models"][label] = {
            "sizes": list(chain.sizes),
            "alpha_P_eigenvalues_initial": eig[0].tolist(),
            "alpha_P_eigenvalues_final": eig[-1].tolist(),
            "final_mean_eigenvalue_over_c_star": float(eig[-1].mean() / c_star),
            # The one statistic quoted in titles and the README: Adam's steady-state jitter averages out.
            "last100_mean_eigenvalue_over_c_star": float(eig[-100:].mean() / c_star),
            "last100_mean_condition_number": float((eig[-100:].max(axis=1) / eig[-100:].min(axis=1)).mean()),
            "final_condition_number": float(eig[-1].max() / eig[-1].min()),
            "imbalance_final": _imbalance(run.weights_at()),
            "initial_condition_number": float(eig[0].max() / eig[0].min()),
            "relative_distance_to_c_star_I": {"initial": float(distance[0]), "final": float(distance[-1])},
            "meta_loss_last50_mean": float(run.meta_loss[-50:].mean()),
            "closed_form_vs_autograd_eigenvalues_max_rel_diff": agreement,
            "meta_seconds": round(run.seconds, 3),
        }
        arrays[label] = {"eig": eig, "distance": distance, "meta_loss": run.meta_loss}
    settings = dict(cfg, preconditioner="closed form P = sum_j (B_j^T B_j) kron (A_j A_j^T) on every recorded meta-step",
                    optimum="alpha*P = c* I (= c* v Sigma^-1), c* = omega n / (omega v (n+d+1) + sigma^2)")
    return {"figure": NAME, "settings": settings, "numbers": numbers, "_arrays": arrays}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linmaml.plots.figure import save_figure
    from linmaml.plots.curves import eigenvalue_panel, running_mean

    num, cfg, arr = result["numbers"], result["settings"], result["_arrays"]
    alpha, c_star = cfg["inner_lr"], num["c_star"]
    labels = list(arr)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.2))
    colors = ["tab:red", "tab:purple"]
    for ax, label, color in zip(axes[0], labels, colors):
        eig = arr[label]["eig"]
        eigenvalue_panel(ax, np.arange(eig.shape[0]), eig, optimum=c_star, color=color,
                         optimum_label=f"optimum $c^* I$ ($c^*$ = {c_star:.3f})")
        ax.axhline(alpha, color="tab:blue", ls=":", lw=1.2, label=rf"Shallow: $\alpha I$ ($\alpha$ = {alpha})")
        final = num["models"][label]
        ax.set_title(f"({'ab'[labels.index(label)]}) Deep {label}: eigenvalues of αP\nmean/c* over the last 100 "
                     f"iterations = {final['last100_mean_eigenvalue_over_c_star']:.3f}; imbalance {final['imbalance_final']:.1f}",
                     fontsize=9)
        ax.set_ylabel(r"eigenvalue of $\alpha P$")
        ax.legend(fontsize=8, loc="lower right")
    ax = axes[1, 0]
    for label, color in zip(labels, colors):
        ax.plot(arr[label]["distance"], color=color, label=f"Deep {label}")
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(r"$\|\alpha P - c^* I\|_F \;/\; \|c^* I\|_F$")
    ax.set_title("(c) distance of the learned preconditioner from the optimum", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    for label, color in zip(labels, colors):
        ax.plot(running_mean(arr[label]["meta_loss"], 25), color=color, label=f"Deep {label} (running mean of 25)")
    ax.axhline(num["optimal_one_step_query_loss"], color="k", ls="--", lw=1, label=r"one step with $\alpha P = c^* I$ (theory)")
    ax.axhline(num["shallow_one_step_query_loss_at_mean"], color="tab:blue", ls=":", lw=1.2,
               label=r"Shallow at $\alpha I$ from the mean")
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("MAML objective (query loss after 1 step)")
    ax.set_title("(d) meta-training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    f = cfg["family"]
    fig.suptitle(f"The upper layers learn the step size and direction: x ~ N(0, {f['x_var']}·I_{f['d_in']}), "
                 f"n = {f['n_support']} support points, σ = {f['noise_std']}, inner lr α = {alpha}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def run(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Compute, draw ``<out_dir>/preconditioner.png`` and write ``<out_dir>/preconditioner.json``."""
    from linmaml.plots.figure import run_figure

    return run_figure(NAME, compute, draw, out_dir, quick)


def main(argv=None) -> None:
    from linmaml.plots.figure import figure_main

    record = figure_main(NAME, __doc__, run, argv, quick_help="short meta-training (a few seconds)")
    for label, m in record["numbers"]["models"].items():
        print(f"  Deep {label}: final eigenvalues of α·P {np.round(m['alpha_P_eigenvalues_final'], 3).tolist()} "
              f"vs c* = {record['numbers']['c_star']:.3f}")


if __name__ == "__main__":
    main()
