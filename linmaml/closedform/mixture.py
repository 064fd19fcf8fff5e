"""Easy and hard tasks (Collins, Mokhtari & Shakkottai 2020): the exact gain of MAML over ERM (numpy).

Collins et al., "How does the task landscape affect MAML performance?" (arXiv 2010.14672), study
linear regression on a mixture of *easy* tasks (large input variance ρ_E: gradient descent converges
fast) and *hard* tasks (small ρ_H), and compare the post-adaptation loss of the MAML solution with
that of the solution of the plain average loss (ERM, their "NAL"). Here that setting is a two-component
:class:`~linmaml.closedform.gaussian.TaskMixture` (:func:`easy_hard_mixture`): component c has
x ~ N(0, ρ_c·I_d), task maps W_τ ~ N(M_c, (R_c/d)·I) (so E‖W_τ − M_c‖² = R_c, the spread), noise σ
and n support points; the easy centre is 0 and the hard centre lies at distance D along e₁; a task is
hard with probability π_H.

Everything is exact (:mod:`linmaml.closedform.gaussian`): the MAML solution is
:func:`~linmaml.closedform.gaussian.maml_fixed_point` (one inner step at rate α on n noisy points,
finite-n Wishart moments), the ERM solution :func:`~linmaml.closedform.gaussian.erm_fixed_point`, and
both are scored by :func:`~linmaml.closedform.gaussian.expected_post_adaptation_loss` after the same
step. The *excess* loss subtracts the noise floor ½σ² (the loss of the task's own map), as Collins
et al.'s excess risk does.

A structural fact (from the quadratic form of the objective): the loss at any W is
½Σ_c π_c[tr((W − M_c)B_c(W − M_c)ᵀ) + tr(B_c Ω_c) + noise terms], and neither fixed point depends on the
spreads Ω_c, so the *absolute* gain L_ERM − L_MAML = ½Σ_c π_c[tr((W_E − M_c)B_c(W_E − M_c)ᵀ) −
tr((W_M − M_c)B_c(W_M − M_c)ᵀ)] does not depend on the spreads at all; they enter the *ratio*
E_ERM/E_MAML only through the denominator. With isotropic covariances both solutions lie on the
segment between the centres, W = M_E + t·(M_H − M_E), at t_M = π_H b_H/(π_H b_H + π_E b_E) (b_c the
post-step curvature) and t_E = π_H ρ_H/(π_H ρ_H + π_E ρ_E); the gain grows as D² and vanishes when
ρ_H = ρ_E (then t_M = t_E).
"""
from __future__ import annotations

import numpy as np

from linmaml import _validate
from linmaml.closedform import gaussian as _g
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.tasks import RegressionFamily


def easy_hard_mixture(d: int = 5, rho_easy: float = 1.0, rho_hard: float = 0.1, spread_easy: float = 1.0,
                      spread_hard: float = 1.0, distance: float = 1.0, weight_hard: float = 0.5,
                      noise_std: float = 0.5, n_support: int = 50, n_query: int = 10) -> _g.TaskMixture:
    """The two-component mixture (module docstring): components [easy, hard], weights [1 − π_H, π_H].
    Easy centre 0, hard centre D·e₁ (a (1, d) row); spreads are E‖W_τ − M_c‖² = R_c."""
    d = _validate.integer(d, "d", minimum=1)
    rho_easy = _validate.finite_number(rho_easy, "rho_easy", positive=True)
    rho_hard = _validate.finite_number(rho_hard, "rho_hard", positive=True)
    spread_easy = _validate.finite_number(spread_easy, "spread_easy", nonnegative=True)
    spread_hard = _validate.finite_number(spread_hard, "spread_hard", nonnegative=True)
    distance = _validate.finite_number(distance, "distance", nonnegative=True)
    weight_hard = _validate.finite_number(weight_hard, "weight_hard", nonnegative=True)
    if weight_hard > 1:
        raise ArgumentError("weight_hard", f"expected a probability in [0, 1], got {weight_hard}")
    hard_mean = np.zeros((1, d))
    hard_mean[0, 0] = distance
    common = {"noise_std": noise_std, "n_support": n_support, "n_query": n_query}
    easy = RegressionFamily(d, 1, task_mean=0.0, task_cov=spread_easy / d, x_cov=rho_easy, **common)
    hard = RegressionFamily(d, 1, task_mean=hard_mean, task_cov=spread_hard / d, x_cov=rho_hard, **common)
    return _g.TaskMixture([easy, hard], [1.0 - weight_hard, weight_hard])


def noise_floor(mixture) -> float:
    """Σ_c π_c·½·d_out·σ_c²: the loss of each task's own map, what no initialisation goes below."""
    mixture = _as_mixture(mixture)
    return float(sum(w * 0.5 * c.d_out * c.noise_std**2 for w, c in zip(mixture.weights, mixture.components)))


def _as_mixture(mixture) -> _g.TaskMixture:
    if isinstance(mixture, RegressionFamily):
        return _g.TaskMixture([mixture])
    if not isinstance(mixture, _g.TaskMixture):
        raise ArgumentTypeError("mixture", f"expected a TaskMixture or RegressionFamily, got {type(mixture).__name__}")
    return mixture


def maml_gain(mixture, lr, steps: int = 1, population: bool | None = None) -> dict:
    """The exact post-adaptation comparison of the MAML and ERM solutions on ``mixture``.

    Both solutions are adapted by ``steps`` inner steps at ``lr`` (finite n for one step unless
    ``population``), the rate MAML is trained with. Returns ``W_maml``, ``W_erm`` ((d_out, d_in)
    arrays), ``loss_maml``, ``loss_erm`` (expected post-adaptation losses), ``floor``
    (:func:`noise_floor`), ``gain`` = loss_erm − loss_maml (≥ 0), ``excess_ratio`` =
    (loss_erm − floor)/(loss_maml − floor) (Collins et al.'s E_ERM/E_MAML; 1 when both are at the
    floor, inf when only MAML is) and ``gain_relative`` =
    gain/(loss_erm − floor), the fraction of ERM's excess loss that MAML removes.
    """
    mixture = _as_mixture(mixture)
    W_maml = _g.maml_fixed_point(mixture, lr, steps, population)
    W_erm = _g.erm_fixed_point(mixture)
    loss_maml = _g.expected_post_adaptation_loss(W_maml, mixture, lr, steps, population)
    loss_erm = _g.expected_post_adaptation_loss(W_erm, mixture, lr, steps, population)
    floor = noise_floor(mixture)
    excess_maml, excess_erm = loss_maml - floor, loss_erm - floor
    # both at the floor (e.g. a population step that solves every task): no gain, ratio 1
    tolerance = 1e-12 * max(abs(loss_erm), 1.0)
    if excess_maml <= tolerance:
        ratio = 1.0 if excess_erm <= tolerance else float("inf")
    else:
        ratio = excess_erm / excess_maml
    return {
        "W_maml": W_maml, "W_erm": W_erm, "loss_maml": loss_maml, "loss_erm": loss_erm, "floor": floor,
        "gain": loss_erm - loss_maml,
        "excess_ratio": ratio,
        "gain_relative": (loss_erm - loss_maml) / excess_erm if excess_erm > tolerance else 0.0,
    }


def simulate(mixture, W_maml, W_erm, lr, tasks: int = 20000, population: bool = False, seed=0) -> dict:
    """Monte Carlo of :func:`maml_gain`'s comparison for given solutions: ``tasks`` tasks drawn from
    the mixture (component counts multinomial), each adapted by one explicit inner step from both
    ``W_maml`` and ``W_erm`` on the same sampled support set (``population``: the population
    gradient (W − W_τ)Σ_c instead), scored by the task's population loss
    ½tr((W′ − W_τ)Σ_c(W′ − W_τ)ᵀ) + ½d_outσ² (exact given W′ and W_τ). Paired: the same tasks and
    support sets for both. Returns the means with standard errors and the excess ratio with its
    delta-method standard error."""
    mixture = _as_mixture(mixture)
    lr = _validate.finite_number(lr, "lr")
    tasks = _validate.integer(tasks, "tasks", minimum=2)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    counts = rng.multinomial(tasks, mixture.weights)
    pairs = []
    for comp, count in zip(mixture.components, counts):
        if count == 0:
            continue
        batch = comp.sample(int(count), rng)
        losses = []
        for W in (np.asarray(W_maml, float), np.asarray(W_erm, float)):
            if population:
                grad = (W[None] - batch.W) @ comp.x_cov
            else:
                residual = batch.Xs @ W.T - batch.Ys  # (T, n, d_out)
                grad = np.swapaxes(residual, 1, 2) @ batch.Xs / batch.Xs.shape[1]
            D = W[None] - lr * grad - batch.W
            losses.append(0.5 * np.einsum("toi,ij,toj->t", D, comp.x_cov, D) + 0.5 * comp.d_out * comp.noise_std**2)
        pairs.append(np.stack(losses))
    maml, erm = np.concatenate(pairs, axis=1)
    floor = noise_floor(mixture)
    em, ee = maml.mean() - floor, erm.mean() - floor
    ratio = ee / em
    # delta method on the paired per-task values: ratio ≈ ee/em, influence (erm_t − ratio·maml_t)/em
    influence = ((erm - floor) - ratio * (maml - floor)) / em
    root = np.sqrt(tasks)
    return {"loss_maml": float(maml.mean()), "loss_maml_se": float(maml.std(ddof=1) / root),
            "loss_erm": float(erm.mean()), "loss_erm_se": float(erm.std(ddof=1) / root),
            "gain": float((erm - maml).mean()), "gain_se": float((erm - maml).std(ddof=1) / root),
            "excess_ratio": float(ratio), "excess_ratio_se": float(influence.std(ddof=1) / root), "tasks": tasks}
