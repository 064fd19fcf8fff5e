"""Gaussian task families: exact expectations for MAML with the shallow linear model W (d_out, d_in).

Setting (:class:`linmaml.tasks.RegressionFamily`): x ~ N(0, Σ); vec W_τ ~ N(vec M, Ω) (column-major
vec); y = W_τ x + ε with ε ~ N(0, σ² I); n support points. Losses follow DESIGN.md: the support
loss is 1/(2n)·‖X Wᵀ − Y‖²_F and the query loss ½·mean over points of ‖y − W x‖², whose expectation
for a fixed W′ is ½·tr((W′ − W_τ) Σ (W′ − W_τ)ᵀ) + ½·d_out·σ².

The key facts
-------------
* One inner step on the support set: W′ − W_τ = (W − W_τ)(I − αΣ̂) + (α/n)·EᵀX, with
  Σ̂ = XᵀX/n and E the (n, d_out) support noise. The noise is independent of X and of zero mean, so
  the expected query loss is

      ½·[tr(B S) + α²·σ²·d_out·tr(Σ²)/n + d_out·σ²],
      B = E[(I − αΣ̂) Σ (I − αΣ̂)] = Σ − 2αΣ² + α²·E[Σ̂ΣΣ̂],
      S = E[(W − W_τ)ᵀ(W − W_τ)] = (W − M)ᵀ(W − M) + Ω_in,

  with Ω_in the partial trace of Ω over the output index ((Ω_in)_{jj′} = Σ_i Cov(W_τ[i, j], W_τ[i, j′]))
  and E[Σ̂ΣΣ̂] from :func:`wishart_moment`.
* k inner steps at the population level (the support set is replaced by its expectation, Σ̂ → Σ,
  which also removes the noise from the gradient): W_k − W_τ = (W − W_τ)(I − αΣ)^k, so
  B = (I − αΣ)^k Σ (I − αΣ)^k.
* The objective is quadratic in W with curvature B, so its minimiser is M whenever B is
  invertible: for one Gaussian family MAML and ERM share their fixed point. They differ for
  *mixtures* of families with different input covariances (:class:`TaskMixture`), where
  W* = (Σ_c π_c M_c B_c)(Σ_c π_c B_c)⁺.

Every function accepts a :class:`~linmaml.tasks.RegressionFamily` or a :class:`TaskMixture` of them.
Results are finite or the call raises ``ValueError`` naming the argument that takes them out of the
float64 range (``lr`` when the adapted loss overflows but the plain one does not).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.tasks import RegressionFamily


def wishart_moment(Sigma, A, n) -> np.ndarray:
    """E[Σ̂ A Σ̂] for Σ̂ = XᵀX/n, the rows of X (n, d) i.i.d. N(0, Σ); A any (d, d) matrix.

    Isserlis' theorem gives, for one Gaussian x, E[x xᵀ A x xᵀ] = ΣAΣ + ΣAᵀΣ + tr(AΣ)Σ; the
    n(n − 1) cross pairs contribute ΣAΣ each, so

        E[Σ̂ A Σ̂] = Σ A Σ + (1/n)·(Σ Aᵀ Σ + tr(AΣ)·Σ)            (any A),

    which for symmetric A is the familiar (1 + 1/n)·ΣAΣ + (1/n)·tr(AΣ)·Σ. Returns a (d, d) array.
    """
    Sigma = _validate.real_matrix(Sigma, "Sigma")
    A = _validate.real_matrix(A, "A")
    n = _validate.integer(n, "n", minimum=1)
    d = Sigma.shape[0]
    if Sigma.shape != (d, d):
        raise ArgumentError("Sigma", f"expected a square matrix, got shape {Sigma.shape}")
    if A.shape != (d, d):
        raise ArgumentError("A", f"expected shape {(d, d)} to match Sigma, got {A.shape}")
    with np.errstate(all="ignore"):
        moment = Sigma @ A @ Sigma + (Sigma @ A.T @ Sigma + np.trace(A @ Sigma) * Sigma) / n
    if not np.all(np.isfinite(moment)):
        raise ArgumentError("Sigma", "E[Σ̂AΣ̂] overflows float64 for this Sigma and A; expected smaller entries")
    return moment


@dataclasses.dataclass(frozen=True, eq=False)
class TaskMixture:
    """A task is drawn from component c (a :class:`~linmaml.tasks.RegressionFamily`) with
    probability ``weights[c]`` (default: uniform). All components share d_in and d_out; each keeps
    its own Σ_c, M_c, Ω_c, σ_c and n_c.
    """

    components: Sequence[RegressionFamily]
    weights: Sequence[float] | None = None

    def __post_init__(self):
        components = tuple(self.components)
        if not components:
            raise ArgumentError("components", "expected at least one RegressionFamily")
        for i, family in enumerate(components):
            if not isinstance(family, RegressionFamily):
                raise ArgumentTypeError(f"components[{i}]", f"expected a RegressionFamily, got {type(family).__name__}")
            if (family.d_in, family.d_out) != (components[0].d_in, components[0].d_out):
                raise ArgumentError(f"components[{i}]", f"expected d_in={components[0].d_in}, d_out={components[0].d_out} "
                                                        f"like components[0], got d_in={family.d_in}, d_out={family.d_out}")
        if self.weights is None:
            weights = np.full(len(components), 1.0 / len(components))
        else:
            weights = np.array([_validate.finite_number(w, f"weights[{i}]", nonnegative=True)
                                for i, w in enumerate(self.weights)])
            if weights.shape != (len(components),):
                raise ArgumentError("weights", f"expected {len(components)} probabilities, got {weights.shape[0]}")
            if not weights.sum() > 0:
                raise ArgumentError("weights", "expected a positive total")
            weights = weights / weights.sum()
        object.__setattr__(self, "components", components)
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))

    @property
    def d_in(self) -> int:
        return self.components[0].d_in

    @property
    def d_out(self) -> int:
        return self.components[0].d_out


def _mixture(family) -> TaskMixture:
    if isinstance(family, TaskMixture):
        return family
    if isinstance(family, RegressionFamily):
        return TaskMixture([family])
    raise ArgumentTypeError("family", f"expected a RegressionFamily or a TaskMixture, got {type(family).__name__}")


def _steps_and_level(steps, population) -> tuple[int, bool]:
    steps = _validate.integer(steps, "steps", minimum=0)
    if population is None:
        return steps, steps >= 2
    if not isinstance(population, (bool, np.bool_)):
        raise ArgumentTypeError("population", f"expected True, False or None, got {population!r}")
    if not population and steps >= 2:
        raise ArgumentError("population", "the finite-sample expectation is exact for steps <= 1 only; "
                                          "pass population=True (or None) for more steps")
    return steps, bool(population)


def _partial_trace_omega(family: RegressionFamily) -> np.ndarray:
    """Ω_in = E[ΔᵀΔ] for Δ = W_τ − M: Ω over column-major vec W_τ, traced over the output index."""
    d_in, d_out = family.d_in, family.d_out
    return np.trace(family.task_cov.reshape(d_in, d_out, d_in, d_out), axis1=1, axis2=3)


def _curvature(family: RegressionFamily, lr: float, steps: int, population: bool) -> tuple[np.ndarray, float]:
    """(B, noise) with E[query loss] = ½·[tr(B S) + noise + d_out σ²] for this component."""
    Sigma = family.x_cov
    lr = np.float64(lr)  # overflow becomes inf (checked by the callers), not Python's OverflowError
    if steps == 0:
        return Sigma, 0.0
    if population:
        step = np.linalg.matrix_power(np.eye(family.d_in) - lr * Sigma, steps)
        return step @ Sigma @ step.T, 0.0
    n = family.n_support
    B = Sigma - 2 * lr * Sigma @ Sigma + lr * (lr * wishart_moment(Sigma, Sigma, n))
    noise = lr ** 2 * family.noise_std ** 2 * family.d_out * np.trace(Sigma @ Sigma) / n
    return B, noise


def _check_weights(W, mixture: TaskMixture, name: str = "weights") -> np.ndarray:
    W = _validate.real_matrix(W, name)
    if W.shape != (mixture.d_out, mixture.d_in):
        raise ArgumentError(name, f"expected shape {(mixture.d_out, mixture.d_in)} (d_out, d_in), got {W.shape}")
    return W


def expected_post_adaptation_loss(weights, family, lr, steps: int = 1, population: bool | None = None) -> float:
    """The exact expected query loss of a linear model after MAML's inner loop.

    ``weights`` is one matrix W (d_out, d_in) (the shallow model) or a list [W1, …, WL] of layers (W1
    applied first, Wj of shape (d_j, d_{j−1})); a one-element list is the shallow model. The
    expectation is over tasks, support sets, support noise and query points. ``steps`` inner steps of
    gradient descent with rate ``lr`` (any finite real: negative rates, as in Bernacchia 2021, are
    allowed; this is the rate used when the model is *evaluated*, i.e. lr_test) on the support loss
    1/(2n)·‖X Wᵀ − Y‖²:

    * ``steps`` = 0: the plain expected loss ½·[tr(Σ S) + d_out σ²] of the end-to-end map;
    * shallow, ``steps`` = 1 (default, ``population`` None or False): exact for n support points,
      including the Wishart fluctuation of Σ̂ and the support noise (see the module docstring);
    * shallow, ``steps`` ≥ 2, or ``population=True``: **population level**, i.e. each inner step uses
      the expected support loss (Σ̂ → Σ, no noise in the gradient). ``population=False`` with
      ``steps`` ≥ 2 raises, since the finite-n expectation needs higher Wishart moments;
    * deep (two or more layers): one step with the population gradient on every layer, exact for any
      depth, Σ and full Ω (:mod:`linmaml.closedform.gaussian_deep`, Isserlis), with ``population``
      None or True. ``population=False``: one step on the n sampled support points (Wishart
      fluctuation of Σ̂ and support noise), exact for depth 2, any widths and d_out
      (:mod:`linmaml.closedform.gaussian_deep_finite`); depth ≥ 3 at finite n and ``steps`` ≥ 2
      raise ``ValueError`` (they need Wishart moments of order ≥ 6 jointly with D).

    For a :class:`TaskMixture` the result is the probability-weighted sum over components.
    :func:`expected_post_adaptation_loss_and_grad` also returns the gradient with respect to the weights.
    """
    return expected_post_adaptation_loss_and_grad(weights, family, lr, steps, population, _grad=False)[0]


def expected_post_adaptation_loss_and_grad(weights, family, lr, steps: int = 1, population: bool | None = None,
                                           *, _grad: bool = True):
    """(value, gradient) of :func:`expected_post_adaptation_loss` (same arguments and conventions).

    The gradient has the shape of ``weights``: one (d_out, d_in) array for a matrix, a list of arrays
    for a list of layers. Shallow: the exact ∂/∂W = Σ_c π_c (W − M_c) B_c. Deep: the complex-step
    derivative of the exact polynomial expectation (exact to rounding; see gaussian_deep); deep at
    finite n: the hand-derived gradient of gaussian_deep_finite.
    """
    from linmaml.closedform import gaussian_deep

    mixture = _mixture(family)
    lr = _validate.finite_number(lr, "lr")
    if gaussian_deep.is_layer_list(weights) and len(weights) >= 2:
        layers = gaussian_deep.check_layers(weights, mixture.d_in, mixture.d_out)
        steps = _validate.integer(steps, "steps", minimum=0)
        if population is not None and not isinstance(population, (bool, np.bool_)):
            raise ArgumentTypeError("population", f"expected True, False or None, got {population!r}")
        if steps > 1:
            raise ArgumentError("steps", "deep models are covered for 0 or 1 inner step (the adapted map has degree "
                                         "L^k in the task after k steps)")
        rate = lr if steps == 1 else 0.0
        if population is False and steps == 1:
            if len(layers) != 2:
                raise ArgumentError("population", "finite-n expectations of deep models are implemented for depth 2 "
                                                  "only (depth L needs Wishart moments of order 2L jointly with the task); pass "
                                                  "population=True")
            from linmaml.closedform import gaussian_deep_finite

            if not _grad:
                return gaussian_deep_finite.finite_n_expected_loss(layers, mixture, rate), None
            return gaussian_deep_finite.finite_n_expected_loss_and_grad(layers, mixture, rate)
        if not _grad:
            return gaussian_deep.deep_expected_loss(layers, mixture, rate), None
        return gaussian_deep.deep_expected_loss_and_grad(layers, mixture, rate)
    single = gaussian_deep.is_layer_list(weights)
    W = _check_weights(weights[0] if single else weights, mixture)
    steps, population = _steps_and_level(steps, population)
    total = _expected_loss(W, mixture, lr, steps, population)
    if not np.isfinite(total):
        if steps > 0 and lr != 0 and np.isfinite(_expected_loss(W, mixture, 0.0, 0, population)):
            raise ArgumentError("lr", f"the expected loss after {steps} inner step(s) overflows float64; expected a "
                                      f"smaller learning rate")
        raise ArgumentError("weights", "the expected loss overflows float64 for these weights and family; expected "
                                       "smaller weights (or smaller family scales)")
    if not _grad:
        return total, None
    grad = np.zeros_like(W)
    with np.errstate(all="ignore"):
        for weight, comp in zip(mixture.weights, mixture.components):
            B, _ = _curvature(comp, lr, steps, population)
            grad += weight * (W - comp.task_mean) @ (0.5 * (B + B.T))
    if not np.all(np.isfinite(grad)):
        raise ArgumentError("weights", "the gradient overflows float64; expected smaller weights")
    return total, [grad] if single else grad


def _expected_loss(W, mixture: TaskMixture, lr: float, steps: int, population: bool) -> float:
    total = 0.0
    with np.errstate(all="ignore"):
        for weight, comp in zip(mixture.weights, mixture.components):
            B, noise = _curvature(comp, lr, steps, population)
            D = W - comp.task_mean
            S = D.T @ D + _partial_trace_omega(comp)
            total += weight * 0.5 * (np.sum(B * S) + noise + comp.d_out * comp.noise_std ** 2)
    return float(total)


def optimal_inner_lr(W, family, steps: int = 1, population: bool | None = None) -> float:
    """The inner learning rate α ≥ 0 that minimises :func:`expected_post_adaptation_loss`.

    One step (finite n): the loss is ½·[c₀ − 2α c₁ + α² c₂] with c₁ = Σ π tr(S Σ²) and
    c₂ = Σ π [tr(S E[Σ̂ΣΣ̂]) + σ² d_out tr(Σ²)/n], so α* = c₁/c₂. For one family with isotropic
    Σ = λI this is the closed form

        α* = n·e / (λ·(n + d_in + 1)·e + σ²·d_out·d_in),   e = tr S = E‖W − W_τ‖²_F.

    ``steps`` = k at the population level: with Σ_c = U Λ Uᵀ the loss is
    ½·Σ_{c,i} π_c λ_{ci} g_{ci} (1 − αλ_{ci})^{2k} + const (g = diag UᵀSU ≥ 0), a polynomial in α
    that is a sum of convex terms, hence convex: its global minimiser is the unique real root of the
    derivative, which lies in [1/λ_max, 1/λ_min] over the terms with λg > 0 and is found by
    bracketing to machine precision. Returns 0.0 when the loss does not depend on α.
    """
    mixture = _mixture(family)
    W = _check_weights(W, mixture, "W")
    steps, population = _steps_and_level(steps, population)
    if steps == 0:
        raise ArgumentError("steps", "expected at least 1 inner step (with 0 steps the learning rate has no effect)")
    scales, coefficients = [], []  # the loss is const + ½ Σ coefficient·(1 − α·scale)^{2k}
    c1 = c2 = 0.0
    for weight, comp in zip(mixture.weights, mixture.components):
        Sigma = comp.x_cov
        D = W - comp.task_mean
        with np.errstate(all="ignore"):
            S = D.T @ D + _partial_trace_omega(comp)
        if not np.all(np.isfinite(S)):
            raise ArgumentError("W", "E[(W − W_τ)ᵀ(W − W_τ)] overflows float64; expected a smaller W")
        if steps == 1 and not population:
            Sigma2 = Sigma @ Sigma
            c1 += weight * np.sum(S * Sigma2)
            c2 += weight * (np.sum(S * wishart_moment(Sigma, Sigma, comp.n_support))
                            + comp.noise_std ** 2 * comp.d_out * np.trace(Sigma2) / comp.n_support)
        else:
            lam, U = np.linalg.eigh(Sigma)
            g = np.einsum("ji,jk,ki->i", U, S, U)
            scales.append(lam)
            coefficients.append(weight * lam * g)
    with np.errstate(all="ignore"):
        if steps == 1 and not population:
            if len(mixture.components) == 1 and _is_isotropic(mixture.components[0].x_cov):
                comp = mixture.components[0]
                lam = comp.x_cov[0, 0]
                e = np.trace((W - comp.task_mean).T @ (W - comp.task_mean)) + np.trace(comp.task_cov)
                denominator = lam * (comp.n_support + comp.d_in + 1) * e + comp.noise_std ** 2 * comp.d_out * comp.d_in
                best = float(comp.n_support * e / denominator) if denominator > 0 else 0.0
            else:
                best = float(c1 / c2) if c2 > 0 else 0.0
        else:
            best = _convex_power_sum_minimiser(np.concatenate(scales), np.concatenate(coefficients), steps)
    if not np.isfinite(best):
        raise ArgumentError("family", "the expected loss's coefficients overflow float64 for this family and W; expected "
                                      "smaller covariances (or a smaller W)")
    return best


def _is_isotropic(Sigma: np.ndarray) -> bool:
    return bool(np.array_equal(Sigma, Sigma[0, 0] * np.eye(Sigma.shape[0])))


def _convex_power_sum_minimiser(scales: np.ndarray, coefficients: np.ndarray, steps: int) -> float:
    """argmin over α of Σ_i coefficient_i·(1 − α·scale_i)^{2k} (coefficients ≥ 0, scales ≥ 0)."""
    from scipy.optimize import brentq

    active = (coefficients > 0) & (scales > 0)
    if not np.any(active):
        return 0.0
    lam, coef = scales[active], coefficients[active]
    lo, hi = 1.0 / lam.max(), 1.0 / lam.min()
    if hi - lo <= 4 * np.finfo(float).eps * hi:
        return float(lo)
    power = 2 * steps - 1

    def slope(alpha):  # derivative up to the positive factor 2k; increasing in α
        return -np.sum(coef * lam * (1.0 - alpha * lam) ** power)

    return float(brentq(slope, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500))


def maml_fixed_point(family, lr, steps: int = 1, population: bool | None = None) -> np.ndarray:
    """The minimiser W* (d_out, d_in) of the MAML objective :func:`expected_post_adaptation_loss`.

    ``lr`` is the meta-*training* rate (any finite real; B_c ⪰ 0 for negative rates too).

    The objective is ½·Σ_c π_c tr((W − M_c) B_c (W − M_c)ᵀ) + const with B_c ⪰ 0 (module docstring;
    the same finite-n / population convention as there), so W*·B = C with B = Σ π_c B_c and
    C = Σ π_c M_c B_c. Returns C B⁺, the minimiser of least Frobenius norm when B is singular. For a
    single family this is its task mean M.
    """
    mixture = _mixture(family)
    lr = _validate.finite_number(lr, "lr")
    steps, population = _steps_and_level(steps, population)
    return _quadratic_minimiser(mixture, lr, steps, population)


def erm_fixed_point(family) -> np.ndarray:
    """The minimiser (d_out, d_in) of the plain average loss E_τ[½ tr((W − W_τ) Σ_τ (W − W_τ)ᵀ)]
    (no adaptation): (Σ_c π_c M_c Σ_c)(Σ_c π_c Σ_c)⁺, of least Frobenius norm if that sum is singular."""
    return _quadratic_minimiser(_mixture(family), 0.0, 0, True)


def _quadratic_minimiser(mixture: TaskMixture, lr: float, steps: int, population: bool) -> np.ndarray:
    B_total = np.zeros((mixture.d_in, mixture.d_in))
    C_total = np.zeros((mixture.d_out, mixture.d_in))
    with np.errstate(all="ignore"):
        for weight, comp in zip(mixture.weights, mixture.components):
            B, _ = _curvature(comp, lr, steps, population)
            B_total += weight * B
            C_total += weight * comp.task_mean @ B
    if not (np.all(np.isfinite(B_total)) and np.all(np.isfinite(C_total))):
        if steps > 0 and lr != 0:
            raise ArgumentError("lr", f"the curvature after {steps} inner step(s) overflows float64; expected a smaller "
                                      f"learning rate")
        raise ArgumentError("family", "the curvature overflows float64; expected smaller covariances or task means")
    # B is symmetric PSD; pinvh thresholds its negligible eigenvalues (rank-deficient curvature).
    from scipy.linalg import pinvh

    with np.errstate(all="ignore"):
        out = C_total @ pinvh(0.5 * B_total + 0.5 * B_total.T)
    if not np.all(np.isfinite(out)):
        raise ArgumentError("family", "the fixed point overflows float64; expected smaller covariances or task means")
    return out

