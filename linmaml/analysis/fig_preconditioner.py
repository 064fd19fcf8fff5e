"""Figure 3: the upper layers as a meta-optimizer — a learned DIRECTION, on an anisotropic family.

Family (d_out = 1): x ~ N(0, Σ) with Σ = U diag(s) Uᵀ, condition number κ = 10 (eigenvalues
geometric, mean 1, U a fixed random rotation), tasks w_τ ~ N(m, Ω) with Ω = V diag(ω) Vᵀ on another
rotation (not a multiple of I, not sharing Σ's eigenvectors), query noise σ.

A deep linear model W_e = W_L ⋯ W_1 adapted by one gradient step of size α moves its end-to-end map by
ΔW_e = −α·G·P + O(α²) with P = Σ_j (B_jᵀB_j)⊗(A_jA_jᵀ) (``closedform.preconditioner``; for d_out = 1
a (d, d) matrix). We meta-train Deep L = 2, 3 by MAML at a fixed small α and evaluate α·P in closed
form on every recorded meta-step's weights.

Target: the deep model's OWN optimum, α² terms included. ``closedform.gaussian.
expected_post_adaptation_loss([W1, …, WL], family, α)`` is the exact expected query loss after one
inner step with the population gradient (W_e − W_τ)Σ on every layer; :func:`deep_optimum` minimises
it over the layers by L-BFGS (exact gradient) from several random starts. It is bounded below by the
query noise ½σ² (the query noise is independent of the adapted map), so a point within ``excess`` of
½σ² is a global minimum up to ``excess``: every start reaches it. At that floor the adapted residual
W_e′ − W_τ, a polynomial in D = W_e − W_τ, vanishes identically; its linear part D(I − αPΣ) = 0 forces
α·P* = Σ⁻¹ exactly, which is the population optimal one-step MATRIX map (``gaussian_lr.
optimal_one_step_map(family, population=True)`` = (m, Σ⁻¹)). How the deep optimum differs from that
map: the matrix map may start anywhere (W0* = m is returned), the deep optimum must also cancel its
α² and α³ terms, e.g. α²·(G W_eᵀ)G for L = 2, which forces W_e* = 0 for L = 2; the figure reports the
end-to-end map and what the α² terms cost the trained models (their exact loss minus that of the
matrix step with the same α·P and start).

Apples to apples: the exact expectation uses the population gradient, so training uses it too.
:class:`linmaml.analysis._common.PopulationSupport` gives every sampled task the support set
X = √d·Σ^{1/2} (d points, XᵀX/d = Σ) with noise-free targets, so the support gradient IS (W_e − W_τ)Σ
(the JSON reports its measured deviation, ~1e-16); tasks and query sets are sampled as usual. (With
n = 20 noisy points instead, the finite-n optimal matrix map differs from Σ⁻¹ by the amount the JSON
reports: far more than the learned map's gap.)

Finite n (row 3). With n noisy support points (``finite_n.n_support`` = 20) the support gradient
Ĝ = (W_e − W_τ)Σ̂ − EᵀX/n fluctuates, and one Newton step is no longer optimal. The target is then the
deep model's own finite-n optimum: the exact finite-n expectation of depth 2
(``closedform.gaussian_deep_finite``, Wishart moments to fourth order jointly with the support noise
and the task draw) minimised by L-BFGS from several starts, run to convergence. It is compared with
the best linear one-step map Q*_n = [(1 + 1/n)SΣ + cI]⁻¹S (``gaussian_lr.optimal_one_step_map``), with
the population optimum Σ⁻¹ used at this n, with the best scalar step, and with the population panel's
optimal Deep L = 2 used at this n, all by exact expectations. Deep L = 2 is meta-trained by MAML on
sampled tasks with n noisy support points (same α, optimizer, seed and budget as above), its α·P read
along the finite-n optimum's eigenvectors, its exact finite-n loss recorded along training.

Panels: α·P read along the target's eigenvectors u_i (u_iᵀ α·P u_i against the target's eigenvalue
t_i, direction by direction, along meta-training), its off-diagonal part in that basis and the
largest angle between matched eigenvectors (the learned direction), and the meta-loss; row 3 the same
at finite n (α·P along the finite-n target's eigenvectors, eigenvalues, exact finite-n losses). The one
statistic quoted everywhere (titles, JSON, README) is the mean over the last 100 meta-iterations.

Run: ``python -m linmaml.analysis.fig_preconditioner [--out DIR] [--quick]``; writes preconditioner.png/.json.
"""
from __future__ import annotations

import pathlib

import numpy as np
from scipy.optimize import minimize

from linmaml.analysis._common import PopulationSupport
from linmaml.closedform import gaussian, gaussian_lr
from linmaml.closedform.gaussian import expected_post_adaptation_loss_and_grad
from linmaml.closedform.preconditioner import preconditioner
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.curves import running_mean
from linmaml.plots.figure import figure_module
from linmaml.simulator import deep, mean_ci, meta_train, per_task_curves
from linmaml.tasks import RegressionFamily

NAME = "preconditioner"

SETTINGS = {
    "inner_lr": 0.1,
    "inner_steps_meta_training": 1,
    "meta_optimizer": "adam",
    "meta_lr": 0.02,
    "meta_batch": 32,
    "init_scale": 0.7,
    "seed": 0,
    "family": {"d_in": 4, "kappa": 10.0, "x_rotation_seed": 7, "task_mean": [1.0, -0.5, 0.5, 1.0],
               "task_cov_eigenvalues": [2.0, 1.0, 0.5, 0.25], "task_rotation_seed": 11, "noise_std": 0.1,
               "n_query": 20, "finite_n_for_comparison": 20},
    "deep_widths": {"L=2": [8], "L=3": [8, 8]},
    "optimum": {"method": "scipy L-BFGS-B on the exact expectation and its exact gradient", "max_iterations": 3000,
                "seed": 1, "init_scale": 0.7},
    "test_seed": 20210413,
    "window": 100,
    "finite_n": {"n_support": 20, "model": "L=2", "training": "MAML on sampled tasks with n_support noisy support "
                 "points (simulator.meta_train on the RegressionFamily itself), same alpha, optimizer and seed",
                 "optimum": "scipy L-BFGS-B on the exact finite-n expectation (closedform.gaussian_deep_finite) and "
                            "its exact gradient, run to convergence (gtol 1e-12, ftol 1e-16)"},
}
FULL = {"meta_iterations": 1000, "test_tasks": 2000, "optimum_starts": {"L=2": 3, "L=3": 2},
        "optimum_excess": {"L=2": 1e-12, "L=3": 1e-9}, "finite_n_optimum_starts": 3, "finite_n_record_every": 5}
QUICK = {"meta_iterations": 40, "test_tasks": 200, "optimum_starts": {"L=2": 2, "L=3": 1},
         "optimum_excess": {"L=2": 1e-10, "L=3": 1e-7}, "finite_n_optimum_starts": 2, "finite_n_record_every": 5}


def rotation(d: int, seed: int) -> np.ndarray:
    """A fixed random orthogonal (d, d) matrix (QR of a seeded Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def covariances(f: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Σ, Ω, eigenvalues s of Σ) from the family settings (Σ's eigenvalues geometric, mean 1, ratio κ)."""
    d = f["d_in"]
    s = np.geomspace(1.0, 1.0 / f["kappa"], d)
    s = s * d / s.sum()
    U, V = rotation(d, f["x_rotation_seed"]), rotation(d, f["task_rotation_seed"])
    w = np.asarray(f["task_cov_eigenvalues"], dtype=np.float64)
    return (U * s) @ U.T, (V * w) @ V.T, s


def family(settings: dict, n_support: int | None = None):
    """The anisotropic :class:`linmaml.tasks.RegressionFamily` (``n_support`` defaults to d_in: the
    sampled support set is replaced by :class:`PopulationSupport` for training anyway)."""
    f = settings["family"]
    Sigma, Omega, _ = covariances(f)
    return RegressionFamily(f["d_in"], 1, task_mean=np.asarray(f["task_mean"])[None, :], task_cov=Omega, x_cov=Sigma,
                            noise_std=f["noise_std"], n_support=n_support or f["d_in"], n_query=f["n_query"])


def deep_optimum(sizes, fam, lr: float, *, starts: int, excess: float | None, seed: int = 1, init_scale: float = 0.7,
                 max_iterations: int = 3000, population: bool = True) -> dict:
    """Minimise the exact deep expectation over the layers [W1, …, WL] of a chain ``sizes``.

    L-BFGS-B (scipy) on ``closedform.gaussian.expected_post_adaptation_loss_and_grad`` (exact value and
    gradient; ``population=False``: the finite-n expectation of depth 2 with ``fam.n_support`` points)
    from ``starts`` random starts (entries N(0, init_scale²/fan_in), seeded), each stopped once its
    value is within ``excess`` of the lower bound ½·d_out·σ² (query noise), or at convergence (always,
    when ``excess`` is None: at finite n the optimum lies well above that bound).
    Returns {"weights": best layers, "value", "floor", "starts": [{"value", "iterations",
    "gradient_max_abs", "alpha_P"}]} with α·P from ``closedform.preconditioner`` at each start's end.
    """
    shapes = [(sizes[j + 1], sizes[j]) for j in range(len(sizes) - 1)]
    cuts = np.cumsum([0] + [a * b for a, b in shapes])
    floor = 0.5 * fam.d_out * fam.noise_std ** 2

    def unpack(x):
        return [x[cuts[j]:cuts[j + 1]].reshape(shape) for j, shape in enumerate(shapes)]

    def objective(x):
        value, grads = expected_post_adaptation_loss_and_grad(unpack(x), fam, lr, population=population)
        return value, np.concatenate([g.ravel() for g in grads])

    def close_enough(intermediate_result):  # the floor is a lower bound: nothing left to gain below excess
        if excess is not None and intermediate_result.fun - floor < excess:
            raise StopIteration

    rng = np.random.default_rng(seed)
    runs, best = [], None
    for _ in range(starts):
        x0 = np.concatenate([init_scale * rng.standard_normal(shape).ravel() / np.sqrt(shape[1]) for shape in shapes])
        res = minimize(objective, x0, jac=True, method="L-BFGS-B", callback=close_enough,
                       options={"maxiter": max_iterations, "gtol": 1e-12, "ftol": 1e-16})
        weights = unpack(res.x)
        runs.append({"value": float(res.fun), "iterations": int(res.nit),
                     "gradient_max_abs": float(np.abs(res.jac).max()), "alpha_P": lr * preconditioner(weights)})
        if best is None or res.fun < best[0]:
            best = (float(res.fun), weights)
    return {"weights": best[1], "value": best[0], "floor": floor, "starts": runs}


def end_to_end(weights) -> np.ndarray:
    product = np.asarray(weights[0])
    for W in weights[1:]:
        product = np.asarray(W) @ product
    return product


def _imbalance(weights) -> float:
    """max_j ‖W_{j+1}ᵀW_{j+1} − W_jW_jᵀ‖_F / ‖W_jW_jᵀ‖_F (0 for balanced weights)."""
    Ws = [np.asarray(W, dtype=np.float64) for W in weights]
    return float(max(np.linalg.norm(Ws[j + 1].T @ Ws[j + 1] - Ws[j] @ Ws[j].T) / np.linalg.norm(Ws[j] @ Ws[j].T)
                     for j in range(len(Ws) - 1)))


def _offdiag(A: np.ndarray) -> np.ndarray:
    return A - np.einsum("...ii->...i", A)[..., None] * np.eye(A.shape[-1])


def direction_statistics(aP: np.ndarray, target: np.ndarray) -> dict:
    """α·P (S, d, d) read in the eigenbasis u_i of ``target`` (d, d), ascending eigenvalues t_i.

    Returns per step: "along" (S, d) u_iᵀ(α·P)u_i, "offdiag" (S,) ‖off-diagonal part of Uᵀ(α·P)U‖_F /
    ‖Uᵀ(α·P)U‖_F, "angle_deg" (S,) the largest angle between the i-th eigenvectors of α·P and target
    (both ascending), "condition" (S,) λ_max/λ_min of α·P, and "t" (d,)."""
    t, U = np.linalg.eigh(target)
    in_basis = U.T @ aP @ U
    along = np.einsum("sii->si", in_basis)
    offdiag = np.linalg.norm(_offdiag(in_basis), axis=(1, 2)) / np.linalg.norm(in_basis, axis=(1, 2))
    eig, vec = np.linalg.eigh(aP)
    cosines = np.abs(np.einsum("di,sdi->si", U, vec)).clip(0, 1)
    return {"t": t, "along": along, "offdiag": offdiag, "angle_deg": np.degrees(np.arccos(cosines)).max(axis=1),
            "condition": eig[:, -1] / eig[:, 0]}


def finite_n_panel(cfg: dict, population_weights: dict) -> tuple[dict, dict]:
    """The finite-n counterpart of panels (a)–(c) for ``cfg["finite_n"]["model"]`` (depth 2): MAML on
    sampled tasks with n noisy support points, its α·P read along the eigenvectors of the deep model's
    own finite-n optimum, and exact finite-n losses (no sampling) of every map compared.

    ``population_weights``: {"optimum": layers, "trained": layers} of the population panel's L = 2
    model, scored here at finite n. Returns (numbers for the JSON, arrays for the drawing)."""
    f, alpha, window = cfg["family"], cfg["inner_lr"], cfg["window"]
    settings = cfg["finite_n"]
    n = settings["n_support"]
    fam = family(cfg, n)
    Sigma = fam.x_cov
    Sigma_inv = np.linalg.inv(Sigma)

    def exact(weights):  # the exact finite-n expected query loss of a deep model
        return gaussian.expected_post_adaptation_loss([np.asarray(W, dtype=np.float64) for W in weights], fam, alpha,
                                                      population=False)

    M0, Q_n = gaussian_lr.optimal_one_step_map(fam, population=False)
    Q_loss = gaussian_lr.expected_one_step_map_loss(fam, Q_n)
    scalar_alpha, scalar_loss = gaussian_lr.best_scalar_lr(fam, population=False)
    sigma_inv_loss = gaussian_lr.expected_one_step_map_loss(fam, Sigma_inv)
    chain = deep(f["d_in"], 1, cfg["deep_widths"][settings["model"]])
    opt = deep_optimum(chain.sizes, fam, alpha, starts=cfg["finite_n_optimum_starts"], excess=None,
                       seed=cfg["optimum"]["seed"], init_scale=cfg["optimum"]["init_scale"],
                       max_iterations=cfg["optimum"]["max_iterations"], population=False)
    target = alpha * preconditioner(opt["weights"])
    run = meta_train(chain, fam, lr=alpha, steps=cfg["inner_steps_meta_training"], meta_steps=cfg["meta_iterations"],
                     meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"], optimizer=cfg["meta_optimizer"],
                     init_scale=cfg["init_scale"], seed=cfg["seed"])
    aP = np.stack([alpha * preconditioner([W[k] for W in run.weights]) for k in range(run.meta_steps + 1)])
    stats = direction_statistics(aP, target)
    recorded = list(range(0, run.meta_steps + 1, cfg["finite_n_record_every"]))
    if recorded[-1] != run.meta_steps:
        recorded.append(run.meta_steps)
    exact_curve = np.array([exact([W[k] for W in run.weights]) for k in recorded])
    last = slice(-window, None)
    final = [W.numpy() for W in run.weights_at()]
    final_loss = exact(final)
    # The simulator's own autograd inner step on sampled noisy support sets and sampled query sets, against
    # the exact expectation at the same weights (an independent check of both).
    held_out = per_task_curves(chain, run.weights_at(), fam.sample(cfg["test_tasks"], cfg["test_seed"]), alpha,
                               1)["loss"][1]
    mc_mean, mc_half = mean_ci(held_out)
    # the mean exact loss over the last `window` meta-iterations (recorded ones), the one statistic quoted
    tail = [loss for k, loss in zip(recorded, exact_curve) if k > run.meta_steps - window]
    gap = scalar_loss - Q_loss  # what the best linear map gains over the best scalar step

    def captured(loss):
        return float((scalar_loss - loss) / gap)

    t, U = np.linalg.eigh(target)
    numbers = {
        "n_support": n,
        "best_scalar_step": {"alpha": scalar_alpha, "loss": scalar_loss},
        "best_linear_map": {"loss": Q_loss, "Q_star_eigenvalues": np.linalg.eigvalsh(Q_n).tolist(),
                            "Q_star_rel_distance_to_Sigma_inverse": float(np.linalg.norm(Q_n - Sigma_inv)
                                                                          / np.linalg.norm(Q_n))},
        # from W0 = M, and from W0 = 0 (the population optimum's end-to-end map, which its α² terms force)
        "Sigma_inverse_map_at_finite_n": {
            "loss": sigma_inv_loss,
            "loss_from_W0_zero": gaussian_lr.expected_one_step_map_loss(fam, Sigma_inv, W0=np.zeros_like(M0))},
        "optimum": {
            "value": opt["value"],
            "starts": [{"value": r["value"], "iterations": r["iterations"], "gradient_max_abs": r["gradient_max_abs"]}
                       for r in opt["starts"]],
            "value_spread_across_starts": float(max(r["value"] for r in opt["starts"])
                                                - min(r["value"] for r in opt["starts"])),
            "alpha_P_spread_across_starts": float(max(np.linalg.norm(r["alpha_P"] - target) for r in opt["starts"])
                                                  / np.linalg.norm(target)),
            "alpha_P_eigenvalues": t.tolist(),
            "alpha_P_rel_distance_to_Q_star": float(np.linalg.norm(target - Q_n) / np.linalg.norm(Q_n)),
            "alpha_P_rel_distance_to_Sigma_inverse": float(np.linalg.norm(target - Sigma_inv) / np.linalg.norm(Q_n)),
            "end_to_end": end_to_end(opt["weights"]).tolist(),
            "end_to_end_rel_distance_to_task_mean": float(np.linalg.norm(end_to_end(opt["weights"]) - M0)
                                                          / np.linalg.norm(M0)),
            "loss_over_best_linear_map": opt["value"] / Q_loss,
            "fraction_of_linear_gain_captured": captured(opt["value"]),
            "imbalance": _imbalance(opt["weights"]),
        },
        "population_L2_at_finite_n": {"optimum_loss": exact(population_weights["optimum"]),
                                      "trained_loss": exact(population_weights["trained"])},
        "trained": {
            "exact_loss_final": final_loss,
            "held_out_loss_final": {"mean": float(mc_mean), "ci95": float(mc_half), "tasks": cfg["test_tasks"]},
            "exact_loss_last100_mean": float(np.mean(tail)),
            "loss_over_optimum_last100": float(np.mean(tail)) / opt["value"],
            "fraction_of_linear_gain_captured_last100": captured(float(np.mean(tail))),
            "ratio_to_target_per_direction_last100": (stats["along"][last].mean(axis=0) / stats["t"]).tolist(),
            "alpha_P_along_target_eigenvectors_last100": stats["along"][last].mean(axis=0).tolist(),
            "offdiagonal_fraction_last100": float(stats["offdiag"][last].mean()),
            "max_eigenvector_angle_deg_last100": float(stats["angle_deg"][last].mean()),
            "initial_ratio_to_target_per_direction": (stats["along"][0] / stats["t"]).tolist(),
            "end_to_end": end_to_end(final).tolist(),
            "imbalance": _imbalance(final),
            "meta_seconds": round(run.seconds, 3),
        },
        "Sigma_inverse_along_target_eigenvectors": np.einsum("di,de,ei->i", U, Sigma_inv, U).tolist(),
        "Q_star_along_target_eigenvectors": np.einsum("di,de,ei->i", U, Q_n, U).tolist(),
    }
    arrays = dict(stats, recorded=np.array(recorded), exact_curve=exact_curve)
    return numbers, arrays


def compute(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    fam = family(cfg)
    f, alpha, window = cfg["family"], cfg["inner_lr"], cfg["window"]
    Sigma, Omega, s = covariances(f)
    population = PopulationSupport(fam)
    M0, Q_pop = gaussian_lr.optimal_one_step_map(fam, population=True)
    finite_n = f["finite_n_for_comparison"]
    Q_finite = gaussian_lr.optimal_one_step_map(family(cfg, finite_n), population=False)[1]
    best_alpha, best_scalar_loss = gaussian_lr.best_scalar_lr(fam, population=True)
    M = fam.task_mean
    numbers = {
        "Sigma_eigenvalues": s.tolist(), "Omega_eigenvalues": f["task_cov_eigenvalues"],
        "matrix_map": {"Q_star_eigenvalues": np.linalg.eigvalsh(Q_pop).tolist(),
                       "Q_star_vs_Sigma_inverse_max_rel_diff": float(np.abs(Q_pop - np.linalg.inv(Sigma)).max()
                                                                     / np.abs(Q_pop).max()),
                       "W0_star": M0.tolist(),
                       "loss": gaussian_lr.expected_one_step_map_loss(fam, Q_pop, population=True)},
        "finite_n_matrix_map_rel_distance_to_population": {
            "n": finite_n, "value": float(np.linalg.norm(Q_finite - Q_pop) / np.linalg.norm(Q_pop))},
        "population_support_gradient_max_abs_deviation": population.gradient_deviation(seed=cfg["seed"]),
        "shallow": {"best_scalar_alpha": best_alpha, "best_scalar_loss": best_scalar_loss,
                    "loss_at_inner_lr": gaussian.expected_post_adaptation_loss(M, fam, alpha, 1, population=True),
                    "no_adaptation_loss": gaussian.expected_post_adaptation_loss(M, fam, 0.0, 0)},
        "noise_floor": 0.5 * f["noise_std"] ** 2,
        "models": {},
    }
    arrays = {}
    population_L2 = {}
    tasks = population.sample(cfg["test_tasks"], cfg["test_seed"])
    for label, widths in cfg["deep_widths"].items():
        chain = deep(f["d_in"], 1, widths)
        opt = deep_optimum(chain.sizes, fam, alpha, starts=cfg["optimum_starts"][label],
                           excess=cfg["optimum_excess"][label], seed=cfg["optimum"]["seed"],
                           init_scale=cfg["optimum"]["init_scale"], max_iterations=cfg["optimum"]["max_iterations"])
        target = alpha * preconditioner(opt["weights"])
        run = meta_train(chain, population, lr=alpha, steps=cfg["inner_steps_meta_training"],
                         meta_steps=cfg["meta_iterations"], meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"],
                         optimizer=cfg["meta_optimizer"], init_scale=cfg["init_scale"], seed=cfg["seed"])
        aP = np.stack([alpha * preconditioner([W[k] for W in run.weights]) for k in range(run.meta_steps + 1)])
        # The closed form on the recorded weights against the simulator's own autograd P = J Jᵀ.
        autograd = alpha * run.preconditioner_eigenvalues
        agreement = float(np.abs(np.linalg.eigvalsh(aP) - autograd).max() / np.abs(autograd).max())
        stats = direction_statistics(aP, target)
        last = slice(-window, None)
        ratio = stats["along"][last].mean(axis=0) / stats["t"]
        weights_final = run.weights_at()
        final_np = [W.numpy() for W in weights_final]
        W_e = end_to_end(final_np)
        exact_final = gaussian.expected_post_adaptation_loss(final_np, fam, alpha)
        # What the α² (and α³) terms change: exact loss minus that of the same α·P as a matrix step from
        # the same start (either sign).
        first_order = gaussian_lr.expected_one_step_map_loss(fam, aP[-1], W0=W_e, population=True)
        held_out = per_task_curves(chain, weights_final, tasks, alpha, 1)["loss"][1]
        mc_mean, mc_half = mean_ci(held_out)
        imbalance = [_imbalance([W[k] for W in run.weights]) for k in range(run.meta_steps + 1)]
        numbers["models"][label] = {
            "sizes": list(chain.sizes),
            "optimum": {
                "value": opt["value"], "excess_over_floor": opt["value"] - opt["floor"],
                "starts": [{"value": r["value"], "iterations": r["iterations"]} for r in opt["starts"]],
                "alpha_P_spread_across_starts": float(max(np.linalg.norm(r["alpha_P"] - target) for r in opt["starts"])
                                                      / np.linalg.norm(target)),
                "alpha_P_eigenvalues": stats["t"].tolist(),
                "alpha_P_vs_matrix_map_rel_diff": float(np.linalg.norm(target - Q_pop) / np.linalg.norm(Q_pop)),
                "end_to_end": end_to_end(opt["weights"]).tolist(),
                "gradient_max_abs": float(max(np.abs(g).max() for g in
                                              gaussian.expected_post_adaptation_loss_and_grad(opt["weights"], fam,
                                                                                              alpha)[1])),
                "imbalance": _imbalance(opt["weights"]),
            },
            # The one statistic: means over the last `window` meta-iterations.
            "last100": {
                "alpha_P_along_target_eigenvectors": stats["along"][last].mean(axis=0).tolist(),
                "ratio_to_target_per_direction": ratio.tolist(),
                "offdiagonal_fraction": float(stats["offdiag"][last].mean()),
                "max_eigenvector_angle_deg": float(stats["angle_deg"][last].mean()),
                "condition_number": float(stats["condition"][last].mean()),
                "imbalance": float(np.mean(imbalance[-window:])),
                "meta_loss": float(run.meta_loss[last].mean()),
            },
            "initial": {"ratio_to_target_per_direction": (stats["along"][0] / stats["t"]).tolist(),
                        "offdiagonal_fraction": float(stats["offdiag"][0]),
                        "max_eigenvector_angle_deg": float(stats["angle_deg"][0]),
                        "condition_number": float(stats["condition"][0])},
            "trained": {"end_to_end": W_e.tolist(), "exact_loss": exact_final,
                        "same_alpha_P_as_matrix_step_loss": first_order,
                        "alpha_squared_terms_effect": exact_final - first_order,
                        "held_out_loss": {"mean": float(mc_mean), "ci95": float(mc_half), "tasks": cfg["test_tasks"]}},
            "closed_form_vs_autograd_eigenvalues_max_rel_diff": agreement,
            "meta_seconds": round(run.seconds, 3),
        }
        arrays[label] = dict(stats, meta_loss=run.meta_loss)
        if label == cfg["finite_n"]["model"]:
            population_L2 = {"optimum": opt["weights"], "trained": final_np}
    numbers["finite_n"], arrays["finite_n"] = finite_n_panel(cfg, population_L2)
    settings = dict(cfg, model="simulator.deep(d_in, 1, widths), every layer adapts, trained by simulator.meta_train",
                    training_support="PopulationSupport: X = sqrt(d) Sigma^(1/2), noise-free targets (population gradient)",
                    target="alpha*P at the minimiser of the exact deep expectation (closedform.gaussian, alpha^2 terms in)",
                    statistic="mean over the last `window` meta-iterations")
    return {"figure": NAME, "settings": settings, "numbers": numbers, "_arrays": arrays}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    num, cfg, arr = result["numbers"], result["settings"], result["_arrays"]
    alpha, labels = cfg["inner_lr"], [label for label in arr if label != "finite_n"]
    fig, axes = plt.subplots(3, 3, figsize=(17, 13.5))
    dir_colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for ax, label, letter in zip(axes[0, :2], labels, "ab"):
        a, m = arr[label], num["models"][label]
        steps = np.arange(a["along"].shape[0])
        for i in range(a["along"].shape[1]):
            color = dir_colors[i % len(dir_colors)]
            ax.plot(steps, a["along"][:, i], color=color, lw=1.2, label=rf"$u_{i + 1}^\top(\alpha P)u_{i + 1}$")
            ax.axhline(a["t"][i], color=color, ls="--", lw=1)
        ax.axhline(alpha, color="gray", ls=":", lw=1.2, label=rf"Shallow: $\alpha$ = {alpha}")
        ax.axhline(num["shallow"]["best_scalar_alpha"], color="k", ls="-.", lw=1,
                   label=rf"best scalar $\alpha^*$ = {num['shallow']['best_scalar_alpha']:.2f}")
        ax.set_yscale("log")
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(r"$\alpha P$ along the target's eigenvectors $u_i$")
        ratios = ", ".join(f"{r:.3f}" for r in m["last100"]["ratio_to_target_per_direction"])
        ax.set_title(f"({letter}) Deep {label}: dashed = target $t_i$ (deep optimum, = $\\Sigma^{{-1}}$)\n"
                     f"last-100 mean ratio to $t_i$: {ratios}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right", ncol=2)

    ax = axes[0, 2]
    x = np.arange(len(num["Sigma_eigenvalues"]))
    width = 0.16
    ax.bar(x - 2 * width, num["matrix_map"]["Q_star_eigenvalues"], width, color="k",
           label=r"matrix map $Q^* = \Sigma^{-1}$ (population)")
    for k, (label, color) in enumerate(zip(labels, ["tab:red", "tab:purple"])):
        m = num["models"][label]
        ax.bar(x + (2 * k - 1) * width, m["optimum"]["alpha_P_eigenvalues"], width, color=color, alpha=0.45,
               label=rf"Deep {label} optimum $\alpha P^*$")
        ax.bar(x + 2 * k * width, m["last100"]["alpha_P_along_target_eigenvectors"], width, fill=False, hatch="//",
               edgecolor=color, label=rf"Deep {label} learned, $u_i^\top(\alpha P)u_i$ (last-100 mean)")
    ax.axhline(alpha, color="gray", ls=":", lw=1.2, label=rf"Shallow $\alpha$")
    ax.set_xticks(x, [f"$t_{i + 1}$" for i in x])
    ax.set_yscale("log")
    ax.set_title("(c) eigenvalue by eigenvalue: deep optimum, matrix map, learned", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, axis="y", which="both")

    colors = {"L=2": "tab:red", "L=3": "tab:purple"}
    ax = axes[1, 0]
    for label in labels:
        m = num["models"][label]["last100"]
        ax.plot(arr[label]["offdiag"], color=colors.get(label), label=f"Deep {label} (last-100 mean {m['offdiagonal_fraction']:.4f})")
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(r"$\|\mathrm{offdiag}(U^\top \alpha P\, U)\|_F \;/\; \|U^\top \alpha P\, U\|_F$")
    ax.set_title("(d) the learned direction: off-diagonal part in the target's eigenbasis", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    for label in labels:
        m = num["models"][label]["last100"]
        ax.plot(arr[label]["angle_deg"], color=colors.get(label),
                label=f"Deep {label} (last-100 mean {m['max_eigenvector_angle_deg']:.2f}°)")
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("largest angle between matched eigenvectors (degrees)")
    ax.set_title(r"(e) eigenvectors of $\alpha P$ against the target's", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax = axes[1, 2]
    for label in labels:
        ax.plot(running_mean(arr[label]["meta_loss"], 25), color=colors.get(label), label=f"Deep {label} (running mean of 25)")
    ax.axhline(num["noise_floor"], color="k", ls="--", lw=1,
               label=r"deep optimum = matrix map = noise floor $\frac{1}{2}\sigma^2$")
    ax.axhline(num["shallow"]["best_scalar_loss"], color="k", ls="-.", lw=1, label=r"Shallow, best scalar $\alpha^*$")
    ax.axhline(num["shallow"]["loss_at_inner_lr"], color="gray", ls=":", lw=1.2, label=r"Shallow at $\alpha$")
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("MAML objective (query loss after 1 population step)")
    ax.set_title("(f) meta-training loss", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _draw_finite_n(axes[2], num["finite_n"], arr["finite_n"], alpha, dir_colors)
    f = cfg["family"]
    fig.suptitle(f"Depth learns a preconditioner's direction: x ~ N(0, Σ), κ(Σ) = {f['kappa']:g}, w ~ N(m, Ω), Ω ≠ ωI, "
                 f"d = {f['d_in']}, σ = {f['noise_std']}; population inner step, α = {alpha}; "
                 f"{cfg['meta_iterations']} meta-iterations.\nRows 1-2: population inner step; row 3: "
                 f"n = {num['finite_n']['n_support']} noisy support points, Deep {cfg['finite_n']['model']}",
                 fontsize=11)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


def _draw_finite_n(axes, fn: dict, a: dict, alpha: float, dir_colors) -> None:
    """Row 3: panels (g)–(i), the finite-n counterpart of (a), (c) and (f)."""
    n = fn["n_support"]
    ax = axes[0]
    steps = np.arange(a["along"].shape[0])
    for i in range(a["along"].shape[1]):
        color = dir_colors[i % len(dir_colors)]
        ax.plot(steps, a["along"][:, i], color=color, lw=1.0, label=rf"$u_{i + 1}^\top(\alpha P)u_{i + 1}$")
        ax.axhline(a["t"][i], color=color, ls="--", lw=1)
        ax.axhline(fn["Sigma_inverse_along_target_eigenvectors"][i], color=color, ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(r"$\alpha P$ along the finite-n target's eigenvectors $u_i$")
    ratios = ", ".join(f"{r:.2f}" for r in fn["trained"]["ratio_to_target_per_direction_last100"])
    ax.set_title(f"(g) n = {n}, MAML on sampled tasks: dashed = deep finite-n optimum $t_i$,\n"
                 f"dotted = $u_i^\\top\\Sigma^{{-1}}u_i$ (population target); last-100 ratio to $t_i$: {ratios}",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right", ncol=2)

    ax = axes[1]
    x = np.arange(len(a["t"]))
    width = 0.2
    ax.bar(x - 1.5 * width, fn["Sigma_inverse_along_target_eigenvectors"], width, color="lightgray",
           label=r"$u_i^\top\Sigma^{-1}u_i$ (the population optimum)")
    ax.bar(x - 0.5 * width, fn["Q_star_along_target_eigenvectors"], width, color="k",
           label=rf"$u_i^\top Q^*_n u_i$, best linear map at n = {n}")
    ax.bar(x + 0.5 * width, fn["optimum"]["alpha_P_eigenvalues"], width, color="tab:red", alpha=0.45,
           label=r"$t_i$: deep finite-n optimum $\alpha P^*_n$")
    ax.bar(x + 1.5 * width, fn["trained"]["alpha_P_along_target_eigenvectors_last100"], width, fill=False, hatch="//",
           edgecolor="tab:red", label=r"MAML-trained, $u_i^\top(\alpha P)u_i$ (last-100 mean)")
    ax.set_xticks(x, [f"$t_{i + 1}$" for i in x])
    ax.set_yscale("log")
    ax.set_title(f"(h) n = {n}: the optimum is no longer $\\Sigma^{{-1}}$; $\\alpha P^*_n$ vs $Q^*_n$: rel. distance "
                 f"{fn['optimum']['alpha_P_rel_distance_to_Q_star']:.1e}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, axis="y", which="both")

    ax = axes[2]
    ax.plot(a["recorded"], a["exact_curve"], color="tab:red", lw=1.2, label="MAML-trained Deep, exact finite-n loss")
    lines = [(fn["best_scalar_step"]["loss"], "k", "-.", "Shallow, best scalar step"),
             (fn["Sigma_inverse_map_at_finite_n"]["loss"], "gray", ":",
              r"matrix step $\Sigma^{-1}$ (population optimum)"),
             (fn["population_L2_at_finite_n"]["optimum_loss"], "tab:purple", ":",
              "population-optimal Deep, used at this n"),
             (fn["best_linear_map"]["loss"], "k", "--", r"best linear map $Q^*_n$"),
             (fn["optimum"]["value"], "tab:red", "--", "deep finite-n optimum (L-BFGS)")]
    for value, color, style, label in lines:
        ax.axhline(value, color=color, ls=style, lw=1.1, label=f"{label}: {value:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(f"exact expected query loss after one step on n = {n} points")
    ax.set_title(f"(i) exact finite-n losses; trained last-100 mean {fn['trained']['exact_loss_last100_mean']:.4f} = "
                 f"{fn['trained']['loss_over_optimum_last100']:.3f} x optimum", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def summary(record: dict) -> list[str]:
    """One line per deep model (printed by ``main``)."""
    return [f"Deep {label}: last-100 mean ratio of alpha*P to the deep optimum per direction "
            f"{np.round(m['last100']['ratio_to_target_per_direction'], 3).tolist()}, off-diagonal part "
            f"{m['last100']['offdiagonal_fraction']:.4f}" for label, m in record["numbers"]["models"].items()]


run, main = figure_module(NAME, __doc__, compute, draw, summary=summary,
                          quick_help="short meta-training (a few seconds)")

if __name__ == "__main__":
    main()
