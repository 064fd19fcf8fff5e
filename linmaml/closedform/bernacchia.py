"""MAML trained on a few tasks at one inner rate, tested at another (Bernacchia 2021), exactly (numpy).

Setting: "mixed linear regression" of Bernacchia, "Meta-learning with negative learning rates"
(ICLR 2021), in linmaml's conventions (shallow model w of p parameters, squared loss 1/(2n)·‖Xw − y‖²).
A task is w ~ N(w0, (ν²/p)·I_p) (so E‖w − w0‖² = ν², the task spread tr Ω), inputs x ~ N(0, I_p),
labels y = wᵀx + z with z ~ N(0, σ²).

* **Meta-training** on m tasks, each with n_t inner (support) and n_v outer (query) points, at the
  inner rate α_t: ω* minimises (1/m)·Σ_i 1/(2n_v)·‖y_i^v − X_i^v ω_i′‖², ω_i′ = ω − α_t ∇L_i^t(ω).
  Each ω_i′ is affine in ω, so this is least squares: with a = α_t/n_t,
  A_i = X_i^v (I − α_t Σ̂_i) (n_v, p), Σ̂_i = X_i^tᵀX_i^t/n_t, and the residual at ω = w0 + δ is
  A_i(u_i − δ) + e_i with u_i = w_i − w0 and e_i = z_i^v − a·X_i^v X_i^tᵀ z_i^t. The solution reached
  by gradient descent from ω0 = w0 is the minimum-norm one, δ* = A⁺ r (A the m·n_v stacked rows,
  r the stacked A_i u_i + e_i), in both regimes (p > m·n_v: interpolation; p < m·n_v: the unique
  minimiser).
* **Testing** on a new task with n_r adaptation points at rate α_r, scored by the task's population
  loss after one step: E[L | ω] = ½·[h_r·(‖ω − w0‖² + ν²) + α_r²σ²p/n_r + σ²] with
  h_r = (1 − α_r)² + α_r²(p + 1)/n_r (the Wishart moment E[Σ̂²] = (1 + (p + 1)/n)·I; this is
  :func:`linmaml.closedform.gaussian.expected_post_adaptation_loss` with Σ = I, Ω = ν²/p·I).

So the average test loss is exactly ½·[h_r·(e(α_t) + ν²) + α_r²σ²p/n_r + σ²], where
e(α_t) = E‖ω* − w0‖² is the only quantity that depends on the training tasks and on α_t.
Consequences that are exact: the best test rate is α_r* = (e + ν²)/[(e + ν²)(1 + (p+1)/n_r) + σ²p/n_r]
> 0; the best training rate minimises e(α_t) whatever α_r is; ω0 = w0 makes everything independent of w0.

What is exact and what is averaged
----------------------------------
Given the m·(n_t + n_v) training inputs X, the expectation over the task parameters u_i and all label
noise is exact: with the Gram matrix K = AAᵀ (m·n_v square, blocks K_ij = A_iA_jᵀ),

    E[‖δ*‖² | X] = tr(K⁺ R),   R = blockdiag_i[(ν²/p)·K_ii + σ²·(I + a²·C_iC_iᵀ)],   C_i = X_i^v X_i^tᵀ,

since ‖A⁺r‖² = rᵀ(AAᵀ)⁺r and E[rrᵀ | X] = R (independent tasks). K depends on α_t only through
K = G0 − a(G1 + G1ᵀ) + a²G2 with G0 = XvXvᵀ, G1 = XvPᵀ, G2 = PPᵀ, P_i = C_iX_i^t, so one draw of the
inputs serves every α_t. The remaining expectation over the Gaussian inputs X has no closed form at
α_t ≠ 0 (K's blocks are Gram matrices of Gaussian vectors with different, data-dependent covariances
(I − α_tΣ̂_i)²; the Wishart inverse moments that give the α_t = 0 value below do not apply). It is
taken by a sample average of the exact conditional value over independent input draws
(:func:`meta_error`), with its standard error, the same draws for every α_t (so the curve is
smooth and differences between rates are paired); in the over-parameterised regime the exact
value at α_t = 0 serves as a control variate. Nothing else is approximated: no large-p limit.

At α_t = 0 in the over-parameterised regime (p > N + 1, N = m·n_v) the expectation is exact
(:func:`meta_error_at_zero`): K = XvXvᵀ is Wishart(p, I_N), E[K⁻¹] = I/(p − N − 1), and for each task
block, with S_i the Schur complement of the other blocks (Wishart with p − N + n_v degrees of freedom,
independent of the projected part Q_i ~ Wishart(N − n_v)), E tr(S_i⁻¹(S_i + Q_i)) =
n_v + n_v(N − n_v)/(p − N − 1); so e(0) = (ν²/p)·N·(1 + (N − n_v)/(p − N − 1)) + σ²N/(p − N − 1).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError


@dataclasses.dataclass(frozen=True)
class Setting:
    """Bernacchia's mixed linear regression: ``p`` parameters, ``m`` training tasks with ``n_t`` inner
    and ``n_v`` outer points, ``n_r`` adaptation points at test, label noise ``sigma``, task spread
    ``nu`` (w ~ N(w0, ν²/p·I)). Figure 2 of the paper: p = 60, m = 3, n_t = 30, n_v = 2, n_r = 20,
    σ = 1, ν = 0.5."""

    p: int = 60
    m: int = 3
    n_t: int = 30
    n_v: int = 2
    n_r: int = 20
    sigma: float = 1.0
    nu: float = 0.5

    def __post_init__(self):
        for name in ("p", "m", "n_t", "n_v", "n_r"):
            _validate.integer(getattr(self, name), name, minimum=1)
        _validate.finite_number(self.sigma, "sigma", nonnegative=True)
        _validate.finite_number(self.nu, "nu", nonnegative=True)

    @property
    def rows(self) -> int:
        """N = m·n_v, the number of outer points the meta-training fits."""
        return self.m * self.n_v

    @property
    def overparameterised(self) -> bool:
        return self.p > self.rows


def _setting(setting) -> Setting:
    if not isinstance(setting, Setting):
        raise ArgumentTypeError("setting", f"expected a bernacchia.Setting, got {type(setting).__name__}")
    return setting


def _rates(rates, name: str) -> np.ndarray:
    values = np.atleast_1d(np.asarray(rates, dtype=np.float64))
    if values.ndim != 1 or values.size == 0:
        raise ArgumentError(name, "expected a number or a non-empty 1-d sequence of numbers")
    if not np.all(np.isfinite(values)):
        raise ArgumentError(name, "expected finite rates")
    return values


# --------------------------------------------------------------------------------------------------
# The test task: exact given ‖ω − w0‖²


def adaptation_factor(setting, lr_test) -> np.ndarray:
    """h_r = E[(1 − α_rΣ̂)²] eigenvalue = (1 − α_r)² + α_r²(p + 1)/n_r, elementwise in ``lr_test``."""
    s = _setting(setting)
    a = _rates(lr_test, "lr_test")
    return (1 - a) ** 2 + a**2 * (s.p + 1) / s.n_r


def test_loss(setting, meta_error, lr_test) -> np.ndarray:
    """Exact average test loss ½·[h_r·(e + ν²) + α_r²σ²p/n_r + σ²] for E‖ω − w0‖² = ``meta_error``
    (a number ≥ 0, or an array broadcasting against ``lr_test``)."""
    s = _setting(setting)
    a = _rates(lr_test, "lr_test")
    e = np.asarray(meta_error, dtype=np.float64)
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise ArgumentError("meta_error", "expected finite, non-negative values")
    noise = s.sigma**2
    return 0.5 * (adaptation_factor(s, a) * (e + s.nu**2) + a**2 * noise * s.p / s.n_r + noise)


def best_test_rate(setting, meta_error) -> float:
    """α_r* = (e + ν²)/[(e + ν²)(1 + (p+1)/n_r) + σ²p/n_r], the minimiser of :func:`test_loss`
    (always ≥ 0: the best test rate is never negative)."""
    s = _setting(setting)
    e = _validate.finite_number(meta_error, "meta_error", nonnegative=True)
    v = e + s.nu**2
    denominator = v * (1 + (s.p + 1) / s.n_r) + s.sigma**2 * s.p / s.n_r
    return float(v / denominator) if denominator > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# The training tasks: exact given the inputs, averaged over input draws


def _grams(setting: Setting, Xt: np.ndarray, Xv: np.ndarray):
    """Per draw (leading axis R): G0, G1, G2 (R, N, N) and the noise blocks C_iC_iᵀ (R, m, n_v, n_v)."""
    s = setting
    C = Xv @ np.swapaxes(Xt, -1, -2)  # (R, m, n_v, n_t)
    P = C @ Xt  # (R, m, n_v, p): X^v Σ̂ n_t
    R = Xt.shape[0]
    flat_v = Xv.reshape(R, s.rows, s.p)
    flat_p = P.reshape(R, s.rows, s.p)
    G0 = flat_v @ np.swapaxes(flat_v, 1, 2)
    G1 = flat_v @ np.swapaxes(flat_p, 1, 2)
    G2 = flat_p @ np.swapaxes(flat_p, 1, 2)
    CC = C @ np.swapaxes(C, -1, -2)
    return G0, G1, G2, CC, flat_v, flat_p


def conditional_meta_error_parts(setting, Xt, Xv, lr_train, limit: bool = False) -> np.ndarray:
    """The two parts of E[‖ω* − w0‖² | inputs] = ν²·s + σ²·c (module docstring): s = tr(K⁺ blockdiag K_ii)/p
    (task spread) and c = tr(K⁺ blockdiag(I + a²C_iC_iᵀ)) (label noise), exact given the inputs.

    ``Xt`` (R, m, n_t, p) and ``Xv`` (R, m, n_v, p): R independent draws of the training inputs;
    ``lr_train`` a number or a 1-d sequence. Returns (2, len(lr_train), R): [s, c]. ``setting``'s ν
    and σ are not used. ``limit=True``: the limit ``|α_t| → ∞`` instead (the same at both ends; pass one
    rate, whose value is ignored): K and R both grow as α_t², so tr(K⁺R) tends to its value at the
    leading terms (A → −a·X_vΣ̂n_t, the inner label noise dominating the outer).
    """
    s = _setting(setting)
    rates = _rates(lr_train, "lr_train")
    Xt = np.asarray(Xt, dtype=np.float64)
    Xv = np.asarray(Xv, dtype=np.float64)
    if Xt.ndim != 4 or Xt.shape[1:] != (s.m, s.n_t, s.p):
        raise ArgumentError("Xt", f"expected shape (R, {s.m}, {s.n_t}, {s.p}), got {Xt.shape}")
    if Xv.shape != (Xt.shape[0], s.m, s.n_v, s.p):
        raise ArgumentError("Xv", f"expected shape ({Xt.shape[0]}, {s.m}, {s.n_v}, {s.p}), got {Xv.shape}")
    G0, G1, G2, CC, flat_v, flat_p = _grams(s, Xt, Xv)
    nv = s.n_v
    out = np.zeros((2, rates.size, Xt.shape[0]))
    for k, rate in enumerate(rates):
        a = rate / s.n_t
        if limit:
            # |α_t| → ∞: A/a → −P, K/a² → G2 and R/a² → blockdiag(ν²/p·G2_ii + σ²C_iC_iᵀ); tr(K⁺R) is
            # invariant under that common scaling, so its limit is the value at these matrices
            A, K, noise_scale, identity = -flat_p, G2, 1.0, 0.0
        else:
            A = flat_v - a * flat_p  # the stacked X_v(I − α_tΣ̂)
            K = G0 - a * (G1 + np.swapaxes(G1, 1, 2)) + a * a * G2
            noise_scale, identity = a * a, 1.0
        # R is block diagonal, so tr(K⁺R) needs only the diagonal blocks of K⁺
        draws = K.shape[0]
        K_blocks = np.einsum("rmimj->rmij", K.reshape(draws, s.m, nv, s.m, nv))
        if s.overparameterised:
            diagonal = np.einsum("rmimj->rmij", np.linalg.inv(K).reshape(draws, s.m, nv, s.m, nv))
        else:
            # K = AAᵀ has rank p: K⁺ = A H⁻² Aᵀ with H = AᵀA (p, p), i.e. B Bᵀ with Bᵀ = H⁻¹Aᵀ
            At = np.swapaxes(A, 1, 2)
            Bt = np.linalg.solve(At @ A, At).reshape(draws, s.p, s.m, nv)
            diagonal = np.einsum("rpmi,rpmj->rmij", Bt, Bt)
        out[0, k] = np.einsum("rmij,rmji->r", diagonal, K_blocks) / s.p
        out[1, k] = identity * np.einsum("rmii->r", diagonal) + noise_scale * np.einsum("rmij,rmji->r", diagonal, CC)
    return out


def conditional_meta_error(setting, Xt, Xv, lr_train) -> np.ndarray:
    """E[‖ω* − w0‖² | inputs] = tr(K⁺R) (module docstring), exact over task parameters and noise:
    ν²·s + σ²·c from :func:`conditional_meta_error_parts`. Returns (len(lr_train), R)."""
    s = _setting(setting)
    parts = conditional_meta_error_parts(s, Xt, Xv, lr_train)
    return s.nu**2 * parts[0] + s.sigma**2 * parts[1]


def meta_error_at_zero_parts(setting) -> tuple[float, float] | None:
    """Exact (s, c) at α_t = 0 (e(0) = ν²·s + σ²·c) when p > m·n_v + 1 (module docstring), else None."""
    s = _setting(setting)
    N, p = s.rows, s.p
    if p <= N + 1:
        return None
    return float(N * (1 + (N - s.n_v) / (p - N - 1)) / p), float(N / (p - N - 1))


def meta_error_at_zero(setting) -> float | None:
    """Exact e(0) = E‖ω* − w0‖² at α_t = 0 when p > m·n_v + 1 (module docstring), else None."""
    s = _setting(setting)
    parts = meta_error_at_zero_parts(s)
    return None if parts is None else float(s.nu**2 * parts[0] + s.sigma**2 * parts[1])


def sample_inputs(setting, draws: int, rng):
    """(Xt, Xv): ``draws`` independent standard-normal training inputs, shapes (R, m, n_t, p), (R, m, n_v, p)."""
    s = _setting(setting)
    draws = _validate.integer(draws, "draws", minimum=2)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    Xt = rng.standard_normal((draws, s.m, s.n_t, s.p))
    Xv = rng.standard_normal((draws, s.m, s.n_v, s.p))
    return Xt, Xv


def meta_error_parts(setting, lr_train, draws: int = 4000, seed=0, chunk: int = 1000) -> np.ndarray:
    """The samples behind :func:`meta_error`, before weighting: (2, len(lr_train), draws), the parts
    [s, c] of :func:`conditional_meta_error_parts` on ``draws`` input draws (the same for every rate),
    each minus its fitted control variate β·(f(0) − e(0)) when the exact value e(0) at α_t = 0 exists
    (:func:`meta_error_at_zero_parts`; β the regression coefficient per rate, bias O(1/draws))."""
    s = _setting(setting)
    rates = _rates(lr_train, "lr_train")
    draws = _validate.integer(draws, "draws", minimum=2)
    chunk = _validate.integer(chunk, "chunk", minimum=2)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    exact_zero = meta_error_at_zero_parts(s)
    grid = np.concatenate([rates, [0.0]]) if exact_zero is not None else rates
    pieces = []
    done = 0
    while done < draws:
        size = min(chunk, draws - done)
        Xt, Xv = sample_inputs(s, max(size, 2), rng)
        pieces.append(conditional_meta_error_parts(s, Xt[:size], Xv[:size], grid))
        done += size
    values = np.concatenate(pieces, axis=2)
    if exact_zero is None:
        return values
    out = np.empty((2, rates.size, draws))
    for j in range(2):
        zero = values[j, -1] - exact_zero[j]
        centred = zero - zero.mean()
        rest = values[j, :-1]
        denominator = float(centred @ centred)
        beta = ((rest - rest.mean(axis=1, keepdims=True)) @ centred / denominator) if denominator > 0 \
            else np.zeros(rates.size)
        out[j] = rest - beta[:, None] * zero
    return out


def meta_error(setting, lr_train, draws: int = 4000, seed=0, chunk: int = 1000) -> dict:
    """e(α_t) = E‖ω* − w0‖² for each rate in ``lr_train``: the exact conditional value
    (:func:`conditional_meta_error`) averaged over ``draws`` input draws, the same for every rate
    (differences between rates are paired), with the exact α_t = 0 value as a control variate
    where it exists (p > m·n_v + 1).

    Returns ``mean`` and ``se`` (arrays over the rates) and ``samples`` (rates, draws), whose
    row means are ``mean``: paired differences between rates are differences of rows.
    """
    s = _setting(setting)
    parts = meta_error_parts(s, lr_train, draws, seed, chunk)
    values = s.nu**2 * parts[0] + s.sigma**2 * parts[1]
    return {"mean": values.mean(axis=1), "se": values.std(axis=1, ddof=1) / np.sqrt(values.shape[1]),
            "samples": values}


# --------------------------------------------------------------------------------------------------
# Direct simulation (the Monte Carlo side of the figure)


def simulate(setting, lr_train, lr_test, runs: int = 1000, test_tasks: int = 10, seed=0, chunk: int = 250) -> dict:
    """Bernacchia's experiment simulated: per run, m tasks w_i ~ N(0, ν²/p·I) with sampled inputs and
    noisy labels, ω* the minimum-norm least-squares minimiser of the sampled one-step MAML objective
    (the per-task adapted map built explicitly), then ``test_tasks`` fresh tasks adapted by one step on
    n_r sampled noisy points at each rate in ``lr_test``, each scored by its population loss
    ½(‖ω_r − w‖² + σ²) (exact given ω_r and w: the test points are integrated out). w0 = ω0 = 0.

    The same runs serve every (lr_train, lr_test) pair. Returns ``loss`` (len(lr_train),
    len(lr_test), runs) per-run mean test losses, ``meta_error`` (len(lr_train), runs) of ‖ω*‖².
    """
    s = _setting(setting)
    train = _rates(lr_train, "lr_train")
    test = _rates(lr_test, "lr_test")
    runs = _validate.integer(runs, "runs", minimum=2)
    test_tasks = _validate.integer(test_tasks, "test_tasks", minimum=1)
    chunk = _validate.integer(chunk, "chunk", minimum=1)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    scale = s.nu / np.sqrt(s.p)
    loss = np.empty((train.size, test.size, runs))
    error = np.empty((train.size, runs))
    for start in range(0, runs, chunk):
        R = min(chunk, runs - start)
        w = scale * rng.standard_normal((R, s.m, s.p))
        Xt = rng.standard_normal((R, s.m, s.n_t, s.p))
        Xv = rng.standard_normal((R, s.m, s.n_v, s.p))
        yt = np.einsum("rmnp,rmp->rmn", Xt, w) + s.sigma * rng.standard_normal((R, s.m, s.n_t))
        yv = np.einsum("rmnp,rmp->rmn", Xv, w) + s.sigma * rng.standard_normal((R, s.m, s.n_v))
        w_test = scale * rng.standard_normal((R, test_tasks, s.p))
        Xr = rng.standard_normal((R, test_tasks, s.n_r, s.p))
        yr = np.einsum("rtnp,rtp->rtn", Xr, w_test) + s.sigma * rng.standard_normal((R, test_tasks, s.n_r))
        C = Xv @ np.swapaxes(Xt, -1, -2)  # (R, m, n_v, n_t)
        XvS = C @ Xt  # X_v Σ̂ n_t
        Cy = np.einsum("rmvn,rmn->rmv", C, yt)
        for k, rate in enumerate(train):
            # adapted map ω′_i = (I − αΣ̂_i)ω + (α/n_t) X_iᵀy_i: the outer residual is y_v − X_v ω′_i
            design = Xv - (rate / s.n_t) * XvS  # (R, m, n_v, p) = X_v (I − αΣ̂)
            target = yv - (rate / s.n_t) * Cy
            design = design.reshape(R, s.rows, s.p)
            target = target.reshape(R, s.rows)
            omega = np.einsum("rpn,rn->rp", np.linalg.pinv(design), target)
            error[k, start:start + R] = np.sum(omega**2, axis=1)
            residual = np.einsum("rtnp,rp->rtn", Xr, omega) - yr
            grad = np.einsum("rtnp,rtn->rtp", Xr, residual) / s.n_r
            for j, rate_test in enumerate(test):
                adapted = omega[:, None, :] - rate_test * grad
                per_task = 0.5 * (np.sum((adapted - w_test) ** 2, axis=2) + s.sigma**2)
                loss[k, j, start:start + R] = per_task.mean(axis=1)
    return {"loss": loss, "meta_error": error}


def meta_error_limit(setting, draws: int = 4000, seed=0) -> dict:
    """lim e(α_t) for ``|α_t| → ∞`` (the same at both ends): ``mean`` and ``se`` over ``draws`` input draws
    of the exact conditional value (K and R scale as α_t², so tr(K⁺R) has a finite limit)."""
    s = _setting(setting)
    Xt, Xv = sample_inputs(s, draws, seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed))
    parts = conditional_meta_error_parts(s, Xt, Xv, [1.0], limit=True)[:, 0]
    values = s.nu**2 * parts[0] + s.sigma**2 * parts[1]
    return {"mean": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(values.size))}
