"""Verification rows for the neighbouring theory: Bernacchia 2021 (training on few tasks at one rate,
testing at another) and Collins, Mokhtari & Shakkottai 2020 (easy and hard tasks) (numpy only).

Each row compares a function of :mod:`linmaml.closedform.bernacchia` or
:mod:`linmaml.closedform.mixture` (named in the row's docstring) with a computation that shares none
of its algebra: Monte Carlo with explicit inner steps and numpy's minimum-norm least squares
(``np.linalg.pinv``) instead of the Gram-matrix traces, or a scalar closed form derived by hand for
isotropic covariances. Statistical rows report the deviation in standard errors (tolerance 3, or 4
where a row takes the worst of many comparisons).
"""
from __future__ import annotations

import numpy as np

from linmaml.checks._common import relative_error, worst_of, z_score
from linmaml.closedform import bernacchia as bern
from linmaml.closedform import mixture as mx
from linmaml.verification import CheckResult, identity

# --------------------------------------------------------------------------------------------------
# Bernacchia: the pieces of one experiment, written out


def _inner_step(omega, X, y, lr):
    """One explicit gradient step on 1/(2n)‖Xω − y‖² for S parameter vectors: omega (S, p), X (n, p), y (S, n)."""
    residual = omega @ X.T - y  # (S, n)
    return omega - lr * residual @ X / X.shape[0]


def _maml_solutions(Xt, Xv, yt, yv, lr):
    """The minimum-norm minimiser of Σ_i ‖y_i^v − X_i^v ω_i′‖² for S label samples on FIXED inputs:
    the adapted map is affine in ω, so its design is read off by stepping from the basis vectors
    (labels 0) and its offset by stepping from ω = 0 (labels y). Xt (m, n_t, p), yt (S, m, n_t)."""
    m, _, p = Xt.shape
    S = yt.shape[0]
    designs, targets = [], []
    for i in range(m):
        basis = _inner_step(np.eye(p), Xt[i], np.zeros((p, Xt.shape[1])), lr)  # row k: step from e_k
        offset = _inner_step(np.zeros((S, p)), Xt[i], yt[:, i], lr)  # (S, p)
        designs.append(Xv[i] @ basis.T)
        targets.append(yv[:, i] - offset @ Xv[i].T)
    design = np.concatenate(designs)  # (m n_v, p)
    target = np.concatenate(targets, axis=1)  # (S, m n_v)
    return target @ np.linalg.pinv(design).T  # (S, p)


def _labels(rng, X, w, sigma):
    """y = X w + σ z for S task draws: X (m, n, p) fixed, w (S, m, p)."""
    return np.einsum("mnp,smp->smn", X, w) + sigma * rng.standard_normal((w.shape[0], X.shape[0], X.shape[1]))


@identity("bernacchia: E‖ω* − w0‖² given the inputs vs Monte Carlo over tasks and label noise (standard errors)", 3.0)
def _conditional_meta_error(rng):
    """Checks linmaml.closedform.bernacchia.conditional_meta_error: fixed training inputs, 20,000 draws of the task
    parameters and label noise, ω* from explicit inner steps and numpy's minimum-norm least squares (pinv), not
    the Gram-matrix trace tr(K⁺R); over- and under-parameterised, training rates of both signs."""
    worst, samples = 0.0, 20_000
    cases = [(7, 2, 4, 2, -0.8), (7, 2, 4, 2, 0.6), (3, 3, 5, 2, -1.5), (4, 4, 6, 1, 0.4)]
    for p, m, n_t, n_v, lr in cases:
        setting = bern.Setting(p=p, m=m, n_t=n_t, n_v=n_v, n_r=3, sigma=float(rng.uniform(0.3, 1.2)),
                               nu=float(rng.uniform(0.3, 1.5)))
        Xt, Xv = rng.standard_normal((m, n_t, p)), rng.standard_normal((m, n_v, p))
        w = setting.nu / np.sqrt(p) * rng.standard_normal((samples, m, p))  # w0 = 0
        omega = _maml_solutions(Xt, Xv, _labels(rng, Xt, w, setting.sigma), _labels(rng, Xv, w, setting.sigma), lr)
        exact = bern.conditional_meta_error(setting, Xt[None], Xv[None], [lr])[0, 0]
        worst = worst_of(worst, z_score(np.sum(omega**2, axis=1), exact))
    return CheckResult(len(cases), worst, f"max |error| in Monte Carlo standard errors ({samples} draws each)")


@identity("bernacchia: e(0) from Wishart inverse moments vs Monte Carlo of whole experiments (standard errors)", 3.0)
def _meta_error_at_zero(rng):
    """Checks linmaml.closedform.bernacchia.meta_error_at_zero (p > m·n_v + 1, α_t = 0): inputs, tasks and noise all
    sampled, ω* = pinv(X_v) y_v (the minimum-norm interpolant) per experiment, mean ‖ω*‖²."""
    worst, experiments = 0.0, 40_000
    cases = [(12, 2, 2), (10, 1, 3), (16, 3, 2)]
    for p, m, n_v in cases:
        setting = bern.Setting(p=p, m=m, n_t=3, n_v=n_v, n_r=3, sigma=float(rng.uniform(0.3, 1.2)),
                               nu=float(rng.uniform(0.3, 1.5)))
        X = rng.standard_normal((experiments, m * n_v, p))
        w = np.repeat(setting.nu / np.sqrt(p) * rng.standard_normal((experiments, m, p)), n_v, axis=1)
        y = np.einsum("snp,snp->sn", X, w) + setting.sigma * rng.standard_normal((experiments, m * n_v))
        omega = np.einsum("spn,sn->sp", np.linalg.pinv(X), y)
        worst = worst_of(worst, z_score(np.sum(omega**2, axis=1), bern.meta_error_at_zero(setting)))
    return CheckResult(len(cases), worst, f"max |error| in Monte Carlo standard errors ({experiments} experiments each)")


@identity("bernacchia: average test loss (exact given inputs, input-averaged) vs whole simulated experiments (standard errors)", 4.0)
def _test_loss(rng):
    """Checks linmaml.closedform.bernacchia.meta_error and linmaml.closedform.bernacchia.test_loss together: whole
    experiments simulated (training inputs, tasks and noise; ω* by explicit inner steps and pinv; a fresh test task
    adapted by one explicit step on n_r sampled noisy points and scored on 10 sampled noisy test points), against
    the exact test-task expectation at e(α_t) averaged over input draws; deviation in combined standard errors,
    over- and under-parameterised, α_t of both signs (worst of 8 comparisons)."""
    worst, experiments, count = 0.0, 6_000, 0
    for p, m, n_t, n_v, n_r in ((8, 2, 6, 2, 5), (3, 4, 6, 2, 4)):
        setting = bern.Setting(p=p, m=m, n_t=n_t, n_v=n_v, n_r=n_r, sigma=float(rng.uniform(0.5, 1.0)),
                               nu=float(rng.uniform(0.5, 1.5)))
        rates, lr_test = [-1.0, 0.3], 0.25
        theory = bern.meta_error(setting, rates, draws=4000, seed=rng)
        losses = {rate: [] for rate in rates}
        for _ in range(experiments):
            Xt, Xv = rng.standard_normal((m, n_t, p)), rng.standard_normal((m, n_v, p))
            w = setting.nu / np.sqrt(p) * rng.standard_normal((1, m, p))
            yt, yv = _labels(rng, Xt, w, setting.sigma), _labels(rng, Xv, w, setting.sigma)
            w_test = setting.nu / np.sqrt(p) * rng.standard_normal(p)
            Xr, Xe = rng.standard_normal((n_r, p)), rng.standard_normal((10, p))
            yr = Xr @ w_test + setting.sigma * rng.standard_normal(n_r)
            ye = Xe @ w_test + setting.sigma * rng.standard_normal(10)
            for rate in rates:
                omega = _maml_solutions(Xt, Xv, yt, yv, rate)
                adapted = _inner_step(omega, Xr, yr[None], lr_test)[0]
                losses[rate].append(0.5 * np.mean((Xe @ adapted - ye) ** 2))
        for k, rate in enumerate(rates):
            sample = np.array(losses[rate])
            exact = float(bern.test_loss(setting, theory["mean"][k], lr_test)[0])
            se = np.hypot(sample.std(ddof=1) / np.sqrt(sample.size), 0.5 * float(bern.adaptation_factor(setting, lr_test)[0])
                          * theory["se"][k])
            worst = worst_of(worst, abs(sample.mean() - exact) / se)
            count += 1
        # the best test rate: the exact minimiser of the test loss at this e (a closed form) vs a fine grid
        e = float(theory["mean"][0])
        grid = np.linspace(-1.0, 2.0, 30001)
        best = grid[np.argmin(bern.test_loss(setting, e, grid))]
        worst = worst_of(worst, abs(best - bern.best_test_rate(setting, e)) / 1e-4)
        count += 1
    return CheckResult(count, worst, f"max |error| in combined standard errors ({experiments} experiments; best "
                                     f"test rate vs a 1e-4 grid in grid steps)")


# --------------------------------------------------------------------------------------------------
# Collins et al.: easy and hard tasks


def _random_landscape(rng, population=False):
    params = dict(d=int(rng.integers(2, 5)), rho_easy=float(rng.uniform(0.8, 1.5)), rho_hard=float(rng.uniform(0.05, 0.4)),
                  spread_easy=float(rng.uniform(0.1, 1.5)), spread_hard=float(rng.uniform(0.01, 1.0)),
                  distance=float(rng.uniform(0.5, 3.0)), weight_hard=float(rng.uniform(0.2, 0.8)),
                  noise_std=float(rng.uniform(0.05, 0.5)), n_support=int(rng.integers(5, 40)), n_query=int(rng.integers(3, 8)))
    lr = float(rng.uniform(0.3, 1.0)) / params["rho_easy"]
    return params, lr


@identity("collins: MAML and ERM solutions and the gain vs the isotropic segment closed form", 1e-10)
def _segment_closed_form(rng):
    """Checks linmaml.closedform.mixture.maml_gain (and the fixed points it uses) on easy/hard mixtures with
    isotropic covariances: by hand, one step on n points gives the scalar curvature
    b = ρ − 2αρ² + α²ρ³(1 + (d + 1)/n) (ρ(1 − αρ)² at the population level), so W_MAML = t_M·D·e₁ with
    t_M = π_H b_H/(π_H b_H + π_E b_E), W_ERM = t_E·D·e₁ with t_E = π_H ρ_H/(π_H ρ_H + π_E ρ_E), and the gain is
    ½D²[π_H b_H((1 − t_E)² − (1 − t_M)²) + π_E b_E(t_E² − t_M²)]. Relative error over (W_MAML, W_ERM, gain)."""
    worst, instances = 0.0, 0
    for population in (False, True, False, True):
        params, lr = _random_landscape(rng)
        d, n, D = params["d"], params["n_support"], params["distance"]
        pe, ph = 1 - params["weight_hard"], params["weight_hard"]

        def curvature(rho):
            if population:
                return rho * (1 - lr * rho) ** 2
            return rho - 2 * lr * rho**2 + lr**2 * rho**3 * (1 + (d + 1) / n)

        be, bh = curvature(params["rho_easy"]), curvature(params["rho_hard"])
        t_m = ph * bh / (ph * bh + pe * be)
        t_e = ph * params["rho_hard"] / (ph * params["rho_hard"] + pe * params["rho_easy"])
        gain = 0.5 * D**2 * (ph * bh * ((1 - t_e) ** 2 - (1 - t_m) ** 2) + pe * be * (t_e**2 - t_m**2))
        e1 = np.zeros((1, d))
        e1[0, 0] = D
        result = mx.maml_gain(mx.easy_hard_mixture(**params), lr, population=population)
        worst = worst_of(worst, relative_error([result["W_maml"], result["W_erm"], np.array(result["gain"])],
                                               [t_m * e1, t_e * e1, np.array(gain)]))
        instances += 1
    return CheckResult(instances, worst, "relative error over (W_MAML, W_ERM, gain)")


@identity("collins: post-adaptation gain and E_ERM/E_MAML vs Monte Carlo with explicit inner steps (standard errors)", 3.0)
def _gain_monte_carlo(rng):
    """Checks linmaml.closedform.mixture.maml_gain on random easy/hard mixtures (finite n): 60,000 tasks drawn from
    the mixture, both solutions adapted by one explicit step on the same sampled noisy support set and scored on
    the same sampled query set (paired); the gain in standard errors of the paired difference and the excess
    ratio in delta-method standard errors."""
    worst, tasks, instances = 0.0, 60_000, 0
    for _ in range(2):
        params, lr = _random_landscape(rng)
        mixture = mx.easy_hard_mixture(**params)
        result = mx.maml_gain(mixture, lr)
        counts = rng.multinomial(tasks, mixture.weights)
        per_task = {"maml": [], "erm": []}
        for comp, count in zip(mixture.components, counts):
            batch = comp.sample(int(count), rng)
            for key in per_task:
                W = result["W_maml" if key == "maml" else "W_erm"]
                residual = batch.Xs @ W.T - batch.Ys
                fast = W[None] - lr * np.swapaxes(residual, 1, 2) @ batch.Xs / batch.Xs.shape[1]
                query = np.einsum("tqi,toi->tqo", batch.Xq, fast) - batch.Yq
                per_task[key].append(0.5 * np.mean(np.sum(query**2, axis=2), axis=1))
        maml, erm = np.concatenate(per_task["maml"]), np.concatenate(per_task["erm"])
        worst = worst_of(worst, z_score(erm - maml, result["gain"]))
        floor = 0.5 * params["noise_std"] ** 2  # every task's own map: ½σ² (d_out = 1)
        ratio = (erm.mean() - floor) / (maml.mean() - floor)
        influence = ((erm - floor) - ratio * (maml - floor)) / (maml.mean() - floor)
        worst = worst_of(worst, abs(ratio - result["excess_ratio"]) / (influence.std(ddof=1) / np.sqrt(tasks)))
        instances += 1
    return CheckResult(instances, worst, f"max |error| in Monte Carlo standard errors ({tasks} tasks each)")
