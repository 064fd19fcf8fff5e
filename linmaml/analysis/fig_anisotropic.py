"""Anisotropic task families: the best scalar step against depth's learned matrix step.

Regression tasks y = w_τᵀx + ε with x ~ N(0, Σ), w_τ ~ N(m, Ω), n support points, where Σ has
condition number κ ∈ {1, 10, 100} (eigenvalues geometric, mean 1) and Ω is not a multiple of the
identity; both share the eigenvectors U (a fixed random rotation), so nothing is axis-aligned.

(a) The best one-step query loss any scalar inner lr reaches for Shallow (exact: the MAML optimum
    is m, ``closedform.gaussian.optimal_inner_lr`` minimises over α exactly) against Deep's learned
    one-step loss (L = 2, meta-trained by MAML at a small α, scored on held-out tasks with a 95%
    interval), and the best any *matrix* step w′ = m − Q·g can reach (theory, below).
(b) Deep's implicit preconditioner α·P (``closedform.preconditioner``, on the trained weights) against
    the optimal one-step matrix map Q*, eigenvalue by eigenvalue, with the alignment of their
    eigenvectors, and along meta-training for κ = 100.

The optimal one-step matrix map (d_out = 1). From w = m one step w′ = m − Q g with the support
gradient g = Σ̂Δ − Xᵀε/n, Δ = m − w_τ ~ N(0, Ω), Σ̂ = XᵀX/n, leaves the error (I − QΣ̂)Δ + QXᵀε/n, so
the expected query loss is

    ½[tr(ΣΩ) − 2·tr(QΣΩΣ) + tr(QᵀΣQ·K)] + ½σ²,   K = E[Σ̂ΩΣ̂] + σ²Σ/n = (1 + 1/n)ΣΩΣ + (tr(ΩΣ) + σ²)Σ/n

(Wishart moment, ``closedform.gaussian.wishart_moment``), a convex quadratic in Q minimised at

    Q* = ΩΣ·K⁻¹,

which for Σ = U diag(s) Uᵀ, Ω = U diag(ω) Uᵀ is U diag(q) Uᵀ with q_i = ω_i / ((1 + 1/n)s_iω_i +
(tr(ΩΣ) + σ²)/n): its eigenvectors follow Σ. For Σ = vI, Ω = ωI every q_i is the scalar optimum c*.

Run: ``python -m linmaml.analysis.fig_anisotropic [--out DIR] [--quick]``; writes anisotropic.png/.json.
"""
from __future__ import annotations

import pathlib

import numpy as np

NAME = "anisotropic"

SETTINGS = {
    "kappas": [1, 10, 100],
    "d_in": 4, "task_mean": [1.0, -0.5, 0.5, 1.0], "task_cov_eigenvalues": [2.0, 1.0, 0.5, 0.25],
    "noise_std": 0.1, "n_support": 20, "n_query": 20, "rotation_seed": 7,
    "inner_lr": 0.05, "deep_widths": [8], "meta_optimizer": "adam", "meta_lr": 0.01, "meta_batch": 32,
    "init_scale": 0.7, "seed": 0, "test_seed": 20210413, "ci_level": 0.95,
}
FULL = {"meta_iterations": 600, "test_tasks": 1000}
QUICK = {"meta_iterations": 30, "test_tasks": 200}


def rotation(d: int, seed: int) -> np.ndarray:
    """A fixed random orthogonal (d, d) matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def family_parts(cfg: dict, kappa: float) -> dict:
    """Σ, Ω and their eigenvalues for condition number ``kappa`` (Σ's eigenvalues geometric, mean 1)."""
    d = cfg["d_in"]
    U = rotation(d, cfg["rotation_seed"])
    s = np.geomspace(1.0, 1.0 / kappa, d)
    s = s * d / s.sum()
    w = np.asarray(cfg["task_cov_eigenvalues"], dtype=np.float64)
    return {"U": U, "s": s, "omega": w, "Sigma": (U * s) @ U.T, "Omega": (U * w) @ U.T}


def family(cfg: dict, kappa: float):
    from linmaml.tasks import RegressionFamily

    p = family_parts(cfg, kappa)
    return RegressionFamily(cfg["d_in"], 1, task_mean=np.asarray(cfg["task_mean"])[None, :], task_cov=p["Omega"],
                            x_cov=p["Sigma"], noise_std=cfg["noise_std"], n_support=cfg["n_support"],
                            n_query=cfg["n_query"])


def optimal_map(Sigma, Omega, noise_std: float, n: int) -> np.ndarray:
    """Q* = ΩΣ·K⁻¹, K = (1 + 1/n)ΣΩΣ + (tr(ΩΣ) + σ²)Σ/n (module docstring), symmetrised."""
    K = (1 + 1 / n) * Sigma @ Omega @ Sigma + (np.trace(Omega @ Sigma) + noise_std ** 2) * Sigma / n
    Q = Omega @ Sigma @ np.linalg.inv(K)
    return 0.5 * (Q + Q.T)


def matrix_step_loss(Q, Sigma, Omega, noise_std: float, n: int) -> float:
    """Expected query loss of the one-step map w′ = m − Q·g from the task mean (module docstring)."""
    K = (1 + 1 / n) * Sigma @ Omega @ Sigma + (np.trace(Omega @ Sigma) + noise_std ** 2) * Sigma / n
    return float(0.5 * (np.trace(Sigma @ Omega) - 2 * np.trace(Q @ Sigma @ Omega @ Sigma) + np.trace(Q.T @ Sigma @ Q @ K))
                 + 0.5 * noise_std ** 2)


def compute(quick: bool = False) -> dict:
    from linmaml.closedform import gaussian
    from linmaml.closedform.preconditioner import preconditioner
    from linmaml.simulator import deep, mean_ci, meta_train, per_task_curves

    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    alpha, level, n = cfg["inner_lr"], cfg["ci_level"], cfg["n_support"]
    M = np.asarray(cfg["task_mean"])[None, :]
    numbers, arrays = {"per_kappa": {}}, {}
    for kappa in cfg["kappas"]:
        fam, parts = family(cfg, kappa), family_parts(cfg, kappa)
        Sigma, Omega = parts["Sigma"], parts["Omega"]
        best_alpha = float(gaussian.optimal_inner_lr(M, fam, 1))
        shallow_best = float(gaussian.expected_post_adaptation_loss(M, fam, best_alpha, 1))
        Q = optimal_map(Sigma, Omega, cfg["noise_std"], n)
        chain = deep(cfg["d_in"], 1, cfg["deep_widths"])
        run = meta_train(chain, fam, lr=alpha, steps=1, meta_steps=cfg["meta_iterations"], meta_batch=cfg["meta_batch"],
                         meta_lr=cfg["meta_lr"], optimizer=cfg["meta_optimizer"], init_scale=cfg["init_scale"],
                         seed=cfg["seed"])
        tasks = fam.sample(cfg["test_tasks"], cfg["test_seed"])
        deep_loss = per_task_curves(chain, run.weights_at(), tasks, alpha, 1)["loss"][1]
        mean, half = mean_ci(deep_loss, level)
        # α·P on every recorded meta-step (closed form), compared with Q* in Σ's eigenbasis.
        steps = range(0, run.meta_steps + 1, max(1, run.meta_steps // 200))
        aP = np.stack([alpha * preconditioner([W[s] for W in run.weights], adapt_layers=chain.adapt_layers)
                       for s in steps])
        last = aP[-1]
        q_eig, q_vec = np.linalg.eigh(Q)
        p_eig = np.linalg.eigvalsh(last)
        in_basis = q_vec.T @ last @ q_vec
        rayleigh = np.diag(in_basis)
        numbers["per_kappa"][str(kappa)] = {
            "kappa": kappa,
            "Sigma_eigenvalues": parts["s"].tolist(), "Omega_eigenvalues": parts["omega"].tolist(),
            "shallow_best_scalar_alpha": best_alpha,
            "shallow_best_scalar_loss": shallow_best,
            "shallow_loss_at_inner_lr": float(gaussian.expected_post_adaptation_loss(M, fam, alpha, 1)),
            "optimal_matrix_step_loss": matrix_step_loss(Q, Sigma, Omega, cfg["noise_std"], n),
            "no_adaptation_loss": float(gaussian.expected_post_adaptation_loss(M, fam, 0.0, 1)),
            "deep_one_step_loss": {"mean": float(mean), "ci95": float(half)},
            "deep_over_best_scalar": {"ratio": float(mean / shallow_best), "ci95": float(half / shallow_best)},
            "deep_alpha_P_loss_theory": matrix_step_loss(last, Sigma, Omega, cfg["noise_std"], n),
            "optimal_map_eigenvalues": q_eig.tolist(),
            "deep_alpha_P_eigenvalues": p_eig.tolist(),
            # α·P read along Q*'s eigenvectors u_i (ascending q_i): u_iᵀ(α·P)u_i against q_i, and how much
            # of α·P lies off that basis (0 = the same eigenvectors).
            "deep_alpha_P_along_optimal_eigenvectors": rayleigh.tolist(),
            "deep_over_optimal_along_eigenvectors": (rayleigh / q_eig).tolist(),
            "deep_alpha_P_offdiagonal_fraction": float(np.linalg.norm(_offdiag(in_basis)) / np.linalg.norm(in_basis)),
            "relative_distance_to_optimal_map": float(np.linalg.norm(last - Q) / np.linalg.norm(Q)),
            "Q_star_in_Sigma_basis_offdiag_max": float(np.abs(_offdiag(parts["U"].T @ Q @ parts["U"])).max()),
            "meta_seconds": round(run.seconds, 3),
        }
        arrays[kappa] = {"steps": np.array(list(steps)), "aP_eig": np.linalg.eigvalsh(aP), "q_eig": q_eig,
                         "distance": np.linalg.norm(aP - Q, axis=(1, 2)) / np.linalg.norm(Q)}
    numbers["cross_check_closedform_optimal_one_step_map"] = _cross_check(cfg)
    settings = dict(cfg, model="Deep L=2 (simulator.deep(d_in, 1, deep_widths)), every layer adapts",
                    optimal_map="Q* = Omega Sigma K^-1, K = (1+1/n) Sigma Omega Sigma + (tr(Omega Sigma) + sigma^2) Sigma/n",
                    shallow="exact: expected one-step loss at the task mean with the exactly optimal scalar lr")
    return {"figure": NAME, "settings": settings, "numbers": numbers, "_arrays": arrays}


def _offdiag(A: np.ndarray) -> np.ndarray:
    return A - np.diag(np.diag(A))


def _cross_check(cfg: dict) -> dict | None:
    """Q* again from the closed forms' ``optimal_one_step_map(family) -> (W0*, Q*)``, where it exists
    (max relative difference per κ; None without it)."""
    try:
        from linmaml.closedform.gaussian_lr import optimal_one_step_map as optimal
    except ImportError:
        return None
    diffs = {}
    for kappa in cfg["kappas"]:
        parts = family_parts(cfg, kappa)
        ours = optimal_map(parts["Sigma"], parts["Omega"], cfg["noise_std"], cfg["n_support"])
        theirs = np.asarray(optimal(family(cfg, kappa))[1], dtype=np.float64)
        diffs[str(kappa)] = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    return diffs


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from linmaml.plots.figure import save_figure

    num, cfg, arr = result["numbers"], result["settings"], result["_arrays"]
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(16, 4.9))
    kappas = cfg["kappas"]
    x = np.arange(len(kappas))
    rows = [num["per_kappa"][str(k)] for k in kappas]
    width = 0.2
    ax_a.bar(x - 1.5 * width, [r["shallow_loss_at_inner_lr"] for r in rows], width, color="lightsteelblue",
             label=f"Shallow at α = {cfg['inner_lr']}")
    ax_a.bar(x - 0.5 * width, [r["shallow_best_scalar_loss"] for r in rows], width, color="tab:blue",
             label="Shallow, best scalar α (exact)")
    ax_a.bar(x + 0.5 * width, [r["deep_one_step_loss"]["mean"] for r in rows], width, color="tab:red",
             yerr=[r["deep_one_step_loss"]["ci95"] for r in rows], capsize=3,
             label=f"Deep L=2, learned (α = {cfg['inner_lr']})")
    ax_a.bar(x + 1.5 * width, [r["optimal_matrix_step_loss"] for r in rows], width, color="k",
             label="best matrix step Q* (theory)")
    for i, r in enumerate(rows):
        ratio = r["deep_over_best_scalar"]
        ax_a.text(x[i] + 0.5 * width, r["deep_one_step_loss"]["mean"] * 1.15,
                  f"{ratio['ratio']:.2f}±{ratio['ci95']:.2f}\n× best α", ha="center", fontsize=7)
    ax_a.set_xticks(x, [f"κ = {k}" for k in kappas])
    ax_a.set_yscale("log")
    ax_a.set_ylabel("one-step query loss")
    ax_a.set_title("(a) best scalar step vs Deep's learned step", fontsize=10)
    ax_a.legend(fontsize=7, loc="upper left")

    colors = ["tab:green", "tab:orange", "tab:purple"]
    for k, color in zip(kappas, colors):
        r = num["per_kappa"][str(k)]
        ax_b.plot(r["optimal_map_eigenvalues"], r["deep_alpha_P_along_optimal_eigenvectors"], "o", color=color, ms=6,
                  label=f"κ = {k} (off-basis part {r['deep_alpha_P_offdiagonal_fraction']:.2f})")
    lo = min(min(r["optimal_map_eigenvalues"] + r["deep_alpha_P_along_optimal_eigenvectors"]) for r in rows) * 0.7
    hi = max(max(r["optimal_map_eigenvalues"] + r["deep_alpha_P_along_optimal_eigenvectors"]) for r in rows) * 1.4
    ax_b.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal")
    ax_b.set_xscale("log")
    ax_b.set_yscale("log")
    ax_b.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_b.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_b.set_xlabel(r"eigenvalue $q_i$ of the optimal map $Q^*$")
    ax_b.set_ylabel(r"Deep's $u_i^\top(\alpha P)u_i$ along $Q^*$'s eigenvectors")
    ax_b.set_title("(b) eigenvalue by eigenvalue", fontsize=10)
    ax_b.grid(alpha=0.3, which="both")
    ax_b.legend(fontsize=8)

    k = kappas[-1]
    a = arr[k]
    for i in range(a["aP_eig"].shape[1]):
        ax_c.plot(a["steps"], a["aP_eig"][:, i], color="tab:red", lw=1.2, label=r"eigenvalues of $\alpha P$" if i == 0 else None)
        ax_c.axhline(a["q_eig"][i], color="k", ls="--", lw=1, label=r"eigenvalues of $Q^*$" if i == 0 else None)
    ax_c.axhline(num["per_kappa"][str(k)]["shallow_best_scalar_alpha"], color="tab:blue", ls=":", lw=1.2,
                 label="best scalar α (Shallow)")
    ax_c.set_yscale("log")
    ax_c.set_xlabel("meta-iteration")
    ax_c.set_title(f"(c) κ = {k}: Deep learns a matrix step (distance "
                   f"{num['per_kappa'][str(k)]['relative_distance_to_optimal_map']:.2f} at the end)", fontsize=10)
    ax_c.grid(alpha=0.3, which="both")
    ax_c.legend(fontsize=7)
    fig.suptitle(f"Anisotropic families: x ~ N(0, Σ) with condition number κ, w ~ N(m, Ω), Ω ≠ ωI; d = {cfg['d_in']}, "
                 f"n = {cfg['n_support']}, σ = {cfg['noise_std']}; {cfg['meta_iterations']} meta-iterations, "
                 f"{cfg['test_tasks']} held-out tasks", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def run(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Compute, draw ``<out_dir>/anisotropic.png`` and write ``<out_dir>/anisotropic.json``."""
    from linmaml.plots.figure import run_figure

    return run_figure(NAME, compute, draw, out_dir, quick)


def main(argv=None) -> None:
    from linmaml.plots.figure import figure_main

    record = figure_main(NAME, __doc__, run, argv, quick_help="short meta-training (a few seconds)")
    for key, r in record["numbers"]["per_kappa"].items():
        print(f"  kappa={key}: best scalar {r['shallow_best_scalar_loss']:.4f}, Deep {r['deep_one_step_loss']['mean']:.4f}"
              f" ± {r['deep_one_step_loss']['ci95']:.4f}, best matrix {r['optimal_matrix_step_loss']:.4f}")


if __name__ == "__main__":
    main()
