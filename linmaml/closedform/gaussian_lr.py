"""Training vs test inner learning rates, negative rates, and the optimal one-step matrix map (numpy).

Same Gaussian setting and losses as :mod:`linmaml.closedform.gaussian` (shallow model W (d_out, d_in)).

Training and test rates (Bernacchia 2021, "Meta-learning with negative learning rates")
---------------------------------------------------------------------------------------
MAML meta-trains an initialisation W0 with an inner rate ``lr_train`` and is evaluated after
adaptation with ``lr_test``. With infinitely many training tasks W0 is the minimiser of the exact
objective (:func:`~linmaml.closedform.gaussian.maml_fixed_point`), which is the task mean M for one
family at *every* lr_train (the objective is ½ tr((W − M) B (W − M)ᵀ) + const with B ≻ 0), so the
training rate only matters through mixtures (:func:`meta_test_loss`) or through a *finite* number
of training tasks. With m training tasks the MAML estimate is an exact weighted least-squares problem
(:func:`maml_trained_init`), and the test loss of that estimate is exact given the estimate; the only
randomness left is which m tasks were drawn, averaged by :func:`negative_lr_table` with standard
errors (common random numbers across the lr_train grid, so differences are precise). With few noisy
support/query points a negative lr_train makes the per-task design X_q(I − αΣ̂_s) larger, which damps
the query noise in the estimate: the best training rate is negative while the best test rate is
positive.

The optimal one-step matrix map
-------------------------------
Adapt with a matrix step Q (d_in, d_in): W′ = W0 − Ĝ Q, Ĝ = (W0 − W_τ)Σ̂ − EᵀX/n the support
gradient. Then W′ − W_τ = (W0 − W_τ)(I − Σ̂Q) + EᵀXQ/n and, with S = (W0 − M)ᵀ(W0 − M) + Ω_in,

    2·E[loss] = tr(SΣ) − 2 tr(QΣSΣ) + (1 + 1/n)·tr(ΣSΣ QΣQᵀ) + c·tr(QΣQᵀΣ) + d_out σ²,
    c = (tr(SΣ) + d_out σ²)/n

(the Wishart moment E[Σ̂AΣ̂] = (1 + 1/n)ΣAΣ + tr(AΣ)Σ/n for symmetric A = QΣQᵀ, plus the support
noise); at the population level drop the 1/n and c terms. The loss depends on W0 only through
S ⪰ its value at W0 = M, whatever Q: W0* = M.
Setting the gradient in Q to zero: Σ[(1 + 1/n) S Σ + c I] Q Σ = Σ S Σ, so for invertible Σ

    Q* = [(1 + 1/n)·S Σ + c·I]⁻¹ S          (symmetric),

and at the population level (Σ̂ = Σ, no noise) Q* = Σ⁻¹, one Newton step. When Ω is isotropic
(S = s·I), Q* = s[(1 + 1/n) sΣ + cI]⁻¹ shares Σ's eigenvectors, with eigenvalue
s / ((1 + 1/n) s λ + c) on Σ's eigenvalue λ.
"""
from __future__ import annotations

import numpy as np

from linmaml import _validate
from linmaml.closedform import gaussian as _g
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.tasks import RegressionFamily


def _single_family(family) -> RegressionFamily:
    if not isinstance(family, RegressionFamily):
        raise ArgumentTypeError("family", f"expected a RegressionFamily, got {type(family).__name__}")
    return family


def _population_flag(population) -> bool:
    if not isinstance(population, (bool, np.bool_)):
        raise ArgumentTypeError("population", f"expected True or False, got {population!r}")
    return bool(population)


def _map_pieces(family: RegressionFamily, W0):
    """(S, Σ) with S = (W0 − M)ᵀ(W0 − M) + Ω_in."""
    M = family.task_mean
    W0 = M if W0 is None else _g._check_weights(W0, _g._mixture(family), "W0")
    D = W0 - M
    with np.errstate(all="ignore"):
        S = D.T @ D + _g._partial_trace_omega(family)
    if not np.all(np.isfinite(S)):
        raise ArgumentError("W0", "E[(W0 − W_τ)ᵀ(W0 − W_τ)] overflows float64; expected a smaller W0")
    return S, family.x_cov


def expected_one_step_map_loss(family, Q, W0=None, population: bool = False) -> float:
    """Exact E[query loss] after W′ = W0 − Ĝ Q (module docstring); Q (d_in, d_in), W0 (d_out, d_in)
    defaults to the task mean. ``population=True``: Ĝ = (W0 − W_τ)Σ (no sampling, no noise)."""
    family = _single_family(family)
    population = _population_flag(population)
    Q = _validate.real_matrix(Q, "Q")
    d = family.d_in
    if Q.shape != (d, d):
        raise ArgumentError("Q", f"expected shape {(d, d)} (d_in, d_in), got {Q.shape}")
    S, Sigma = _map_pieces(family, W0)
    noise = family.d_out * family.noise_std ** 2
    with np.errstate(all="ignore"):
        K = np.eye(d) - Q.T @ Sigma  # population: W′ − W_τ = (W0 − W_τ)(I − ΣQ), and tr(S(I−ΣQ)Σ(I−QᵀΣ))
        value = np.sum(S * ((np.eye(d) - Sigma @ Q) @ Sigma @ K))
        if not population:
            n = family.n_support
            A = Q @ Sigma @ Q.T
            value += np.sum(S * (Sigma @ A @ Sigma)) / n + (np.trace(S @ Sigma) + noise) * np.trace(A @ Sigma) / n
        value = 0.5 * (value + noise)
    if not np.isfinite(value):
        raise ArgumentError("Q", "the expected loss overflows float64; expected a smaller Q")
    return float(value)


def optimal_one_step_map(family, population: bool = False):
    """(W0*, Q*): the initialisation (d_out, d_in) and matrix step (d_in, d_in) minimising
    :func:`expected_one_step_map_loss`. W0* = M; Q* = [(1 + 1/n) S Σ + c I]⁻¹ S with S = Ω_in and
    c = (tr(SΣ) + d_out σ²)/n, or Σ⁺ at the population level (module docstring). When c = 0 (no
    task variation and no noise) every Q is optimal and Σ⁺ is returned."""
    family = _single_family(family)
    population = _population_flag(population)
    S, Sigma = _map_pieces(family, None)
    d = family.d_in
    c = (np.trace(S @ Sigma) + family.d_out * family.noise_std ** 2) / family.n_support
    if population or not c > 0:
        from scipy.linalg import pinvh

        Q = pinvh(Sigma)
    else:
        Q = np.linalg.solve((1 + 1 / family.n_support) * S @ Sigma + c * np.eye(d), S)
        Q = 0.5 * (Q + Q.T)  # symmetric in exact arithmetic; remove rounding asymmetry
    if not np.all(np.isfinite(Q)):
        raise ArgumentError("family", "the optimal map overflows float64; expected better-conditioned covariances")
    return family.task_mean.copy(), Q


def optimal_diagonal_map(family, population: bool = False):
    """(W0*, q*): the initialisation (d_out, d_in) and DIAGONAL step Q = diag(q) (q of shape (d_in,))
    minimising :func:`expected_one_step_map_loss`: the best a per-coordinate step in the parameter
    basis can do (what Meta-SGD on a shallow d_out = 1 model can at best learn).

    Derivation: write the loss (module docstring) as
    2·E = tr(SΣ) − 2 tr(QΣSΣ) + tr(B QΣQᵀ) + d_out σ², with B = (1 + 1/n)ΣSΣ + cΣ (population: B = ΣSΣ).
    For Q = diag(q), tr(QΣSΣ) = Σ_i q_i (ΣSΣ)_ii and tr(B QΣQ) = Σ_ij B_ij q_j Σ_ji q_i = qᵀ(B ∘ Σ)q
    (∘ the elementwise product; B and Σ are symmetric). B ∘ Σ is positive semi-definite (Schur), so
    the loss is a convex quadratic in q, minimised at

        q* = (B ∘ Σ)⁻¹ diag(ΣSΣ)

    (least squares when singular). As for Q*, the loss depends on W0 only through S ⪰ Ω_in, so W0* = M.
    For an axis-aligned Σ and S it equals Q*; otherwise it is worse by the off-diagonal part of Q*.
    """
    family = _single_family(family)
    population = _population_flag(population)
    S, Sigma = _map_pieces(family, None)
    A = Sigma @ S @ Sigma
    B = A if population else (1 + 1 / family.n_support) * A + (
        np.trace(S @ Sigma) + family.d_out * family.noise_std ** 2) / family.n_support * Sigma
    q, *_ = np.linalg.lstsq(B * Sigma, np.diag(A).copy(), rcond=None)
    if not np.all(np.isfinite(q)):
        raise ArgumentError("family", "the optimal diagonal map overflows float64; expected better-conditioned covariances")
    return family.task_mean.copy(), q


def apply_one_step_map(batch, Q, W0) -> np.ndarray:
    """W′ = W0 − Ĝ Q for every task of ``batch`` (a :class:`~linmaml.tasks.TaskBatch`), Ĝ the support
    gradient (W0 Xsᵀ − Ysᵀ)Xs/n at W0 (d_out, d_in); Q (d_in, d_in). Returns (T, d_out, d_in)."""
    Q = _validate.real_matrix(Q, "Q")
    W0 = np.asarray(W0, dtype=np.float64)
    Xs, Ys = np.asarray(batch.Xs, dtype=np.float64), np.asarray(batch.Ys, dtype=np.float64)
    if W0.ndim != 2 or W0.shape[1] != Xs.shape[2] or Q.shape != (Xs.shape[2], Xs.shape[2]):
        raise ArgumentError("W0", f"expected W0 (d_out, {Xs.shape[2]}) and Q ({Xs.shape[2]}, {Xs.shape[2]}), "
                                  f"got {W0.shape} and {Q.shape}")
    residual = Xs @ W0.T - Ys  # (T, n, d_out)
    G = np.einsum("tno,tni->toi", residual, Xs) / Xs.shape[1]
    return W0[None] - G @ Q


def _posterior_pieces(family):
    family = _single_family(family)
    if family.d_out != 1:
        raise ArgumentError("family", f"the Bayes posterior is implemented for d_out = 1, got d_out = {family.d_out}")
    if not family.noise_std > 0:
        raise ArgumentError("family", "the Bayes posterior needs label noise (noise_std > 0)")
    Omega = family.task_cov
    if np.linalg.eigvalsh(Omega).min() <= 0:
        raise ArgumentError("family", "the Bayes posterior needs a positive definite task covariance")
    return family, np.linalg.inv(Omega)


def bayes_posterior_mean(family, Xs, Ys) -> np.ndarray:
    """E[W_τ | support set] for each task: the Bayes predictor, the best one-step predictor of ANY
    form (linear or not) under the query loss, for a :class:`~linmaml.tasks.RegressionFamily` with
    d_out = 1, Ω ≻ 0 and σ > 0. With the prior w ~ N(m, Ω) and y = Xw + ε,

        Λ = Ω⁻¹ + XᵀX/σ²,   E[w | X, y] = Λ⁻¹(Ω⁻¹m + Xᵀy/σ²),   Cov[w | X, y] = Λ⁻¹

    — linear in y, but not in the support gradient alone (Λ depends on X). ``Xs`` (T, n, d_in),
    ``Ys`` (T, n, 1). Returns (T, 1, d_in).
    """
    family, Omega_inv = _posterior_pieces(family)
    Xs, Ys = np.asarray(Xs, dtype=np.float64), np.asarray(Ys, dtype=np.float64)
    var = family.noise_std ** 2
    Lam = Omega_inv[None] + np.swapaxes(Xs, 1, 2) @ Xs / var
    rhs = (Omega_inv @ family.task_mean[0])[None, :] + np.einsum("tni,tn->ti", Xs, Ys[..., 0]) / var
    return np.linalg.solve(Lam, rhs[..., None])[..., 0][:, None, :]


def bayes_conditional_loss(family, Xs) -> np.ndarray:
    """The Bayes predictor's exact query loss given each task's support INPUTS (T, n, d_in):
    E[½(ŵ − w)ᵀΣ(ŵ − w) + ½σ² | X] = ½ tr(Σ Λ⁻¹) + ½σ² (the posterior covariance depends on X only,
    :func:`bayes_posterior_mean`). Averaged over sampled X it is the Bayes floor of the one-step
    query loss, by Monte Carlo over X (its standard error from the (T,) values returned)."""
    family, Omega_inv = _posterior_pieces(family)
    Xs = np.asarray(Xs, dtype=np.float64)
    Lam = Omega_inv[None] + np.swapaxes(Xs, 1, 2) @ Xs / family.noise_std ** 2
    cov = np.linalg.inv(Lam)
    return 0.5 * np.einsum("ij,tji->t", family.x_cov, cov) + 0.5 * family.noise_std ** 2


def best_scalar_lr(family, population: bool = False) -> tuple[float, float]:
    """(α*, loss): the scalar inner rate minimising the exact one-step loss of the shallow model at
    its optimal initialisation M (one family; the scalar map Q = α I), and that loss.
    Uses :func:`~linmaml.closedform.gaussian.optimal_inner_lr` (the loss is quadratic in α)."""
    family = _single_family(family)
    population = _population_flag(population)
    M = family.task_mean
    alpha = _g.optimal_inner_lr(M, family, 1, population=population)
    return alpha, _g.expected_post_adaptation_loss(M, family, alpha, 1, population=population)


# --------------------------------------------------------------------------------------------------
# Training vs test rates


def meta_test_loss(family, lr_train, lr_test, steps: int = 1, population: bool | None = None) -> float:
    """E[query loss] at lr_test of the init meta-trained on infinitely many tasks at lr_train:
    expected_post_adaptation_loss(maml_fixed_point(family, lr_train), family, lr_test). Both rates
    may be negative. For one family this does not depend on lr_train (the fixed point is M)."""
    lr_train = _validate.finite_number(lr_train, "lr_train")
    lr_test = _validate.finite_number(lr_test, "lr_test")
    W = _g.maml_fixed_point(family, lr_train, steps, population)
    try:
        return _g.expected_post_adaptation_loss(W, family, lr_test, steps, population)
    except ArgumentError as error:
        if error.argument != "lr":
            raise
        raise ArgumentError("lr_test", error.detail) from None


def maml_trained_init(batch, lr_train) -> np.ndarray:
    """The exact minimiser (d_out, d_in) of the one-step MAML loss on a finite set of tasks.

    ``batch``: a :class:`~linmaml.tasks.TaskBatch` (Xs (T, n, d_in), Ys, Xq, Yq). For each task the
    adapted map W − α·(W Xsᵀ − Ysᵀ)Xs/n is affine in W, so its query loss is ‖A_t Wᵀ − b_t‖²/(2 n_q)
    with A_t = Xq (I − α Σ̂_t), b_t = Yq − (α/n) Xq Xsᵀ Ys: a least-squares problem in W, solved on the
    stacked tasks (minimum norm when rank-deficient).
    """
    lr = _validate.finite_number(lr_train, "lr_train")
    Xs, Ys, Xq, Yq = batch.Xs, batch.Ys, batch.Xq, batch.Yq
    n = Xs.shape[1]
    d = Xs.shape[2]
    with np.errstate(all="ignore"):
        S_hat = np.swapaxes(Xs, 1, 2) @ Xs / n
        A = Xq @ (np.eye(d) - lr * S_hat)
        b = Yq - (lr / n) * Xq @ (np.swapaxes(Xs, 1, 2) @ Ys)
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):
        raise ArgumentError("lr_train", "the adapted design overflows float64; expected a smaller rate")
    solution, *_ = np.linalg.lstsq(A.reshape(-1, d), b.reshape(-1, b.shape[-1]), rcond=None)
    return solution.T


def negative_lr_table(family, lr_train, n_tasks: int, lr_test=None, repeats: int = 200, seed=0) -> dict:
    """Bernacchia's finding in numbers: the test loss of MAML inits trained on ``n_tasks`` tasks.

    For each rate in ``lr_train`` (a sequence of finite reals, negatives allowed) and each of
    ``repeats`` draws of ``n_tasks`` training tasks (the same draws for every rate), the init is
    :func:`maml_trained_init` and its test loss is the exact
    ``expected_post_adaptation_loss(init, family, lr_test)`` (finite n, one step); ``lr_test`` None
    means the optimal test rate at the task mean (:func:`~linmaml.closedform.gaussian.optimal_inner_lr`).
    Returns a dict of
    lists: ``lr_train``, ``test_loss`` (mean over draws), ``se`` (its standard error), ``gap_se``
    (standard error of the paired difference from the best rate), and scalars ``best_lr_train`` (the
    grid minimiser), ``lr_test``, ``optimal_lr_test`` (the best test rate at the task mean),
    ``infinite_tasks_loss`` (the loss at the task mean, what every rate reaches as n_tasks → ∞).
    """
    family = _single_family(family)
    if isinstance(lr_train, (str, bytes)) or not hasattr(lr_train, "__len__"):
        raise ArgumentTypeError("lr_train", f"expected a sequence of training rates, got {lr_train!r}")
    rates = [_validate.finite_number(r, f"lr_train[{i}]") for i, r in enumerate(lr_train)]
    if not rates:
        raise ArgumentError("lr_train", "expected at least one training rate")
    M = family.task_mean
    optimal_test = float(_g.optimal_inner_lr(M, family, 1))
    lr_test = optimal_test if lr_test is None else _validate.finite_number(lr_test, "lr_test")
    n_tasks = _validate.integer(n_tasks, "n_tasks", minimum=1)
    repeats = _validate.integer(repeats, "repeats", minimum=2)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    losses = np.empty((len(rates), repeats))
    for r in range(repeats):
        batch = family.sample(n_tasks, rng)
        for i, rate in enumerate(rates):
            init = maml_trained_init(batch, rate)
            losses[i, r] = _g.expected_post_adaptation_loss(init, family, lr_test, 1)
    mean = losses.mean(axis=1)
    best = int(np.argmin(mean))
    gaps = losses - losses[best]
    return {
        "lr_train": list(rates),
        "test_loss": [float(x) for x in mean],
        "se": [float(x) for x in losses.std(axis=1, ddof=1) / np.sqrt(repeats)],
        "gap_se": [float(x) for x in gaps.std(axis=1, ddof=1) / np.sqrt(repeats)],
        "best_lr_train": float(rates[best]),
        "lr_test": lr_test,
        "optimal_lr_test": optimal_test,
        "infinite_tasks_loss": float(_g.expected_post_adaptation_loss(M, family, lr_test, 1)),
        "n_tasks": n_tasks,
        "repeats": repeats,
    }
