"""Every figure module (linmaml.analysis.fig_*) in quick mode: the shared interface (NAME, run(out_dir, quick) writing
NAME.png and NAME.json atomically and returning the JSON's dict), and, for the simulator figures,
their numbers against independent recomputations (numpy closed forms, direct CI formulas, Monte
Carlo estimates with their standard errors)."""
from __future__ import annotations

import importlib
import json
import math
import pkgutil

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from linmaml.closedform import deep_linear as cf  # noqa: E402
from linmaml.tasks import ClassificationFamily, RegressionFamily  # noqa: E402

import linmaml.analysis  # noqa: E402

SCRIPTS = sorted(m.name for m in pkgutil.iter_modules(linmaml.analysis.__path__) if m.name.startswith("fig_"))


def _load(script: str):
    return importlib.import_module(f"linmaml.analysis.{script}")


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Run each script once in quick mode (cached for the module): name -> (record, out_dir)."""
    cache = {}

    def get(script):
        if script not in cache:
            out = tmp_path_factory.mktemp(script)
            module = _load(script)
            cache[script] = (module, module.run(out, quick=True), out)
        return cache[script]

    return get


def test_there_are_analysis_scripts():
    assert {"fig_adaptation", "fig_preconditioner", "fig_remedies", "fig_surface"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_follows_the_interface(script, quick_runs):
    module, record, out = quick_runs(script)
    name = module.NAME
    assert isinstance(name, str) and name
    on_disk = json.loads((out / f"{name}.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["figure"] == name and isinstance(record["settings"], dict) and isinstance(record["numbers"], dict)
    assert record["settings"].get("quick") is True
    with Image.open(out / f"{name}.png") as image:
        assert image.format == "PNG" and min(image.size) > 200
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def _t975(n):
    return stats.t.ppf(0.975, n - 1)


def test_adaptation_numbers_recomputed_with_the_closed_forms(quick_runs):
    _, record, _ = quick_runs("fig_adaptation")
    cfg, num = record["settings"], record["numbers"]
    r, c = cfg["regression"], cfg["classification"]
    families = {
        "regression": RegressionFamily(r["d_in"], r["d_out"], task_mean=r["task_mean"], task_cov=r["task_var"],
                                       x_cov=r["x_var"], noise_std=r["noise_std"], n_support=r["n_support"],
                                       n_query=r["n_query"]),
        "classification": ClassificationFamily(c["d_in"], task_mean=c["task_mean"], task_cov=c["task_var"],
                                               x_cov=c["x_var"], flip=c["flip"], n_support=c["n_support"],
                                               n_query=c["n_query"]),
    }
    n = cfg["test_tasks"]
    per_task = {}
    for problem, family in families.items():
        tasks = family.sample(n, cfg["test_seed"])
        for curve in num[problem]["curves"]:
            model = num[problem]["models"][curve["name"]]
            weights = [np.array(W) for W in model["weights"]]
            loss = np.zeros((2, n))
            acc = np.zeros((2, n))
            for t, (Xs, Ys, Xq, Yq) in enumerate(tasks):
                for k in (0, 1):
                    adapted = cf.adapt(weights, Xs, Ys, cfg["inner_lr"], k, "squared" if problem == "regression" else "logistic")
                    loss[k, t] = cf.task_loss(adapted, Xq, Yq, "squared" if problem == "regression" else "logistic")
                    acc[k, t] = np.mean((Xq @ cf.end_to_end(adapted).T > 0) == (Yq > 0.5))
            per_task[curve["name"]] = (loss, acc)
            np.testing.assert_allclose(curve["loss_mean"][:2], loss.mean(axis=1), rtol=1e-10)
            np.testing.assert_allclose(curve["loss_ci"][:2], _t975(n) * loss.std(axis=1, ddof=1) / math.sqrt(n), rtol=1e-8)
            if problem == "classification":
                np.testing.assert_allclose(curve["accuracy_mean"][:2], acc.mean(axis=1), rtol=1e-12)
            assert len(curve["loss_mean"]) == cfg["eval_inner_steps"] + 1
    shallow_name, deep_name = (cv["name"] for cv in num["regression"]["curves"])
    logr_name, linnet_name = (cv["name"] for cv in num["classification"]["curves"])
    ratio = per_task[deep_name][0][1].mean() / per_task[shallow_name][0][1].mean()
    assert num["regression"]["one_step"]["deep_over_shallow"]["ratio"] == pytest.approx(ratio, rel=1e-10)
    # the exact paired block, seed 0, by hand: one closed-form inner step, then ½‖W′ − W_τ‖²_Σ + ½σ²
    ex = num["regression"]["exact_paired"]
    tasks = families["regression"].sample(ex["tasks"], np.random.default_rng(ex["seed"]))
    exact = {}
    for name in (shallow_name, deep_name):
        weights = [np.array(W) for W in num["regression"]["models"][name]["weights"]]
        D = np.stack([cf.end_to_end(cf.adapt(weights, Xs, Ys, cfg["inner_lr"], 1)) for Xs, Ys, _, _ in tasks]) - tasks.W
        exact[name] = 0.5 * r["x_var"] * np.sum(D ** 2, axis=(1, 2)) + 0.5 * r["noise_std"] ** 2
    seed0 = ex["deep_over_shallow"]["per_seed"][0]["ratio"]
    assert seed0 == pytest.approx(exact[deep_name].mean() / exact[shallow_name].mean(), rel=1e-9)
    assert num["criteria"]["deep_over_shallow_one_step_query_loss"]["value"] == ex["deep_over_shallow"]["ratio"]
    # classification, seed 0 on the large-query tasks, by hand
    sp = num["classification"]["seeds_paired"]
    big = ClassificationFamily(c["d_in"], task_mean=c["task_mean"], task_cov=c["task_var"], x_cov=c["x_var"],
                               flip=c["flip"], n_support=c["n_support"], n_query=sp["query_points"])
    accs = {}
    for name in (logr_name, linnet_name):
        weights = [np.array(W) for W in num["classification"]["models"][name]["weights"]]
        accs[name] = np.array([100 * np.mean((Xq @ cf.end_to_end(cf.adapt(weights, Xs, Ys, cfg["inner_lr"], 1,
                                                                             "logistic")).T > 0) == (Yq > 0.5))
                               for Xs, Ys, Xq, Yq in big.sample(sp["tasks"], sp["seed"])])
    assert sp["accuracy_gap_points"]["per_seed"][0] == pytest.approx((accs[linnet_name] - accs[logr_name]).mean(),
                                                                     abs=1e-9)


def _one_step_losses_from_mean(f: dict, c_values, n_tasks: int, seed: int):
    """Monte Carlo: query loss of W' = M − c·G (G the support gradient at the task mean M), per task
    and per c, on common random tasks of the isotropic regression family."""
    fam = RegressionFamily(f["d_in"], f["d_out"], task_mean=f["task_mean"], task_cov=f["task_var"], x_cov=f["x_var"],
                           noise_std=f["noise_std"], n_support=f["n_support"], n_query=f["n_query"])
    b = fam.sample(n_tasks, seed)
    M = np.broadcast_to(fam.task_mean, b.W.shape)
    G = np.swapaxes(b.Xs @ np.swapaxes(M, 1, 2) - b.Ys, 1, 2) @ b.Xs / f["n_support"]
    out = []
    for c in c_values:
        W = M - c * G
        resid = b.Xq @ np.swapaxes(W, 1, 2) - b.Yq
        out.append(0.5 * (resid ** 2).sum(axis=(1, 2)) / f["n_query"])
    return np.array(out)


def _anisotropic_covariances(f: dict):
    """Σ and Ω of figure 3's family, built here from its settings (QR of seeded Gaussians, signs fixed)."""
    def rot(seed):
        q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((f["d_in"], f["d_in"])))
        return q @ np.diag(np.sign(np.diag(r)))

    s = f["kappa"] ** (-np.arange(f["d_in"]) / (f["d_in"] - 1))
    s = s / s.mean()
    U, V = rot(f["x_rotation_seed"]), rot(f["task_rotation_seed"])
    return U @ np.diag(s) @ U.T, V @ np.diag(f["task_cov_eigenvalues"]) @ V.T


def test_preconditioner_quick_numbers_against_independent_computations(quick_runs):
    _, record, _ = quick_runs("fig_preconditioner")
    cfg, num = record["settings"], record["numbers"]
    Sigma, Omega = _anisotropic_covariances(cfg["family"])
    assert np.linalg.cond(Sigma) == pytest.approx(cfg["family"]["kappa"], rel=1e-10)
    assert not np.allclose(Omega, Omega[0, 0] * np.eye(len(Omega)))
    inverse_eig = np.sort(1 / np.linalg.eigvalsh(Sigma))
    np.testing.assert_allclose(num["matrix_map"]["Q_star_eigenvalues"], inverse_eig, rtol=1e-12)
    assert num["matrix_map"]["loss"] == pytest.approx(0.5 * cfg["family"]["noise_std"] ** 2, rel=1e-12)
    assert num["population_support_gradient_max_abs_deviation"] < 1e-12
    for label, m in num["models"].items():
        opt = m["optimum"]
        assert m["closed_form_vs_autograd_eigenvalues_max_rel_diff"] < 1e-10
        assert 0 <= opt["excess_over_floor"] <= cfg["optimum_excess"][label]
        # At the floor the residual's linear part vanishes: α·P* = Σ⁻¹ (to ~√excess).
        np.testing.assert_allclose(opt["alpha_P_eigenvalues"], inverse_eig, rtol=1e-2)
        # The held-out Monte Carlo (simulator's autograd inner step) against the exact expectation
        # (Isserlis) at the trained weights: within 3 standard errors (ci95 = 1.97 SE).
        held = m["trained"]["held_out_loss"]
        assert abs(held["mean"] - m["trained"]["exact_loss"]) < 3 * held["ci95"] / stats.t.ppf(0.975, held["tasks"] - 1)


def test_preconditioner_finite_n_panel_against_independent_computations(quick_runs):
    from linmaml.analysis import fig_preconditioner as fp
    from linmaml.closedform.gaussian import expected_post_adaptation_loss_and_grad

    _, record, _ = quick_runs("fig_preconditioner")
    cfg, fn = record["settings"], record["numbers"]["finite_n"]
    Sigma, _ = _anisotropic_covariances(cfg["family"])
    # The simulator's sampled support sets and autograd step against the exact finite-n expectation.
    held = fn["trained"]["held_out_loss_final"]
    assert abs(held["mean"] - fn["trained"]["exact_loss_final"]) < 3 * held["ci95"] / stats.t.ppf(0.975,
                                                                                                   held["tasks"] - 1)
    # Every start reaches the same optimum; it is a stationary point of the exact expectation.
    assert fn["optimum"]["value_spread_across_starts"] < 1e-10
    assert max(s["gradient_max_abs"] for s in fn["optimum"]["starts"]) < 1e-6
    # What changes at finite n: the optimum's α·P is the best linear map Q*_n, far from Σ⁻¹.
    np.testing.assert_allclose(fn["optimum"]["alpha_P_eigenvalues"], fn["Q_star_along_target_eigenvectors"], rtol=1e-2)
    assert fn["optimum"]["alpha_P_rel_distance_to_Sigma_inverse"] > 0.3
    inverse_along = np.asarray(fn["Sigma_inverse_along_target_eigenvectors"])
    assert inverse_along.sum() == pytest.approx(np.trace(np.linalg.inv(Sigma)), rel=1e-12)  # a basis of R^d
    # Ordering of the exact losses, and the captured fraction recomputed from them.
    scalar, linear, optimum = fn["best_scalar_step"]["loss"], fn["best_linear_map"]["loss"], fn["optimum"]["value"]
    assert linear < scalar and optimum < scalar
    assert fn["optimum"]["fraction_of_linear_gain_captured"] == pytest.approx((scalar - optimum) / (scalar - linear))
    # The optimum recomputed here from one other start (seeded differently) reaches the same value.
    fam = fp.family(cfg, fn["n_support"])
    sizes = (cfg["family"]["d_in"], *cfg["deep_widths"][cfg["finite_n"]["model"]], 1)
    again = fp.deep_optimum(sizes, fam, cfg["inner_lr"], starts=1, excess=None, seed=123, population=False)
    assert again["value"] == pytest.approx(optimum, rel=1e-9)
    _, grads = expected_post_adaptation_loss_and_grad(again["weights"], fam, cfg["inner_lr"], population=False)
    assert max(np.abs(g).max() for g in grads) < 1e-6


def _monte_carlo_one_population_step(layers, M, Sigma, Omega, noise_std, alpha, tasks, n_query, seed):
    """Per-task query loss after one population inner step on every layer, written out by hand:
    G = (W_e − W_τ)Σ, layer j moves by −α A_jᵀ G B_jᵀ; query points x ~ N(0, Σ), noise σ."""
    rng = np.random.default_rng(seed)
    d = Sigma.shape[0]
    L = len(layers)
    Wt = M + (np.linalg.cholesky(Omega) @ rng.standard_normal((tasks, d, 1)))[..., 0][:, None, :]
    out = np.empty(tasks)
    chol = np.linalg.cholesky(Sigma)
    for t in range(tasks):
        We = layers[0]
        for W in layers[1:]:
            We = W @ We
        G = (We - Wt[t]) @ Sigma
        new = []
        for j in range(L):
            A = np.eye(layers[-1].shape[0])
            for W in layers[j + 1:][::-1]:
                A = A @ W
            B = np.eye(d)
            for W in layers[:j]:
                B = W @ B
            new.append(layers[j] - alpha * A.T @ G @ B.T)
        Wa = new[0]
        for W in new[1:]:
            Wa = W @ Wa
        X = rng.standard_normal((n_query, d)) @ chol.T
        y = X @ Wt[t].T + noise_std * rng.standard_normal((n_query, 1))
        out[t] = 0.5 * np.mean((X @ Wa.T - y) ** 2)
    return out


def test_deep_optimum_is_a_true_minimum():
    from linmaml.analysis import fig_preconditioner as fp
    from linmaml.closedform.gaussian import expected_post_adaptation_loss, expected_post_adaptation_loss_and_grad

    cfg = fp.SETTINGS
    fam = fp.family(cfg)
    alpha, f = cfg["inner_lr"], cfg["family"]
    sizes = (f["d_in"], *cfg["deep_widths"]["L=2"], 1)
    opt = fp.deep_optimum(sizes, fam, alpha, starts=2, excess=1e-12, seed=5)
    layers = opt["weights"]
    value, grads = expected_post_adaptation_loss_and_grad(layers, fam, alpha)
    assert value - opt["floor"] < 1e-12
    assert max(np.abs(g).max() for g in grads) < 1e-5
    # Central differences of the exact expectation along random directions: ≈ 0 as well.
    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(3):
        dirs = [rng.standard_normal(W.shape) for W in layers]
        plus = expected_post_adaptation_loss([W + h * D for W, D in zip(layers, dirs)], fam, alpha)
        minus = expected_post_adaptation_loss([W - h * D for W, D in zip(layers, dirs)], fam, alpha)
        assert abs(plus - minus) / (2 * h) < 1e-4
    # Random perturbations increase it (a minimum, not a saddle).
    for _ in range(30):
        dirs = [rng.standard_normal(W.shape) for W in layers]
        norm = np.sqrt(sum((D ** 2).sum() for D in dirs))
        moved = expected_post_adaptation_loss([W + 1e-3 * D / norm for W, D in zip(layers, dirs)], fam, alpha)
        assert moved > value
    # The exact expectation against Monte Carlo, at the optimum and at a point away from it.
    Sigma, Omega = _anisotropic_covariances(f)
    M = np.asarray(f["task_mean"])[None, :]
    for point in (layers, [W + 0.3 * rng.standard_normal(W.shape) for W in layers]):
        mc = _monte_carlo_one_population_step(point, M, Sigma, Omega, f["noise_std"], alpha, 4000, 50, 1)
        exact = expected_post_adaptation_loss(point, fam, alpha)
        assert abs(mc.mean() - exact) < 3 * mc.std(ddof=1) / math.sqrt(mc.size)


def test_remedies_one_step_losses_recomputed_by_hand(quick_runs):
    """One inner step written out in numpy from the reported parameters: plain W − αG, KFO
    W − α(LᵀL)G(RᵀR), LinNet and Deep through the closed-form deep-linear adapt."""
    _, record, _ = quick_runs("fig_remedies")
    cfg, num = record["settings"], record["numbers"]
    f, alpha, n = cfg["family"], cfg["inner_lr"], cfg["test_tasks"]
    fam = RegressionFamily(f["d_in"], f["d_out"], task_mean=f["task_mean"], task_cov=f["task_var"], x_cov=f["x_var"],
                           noise_std=f["noise_std"], n_support=f["n_support"], n_query=f["n_query"])
    p = num["final_parameters"]
    losses = {k: np.zeros(n) for k in p}
    for t, (Xs, Ys, Xq, Yq) in enumerate(fam.sample(n, cfg["test_seed"])):
        def query(W):
            return 0.5 * np.sum((Xq @ W.T - Yq) ** 2) / len(Xq)

        for kind in ("plain", "kfo"):
            W = np.array(p[kind]["W"])
            G = (Xs @ W.T - Ys).T @ Xs / len(Xs)
            if kind == "kfo":
                G = np.array(p[kind]["LtL"]) @ G @ np.array(p[kind]["RtR"])
            losses[kind][t] = query(W - alpha * G)
        for kind in ("linnet", "deep"):
            chain = [np.array(W) for W in p[kind]["chain"]]
            losses[kind][t] = query(cf.end_to_end(cf.adapt(chain, Xs, Ys, alpha, 1)))
    for kind, values in losses.items():
        reported = num["one_step_query_loss"][kind]
        assert reported["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert reported["ci95"] == pytest.approx(_t975(n) * values.std(ddof=1) / math.sqrt(n), rel=1e-7)
    # the exact paired block, seed 0: the same adapted maps on the exact tasks, scored by ½‖W′ − W_τ‖²_Σ + ½σ²
    ex = num["exact_paired"]
    tasks = fam.sample(ex["tasks"], np.random.default_rng(ex["seed"]))
    exact = {}
    for kind in p:
        maps = np.empty_like(tasks.W)
        for t, (Xs, Ys, _, _) in enumerate(tasks):
            if kind in ("plain", "kfo"):
                W = np.array(p[kind]["W"])
                G = (Xs @ W.T - Ys).T @ Xs / len(Xs)
                if kind == "kfo":
                    G = np.array(p[kind]["LtL"]) @ G @ np.array(p[kind]["RtR"])
                maps[t] = W - alpha * G
            else:
                maps[t] = cf.end_to_end(cf.adapt([np.array(W) for W in p[kind]["chain"]], Xs, Ys, alpha, 1))
        D = maps - tasks.W
        exact[kind] = 0.5 * f["x_var"] * np.sum(D ** 2, axis=(1, 2)) + 0.5 * f["noise_std"] ** 2
    for kind in ("plain", "kfo", "linnet"):
        seed0 = ex["models"][kind]["over_deep"]["per_seed"][0]["ratio"]
        assert seed0 == pytest.approx(exact[kind].mean() / exact["deep"].mean(), rel=1e-9)
        assert num["one_step_over_deep"][kind]["ratio"] == ex["models"][kind]["over_deep"]["ratio"]
    assert ex["models"]["deep"]["mean_loss_per_seed"][0] == pytest.approx(exact["deep"].mean(), rel=1e-9)


def test_lr_sweep_shallow_curve_is_the_closed_form_and_monte_carlo(quick_runs):
    """Shallow's exact curve against the isotropic one-step formula written out here (Wishart
    moments by hand), and its optimum against a Monte Carlo estimate at c* and its neighbours."""
    _, record, _ = quick_runs("fig_lr_sweep")
    cfg, num = record["settings"], record["numbers"]["regression"]
    f = cfg["regression"]
    d, n, v, w, s2 = f["d_in"], f["n_support"], f["x_var"], f["task_var"], f["noise_std"] ** 2

    def loss(c):
        return f["d_out"] * 0.5 * (w * v * d * (1 - 2 * c * v + c * c * v * v * (n + d + 1) / n)
                                   + c * c * s2 * v * v * d / n + s2)

    exact = num["shallow_exact"]
    np.testing.assert_allclose(exact["query_loss"], [loss(a) for a in exact["alpha"]], rtol=1e-12)
    assert exact["optimal_alpha"] == pytest.approx(w * n / (w * v * (n + d + 1) + s2), rel=1e-12)
    np.testing.assert_allclose(num["shallow_exact_at_grid"], [loss(a) for a in cfg["alphas"]["regression"]], rtol=1e-12)
    c = exact["optimal_alpha"]
    mc = _one_step_losses_from_mean(f, [c, c - 0.2, c + 0.2], 20000, 3)
    assert abs(mc[0].mean() - exact["query_loss_at_optimal_alpha"]) < 4 * mc[0].std(ddof=1) / math.sqrt(mc.shape[1])
    for other in (1, 2):
        diff = mc[other] - mc[0]
        assert diff.mean() > 3 * diff.std(ddof=1) / math.sqrt(diff.size)
    # Every trained model at every alpha: a finite loss with a positive interval; classification has accuracies.
    for rows in num["models"].values():
        assert [r["alpha"] for r in rows] == cfg["alphas"]["regression"]
        assert all(np.isfinite(r["query_loss"]["mean"]) and r["query_loss"]["ci95"] > 0 for r in rows)
    for rows in record["numbers"]["classification"]["models"].values():
        assert all(0 <= r["query_accuracy"]["mean"] <= 1 for r in rows)


def test_direction_references_against_independent_computations(quick_runs):
    """The direction figure's references, recomputed here: Q* from ΩΣ·K⁻¹ (K = (1 + 1/n)ΣΩΣ +
    (tr(ΩΣ) + σ²)Σ/n, another algebra than the library's), the best diagonal map by Nelder–Mead on the
    exact loss written out here, the paired means on sampled tasks against the exact expectations and
    the Bayes floor (standard errors), and each seed's ratio from its own mean losses."""
    from scipy.optimize import minimize

    module, record, _ = quick_runs("fig_direction")
    cfg, num = record["settings"], record["numbers"]
    n, sigma = cfg["n_support"], cfg["noise_std"]
    for key, entry in num["per_kappa"].items():
        kappa = entry["kappa"]
        d = cfg["d_in"]
        q, r = np.linalg.qr(np.random.default_rng(cfg["rotation_seed"]).standard_normal((d, d)))
        U = q * np.sign(np.diag(r))
        s = np.geomspace(1.0, 1.0 / kappa, d)
        s = s * d / s.sum()
        Sigma, Omega = (U * s) @ U.T, (U / s) @ U.T
        assert np.linalg.cond(Sigma) == pytest.approx(kappa, rel=1e-9)
        K = (1 + 1 / n) * Sigma @ Omega @ Sigma + (np.trace(Omega @ Sigma) + sigma ** 2) * Sigma / n

        def loss(Q):
            return 0.5 * (np.trace(Sigma @ Omega) - 2 * np.trace(Q @ Sigma @ Omega @ Sigma)
                          + np.trace(Q.T @ Sigma @ Q @ K)) + 0.5 * sigma ** 2

        Q = Omega @ Sigma @ np.linalg.inv(K)
        np.testing.assert_allclose(entry["Q_star_eigenvalues"], np.sort(np.linalg.eigvals(Q).real), rtol=1e-9)
        exact = entry["exact_expected_loss"]
        assert exact["best_linear_map_Q_star"] == pytest.approx(loss(Q), rel=1e-10)
        diag = minimize(lambda x: loss(np.diag(x)), np.ones(d), method="Nelder-Mead",
                        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 40_000, "maxfev": 40_000})
        np.testing.assert_allclose(entry["best_diagonal_q"], diag.x, rtol=1e-5)
        assert exact["best_diagonal_map"] == pytest.approx(loss(np.diag(diag.x)), rel=1e-8)
        alpha = entry["inner_lr_alpha_star"]
        assert exact["best_scalar_step"] == pytest.approx(loss(alpha * np.eye(d)), rel=1e-10)
        for a in (0.9 * alpha, 1.1 * alpha):
            assert loss(a * np.eye(d)) > exact["best_scalar_step"]
        # the paired tasks' means agree with the exact expectations
        paired = entry["paired_tasks"]["mean_loss"]
        for name, key2 in (("best scalar step", "best_scalar_step"), ("best diagonal map", "best_diagonal_map"),
                           ("best linear map Q*", "best_linear_map_Q_star")):
            assert abs(paired[name]["mean"] - exact[key2]) < 4 * paired[name]["se"]
        floor, bayes = entry["bayes_floor"], paired["Bayes posterior mean"]
        assert abs(bayes["mean"] - floor["mean"]) < 4 * np.hypot(bayes["se"], floor["se"])
        assert floor["mean"] < exact["best_linear_map_Q_star"] <= exact["best_diagonal_map"] <= exact["best_scalar_step"]
        for label, m in entry["models"].items():
            per_seed = [x["ratio"] for x in m["over_Q_star"]["per_seed"]]
            np.testing.assert_allclose(per_seed, np.array(m["mean_loss_per_seed"]) / paired["best linear map Q*"]["mean"],
                                       rtol=1e-12)
            assert m["over_Q_star"]["ci95"] >= m["over_Q_star"]["ci95_tasks"] > 0
    big = num["per_kappa"][str(max(cfg["kappas"]))]
    assert big["best_scalar_over_Q_star_exact"] >= 5.0


def test_direction_stored_training_matches_the_code():
    """The committed figure's trained parameters were produced with the code's full-mode settings."""
    from linmaml.analysis import fig_direction as fd

    cfg = dict(fd.SETTINGS, **fd.FULL)
    stored = fd.stored_training(cfg)
    assert stored is not None, "run python -m linmaml.analysis.fig_direction --retrain"
    assert set(stored["trained"]) == {str(k) for k in cfg["kappas"]}
    for runs in stored["trained"].values():
        assert set(runs) == set(fd.MODELS)
        assert all(len(seeds) == len(cfg["seeds"]) for seeds in runs.values())


def test_surface_zero_set_is_where_the_objective_vanishes(quick_runs):
    """The four zero-set points derived from the family (r = 1/sqrt(alpha V)): one inner step solves
    every task exactly (checked with the inner step written out), and the reported objective is 0."""
    _, record, _ = quick_runs("fig_surface")
    cfg, num = record["settings"], record["numbers"]
    lr, V = cfg["inner_lr"], cfg["x_var"]
    assert len(num["zero_set"]) == 4
    for (w1, w2), value in zip(num["zero_set"], num["zero_set_objective"]):
        assert w1 * w2 == 0 and w1 ** 2 + w2 ** 2 == pytest.approx(1 / (lr * V), rel=1e-14)
        assert value == pytest.approx(0.0, abs=1e-12)
        for a in (-3.0, 0.1, 2.5):
            r = w1 * w2 - a
            assert (w1 - lr * V * r * w2) * (w2 - lr * V * r * w1) == pytest.approx(a, rel=1e-12)
    assert num["deep_final_losses"] == [t["final_loss"] for t in num["deep_trajectories"]]


def test_negative_lr_inits_and_test_losses_against_a_direct_loop_and_monte_carlo(quick_runs):
    """The figure's pieces recomputed independently on its own first draw of training tasks: the
    MAML initialisation by minimising an explicit per-task one-step loop (BFGS, no least squares),
    and its exact test loss by Monte Carlo over fresh tasks with an explicit inner step."""
    from scipy import optimize

    from linmaml.closedform.gaussian import expected_post_adaptation_loss
    from linmaml.closedform.gaussian_lr import maml_trained_init

    module, record, out = quick_runs("fig_negative_lr")
    n = record["numbers"]
    assert (out / "negative_lr.png").exists()
    assert n["best_lr_train"] == n["lr_train"][int(np.argmin(n["test_loss"]))]
    assert all(s > 0 for s in n["se"]) and min(n["test_loss"]) >= n["infinite_tasks_loss"] - 1e-12
    family = module.family(module.SETTINGS)
    batch = family.sample(module.SETTINGS["n_tasks"], np.random.default_rng(module.SETTINGS["seed"]))

    def one_step_query_loss(w, lr):
        W = w.reshape(1, -1)
        total = 0.0
        for Xs, Ys, Xq, Yq in zip(batch.Xs, batch.Ys, batch.Xq, batch.Yq):
            G = (W @ Xs.T - Ys.T) @ Xs / Xs.shape[0]
            fast = W - lr * G
            total += np.sum((Xq @ fast.T - Yq) ** 2) / (2 * Xq.shape[0])
        return total / batch.Xs.shape[0]

    rng = np.random.default_rng(7)
    for lr in (-0.25, 0.0):
        direct = optimize.minimize(one_step_query_loss, np.zeros(5), args=(lr,), method="BFGS",
                                   options={"gtol": 1e-12}).x.reshape(1, -1)
        init = maml_trained_init(batch, lr)
        assert np.linalg.norm(init - direct) / np.linalg.norm(direct) < 1e-5
        tasks = family.sample(20000, rng)
        G = (init[None] @ np.swapaxes(tasks.Xs, 1, 2) - np.swapaxes(tasks.Ys, 1, 2)) @ tasks.Xs / tasks.Xs.shape[1]
        fast = init[None] - n["lr_test"] * G
        losses = np.sum((tasks.Xq @ np.swapaxes(fast, 1, 2) - tasks.Yq) ** 2, axis=(1, 2)) / (2 * tasks.Xq.shape[1])
        exact = expected_post_adaptation_loss(init, family, n["lr_test"], 1)
        assert abs(losses.mean() - exact) / (losses.std(ddof=1) / np.sqrt(losses.size)) < 4
