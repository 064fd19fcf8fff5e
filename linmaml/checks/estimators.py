"""Verification rows for the meta-gradient estimators (``linmaml.meta.estimators``), torch float64.

Each row runs an estimator through :class:`linmaml.meta.engine.Engine` on nn.Sequential of bias-free
nn.Linear (deep linear networks) and compares it with a computation that calls nothing in
``linmaml.meta``: the numpy closed forms (``linmaml.closedform.deep_linear``: k-step adaptation,
the exact MAML meta-gradient, Hessian-vector products) or a formula solved by hand. The statistical
row (evolution strategies) reports the largest deviation, over the gradient's coordinates, of the
Monte Carlo mean from the exact gradient in standard errors. The helpers are also used by
``tests/meta/test_meta_estimators.py`` over wider grids.
"""
from __future__ import annotations

import numpy as np
import torch

from linmaml import meta
from linmaml.checks._common import LOSSES, random_data, random_rates, random_weights, random_widths, relative_error
from linmaml.checks.meta import as_torch, deep_linear_model, loss_function, worst_case
from linmaml.closedform import deep_linear as dl
from linmaml.meta import estimators
from linmaml.meta.engine import Engine
from linmaml.verification import identity


def stacked_tasks(rng: np.random.Generator, count: int, d_in: int, d_out: int, loss: str = "squared",
                  n_support: int | None = None, n_query: int | None = None):
    """``count`` tasks of equal sizes (so they stack into a meta-batch): a list of (Xs, Ys, Xq, Yq)
    numpy arrays and the stacked torch tensors (M, n, d)."""
    n_s = int(rng.integers(2, 7)) if n_support is None else n_support
    n_q = int(rng.integers(2, 7)) if n_query is None else n_query
    tasks = [random_data(rng, n_s, d_in, d_out, loss) + random_data(rng, n_q, d_in, d_out, loss)
             for _ in range(count)]
    stacked = as_torch(*(np.stack([t[i] for t in tasks]) for i in range(4)))
    return tasks, stacked


def instance(rng: np.random.Generator, depth: int, steps: int, loss: str, count: int = 3, rates=(0.05, 0.3)):
    """A random deep linear instance: (weights, tasks, stacked batch, lr, engine around meta.MAML)."""
    widths = random_widths(rng, depth, loss)
    weights = random_weights(rng, widths)
    tasks, batch = stacked_tasks(rng, count, widths[0], widths[-1], loss)
    lr = random_rates(rng, steps, *rates)
    learner = meta.MAML(deep_linear_model(weights), lr=lr, steps=steps)
    return weights, tasks, batch, lr, Engine(learner, loss_function(loss))


def layer_grads(estimate, depth: int) -> list:
    return [estimate.grads[f"model.{j}.weight"] for j in range(depth)]


# --------------------------------------------------------------------------------------------------
# Reptile, truncated MAML, HF-MAML against the closed forms


def reptile_error(rng, depth: int, steps: int, loss: str) -> float:
    """Reptile's (θ − φ_k)/Σα (torch, the learner's inner loop) vs the same from the closed-form
    adapted weights ``dl.adapt`` (mean over tasks)."""
    weights, tasks, batch, lr, engine = instance(rng, depth, steps, loss)
    total = sum(lr) if isinstance(lr, list) else lr * steps
    expected = [np.mean([(weights[j] - dl.adapt(weights, t[0], t[1], lr, steps, loss)[j]) / total for t in tasks], axis=0)
                for j in range(depth)]
    return relative_error(layer_grads(estimators.Reptile().estimate(engine, *batch), depth), expected)


@identity("meta: Reptile (θ − φ_k)/Σα = closed-form k-step adaptation (deep linear)", 1e-11)
def check_reptile(rng):
    """linmaml.meta.estimators.Reptile on deep linear nets (depths 1–3, steps 1–4, both losses) against
    (θ − φ_k)/Σαᵢ with φ_k from linmaml.closedform.deep_linear.adapt."""
    errors = [reptile_error(rng, depth, steps, loss) for depth in (1, 2, 3) for steps in (1, 2, 4) for loss in LOSSES]
    return worst_case(errors, "relative error of the direction, mean over 3 tasks")


def truncated_errors(rng, depth: int, steps: int, loss: str) -> list[float]:
    """[TruncatedMAML(K = k) vs closed-form MAML, TruncatedMAML(K = 0) vs closed-form first-order MAML,
    TruncatedMAML(K = k + 2) vs MAML (K clipped at k)]."""
    weights, tasks, batch, lr, engine = instance(rng, depth, steps, loss)
    exact = dl.maml_grad(weights, tasks, lr, steps, loss)
    first = dl.maml_grad(weights, tasks, lr, steps, loss, first_order=True)
    full = layer_grads(estimators.TruncatedMAML(steps).estimate(engine, *batch), depth)
    zero = layer_grads(estimators.TruncatedMAML(0).estimate(engine, *batch), depth)
    beyond = layer_grads(estimators.TruncatedMAML(steps + 2).estimate(engine, *batch), depth)
    return [relative_error(full, exact), relative_error(zero, first), relative_error(beyond, exact)]


@identity("meta: truncated MAML with K = k = exact MAML, K = 0 = first order (closed form)", 1e-10)
def check_truncated(rng):
    """linmaml.meta.estimators.TruncatedMAML with window K = k (and K > k) against the exact
    linmaml.closedform.deep_linear.maml_grad, and with K = 0 against its first_order=True; depths 1–3,
    steps 1–4, both losses."""
    errors = [truncated_errors(rng, depth, steps, loss) for depth in (1, 2, 3) for steps in (1, 2, 4) for loss in LOSSES]
    return worst_case(errors, "relative error of the meta-gradient")


def hfmaml_error(rng, depth: int, steps: int, loss: str, delta: float) -> float:
    """HessianFreeMAML(δ) vs the closed-form exact MAML meta-gradient (relative error)."""
    weights, tasks, batch, lr, engine = instance(rng, depth, steps, loss)
    exact = dl.maml_grad(weights, tasks, lr, steps, loss)
    return relative_error(layer_grads(estimators.HessianFreeMAML(delta).estimate(engine, *batch), depth), exact)


@identity("meta: Hessian-free MAML (δ = 1e-4) = exact MAML to O(δ²) (closed form)", 1e-6)
def check_hfmaml(rng):
    """linmaml.meta.estimators.HessianFreeMAML with finite-difference step δ = 1e-4 against the exact
    linmaml.closedform.deep_linear.maml_grad (depths 1–3, steps 1–3, both losses): the central
    difference errs by O(δ²) ≈ 1e-8 relative; tests/meta checks the δ² rate itself."""
    errors = [hfmaml_error(rng, depth, steps, loss, 1e-4) for depth in (1, 2, 3) for steps in (1, 3) for loss in LOSSES]
    return worst_case(errors, "relative error of the meta-gradient")


# --------------------------------------------------------------------------------------------------
# iMAML against the implicit gradient solved by hand


def proximal_linear(Sigma: np.ndarray, C: np.ndarray, theta: np.ndarray, lam: float) -> np.ndarray:
    """The exact minimiser of ½ tr(W Σ Wᵀ) − tr(C Wᵀ) + (λ/2)‖W − θ‖²: W* = (C + λθ)(Σ + λI)⁻¹ (the
    squared loss of a linear model on a support set, up to a constant, with Σ = XᵀX/n, C = YᵀX/n)."""
    return np.linalg.solve((Sigma + lam * np.eye(len(Sigma))).T, (C + lam * theta).T).T


def imaml_linear_error(rng, lam: float) -> float:
    """iMAML on a linear model W (d_out, d_in) vs the hand-derived implicit gradient: W* as above is
    linear in θ with dW* = λ dθ (Σ + λI)⁻¹, so ∇θ ℓ_q(W*) = λ G_q (Σ + λI)⁻¹, G_q = (W* Σ_q − C_q)."""
    d_in, d_out = (int(v) for v in rng.integers(1, 5, size=2))
    theta = random_weights(rng, [d_in, d_out])
    tasks, batch = stacked_tasks(rng, 2, d_in, d_out, "squared", n_support=int(rng.integers(2, 8)))
    expected = np.zeros_like(theta[0])
    largest = 0.0
    for Xs, Ys, Xq, Yq in tasks:
        Sigma, C = Xs.T @ Xs / len(Xs), Ys.T @ Xs / len(Xs)
        largest = max(largest, float(np.linalg.eigvalsh(Sigma)[-1]))
        W = proximal_linear(Sigma, C, theta[0], lam)
        G = W @ (Xq.T @ Xq / len(Xq)) - Yq.T @ Xq / len(Xq)
        expected += lam * np.linalg.solve((Sigma + lam * np.eye(d_in)).T, G.T).T / len(tasks)
    engine = Engine(meta.MAML(deep_linear_model(theta), lr=0.1, steps=1), loss_function("squared"))
    # a solver setting, not the answer: gradient descent contracts at 1 − λ/(λ + L) with rate 1/(λ + L)
    estimator = estimators.iMAML(lam=lam, cg_steps=d_in * d_out + 2, tolerance=1e-13, max_inner_steps=20_000,
                                 inner_lr=1.0 / (lam + largest))
    return relative_error(layer_grads(estimator.estimate(engine, *batch), 1), [expected])


@identity("meta: iMAML at the exact inner optimum = implicit gradient λ G_q (Σ + λI)⁻¹ (linear, by hand)", 1e-9)
def check_imaml_linear(rng):
    """linmaml.meta.estimators.iMAML (inner solver to tolerance 1e-13, CG to the dimension) on a linear
    model against the implicit gradient of the proximal problem solved and differentiated by hand
    (λ ∈ {0.3, 1, 5}, 4 instances each)."""
    errors = [imaml_linear_error(rng, lam) for lam in (0.3, 1.0, 5.0) for _ in range(4)]
    return worst_case(errors, "relative error of the meta-gradient")


def _vec(blocks) -> np.ndarray:
    return np.concatenate([np.asarray(B).ravel(order="F") for B in blocks])


def _unvec(v: np.ndarray, weights) -> list[np.ndarray]:
    out, start = [], 0
    for W in weights:
        out.append(v[start:start + W.size].reshape(W.shape, order="F"))
        start += W.size
    return out


def hessian(weights, X, Y, loss: str) -> np.ndarray:
    """The Hessian of the loss w.r.t. all weights (column-major vec, layer after layer), formed column by
    column from the closed-form Hessian-vector products."""
    size = sum(W.size for W in weights)
    H = np.zeros((size, size))
    for column in range(size):
        e = np.zeros(size)
        e[column] = 1.0
        H[:, column] = _vec(dl.hessian_vector_product(weights, X, Y, _unvec(e, weights), loss))
    return H


def solver_rate(weights, tasks, loss: str, lam: float) -> float:
    """A safe gradient-descent rate for the proximal problems: 1/(λ + 2·max ``|eig H_s(θ)|`` + 1) (a solver
    setting shared by both sides, not part of the answer)."""
    largest = max(float(np.max(np.abs(np.linalg.eigvalsh(hessian(weights, t[0], t[1], loss))))) for t in tasks)
    return 1.0 / (lam + 2 * largest + 1.0)


def imaml_deep_reference(weights, tasks, loss: str, lam: float, rate: float, steps: int = 20_000,
                         tol: float = 1e-13):
    """The implicit meta-gradient on a deep linear net in numpy: φ* by gradient descent on the proximal
    objective (closed-form layer gradients), H_s(φ*) formed column by column from the closed-form
    Hessian-vector products, then λ(H + λI)⁻¹ ∇ℓ_q(φ*) by a dense solve; mean over tasks. Returns
    (gradient, smallest eigenvalue of H + λI) — positive where the implicit gradient exists."""
    size = sum(W.size for W in weights)
    total = [np.zeros_like(W) for W in weights]
    smallest = np.inf
    for Xs, Ys, Xq, Yq in tasks:
        phi = [W.copy() for W in weights]
        for _ in range(steps):
            g = dl.layer_grads(phi, Xs, Ys, loss)
            prox = [a + lam * (p - w) for a, p, w in zip(g, phi, weights)]
            if np.sqrt(sum(float(np.sum(p * p)) for p in prox)) <= tol:
                break
            phi = [p - rate * q for p, q in zip(phi, prox)]
        H = hessian(phi, Xs, Ys, loss)
        A = 0.5 * (H + H.T) + lam * np.eye(size)
        smallest = min(smallest, float(np.linalg.eigvalsh(A)[0]))
        gq = _vec(dl.layer_grads(phi, Xq, Yq, loss))
        total = [t + lam * b / len(tasks) for t, b in zip(total, _unvec(np.linalg.solve(A, gq), weights))]
    return total, smallest


def imaml_deep_error(rng, depth: int, loss: str, lam: float = 2.0) -> float:
    widths = random_widths(rng, depth, loss, high=3)
    weights = random_weights(rng, widths)
    tasks, batch = stacked_tasks(rng, 2, widths[0], widths[-1], loss)
    rate = solver_rate(weights, tasks, loss, lam)
    expected, smallest = imaml_deep_reference(weights, tasks, loss, lam, rate)
    if smallest <= 0.05:  # the proximal problem is not strongly convex here: no implicit gradient to compare
        return imaml_deep_error(rng, depth, loss, lam)
    engine = Engine(meta.MAML(deep_linear_model(weights), lr=0.1, steps=1), loss_function(loss))
    size = sum(W.size for W in weights)
    estimator = estimators.iMAML(lam=lam, cg_steps=size + 2, tolerance=1e-13, max_inner_steps=20_000,
                                 inner_lr=rate)
    return relative_error(layer_grads(estimator.estimate(engine, *batch), depth), expected)


@identity("meta: iMAML = implicit gradient λ(H + λI)⁻¹∇ℓ_q(φ*) on deep linear nets (closed-form HVPs, dense solve)",
          1e-8)
def check_imaml_deep(rng):
    """linmaml.meta.estimators.iMAML (torch autograd HVPs, CG) on deep linear nets (depths 2–3, both
    losses, λ = 2) against numpy: φ* by gradient descent on linmaml.closedform.deep_linear.layer_grads,
    the Hessian formed from linmaml.closedform.deep_linear.hessian_vector_product, a dense solve."""
    errors = [imaml_deep_error(rng, depth, loss) for depth in (2, 3) for loss in LOSSES]
    return worst_case(errors, "relative error of the meta-gradient")


# --------------------------------------------------------------------------------------------------
# Evolution strategies: unbiased for a quadratic objective, in standard errors


def es_z_score(rng, population: int = 200, sigma: float = 0.3) -> tuple[float, float]:
    """(largest ``|mean − exact|``/SE over the coordinates, relative error) of ES on a depth-1 linear model
    with the squared loss, whose post-adaptation loss is quadratic in θ (φ_k is affine in θ), so the
    smoothed gradient equals the exact MAML gradient (closed form) for every σ."""
    steps = int(rng.integers(1, 4))
    weights, tasks, batch, lr, engine = instance(rng, 1, steps, "squared", count=2)
    exact = dl.maml_grad(weights, tasks, lr, steps, "squared")[0]
    es = estimators.EvolutionStrategies(population, sigma, seed=int(rng.integers(2**31)), keep_samples=True)
    estimate = es.estimate(engine, *batch)
    samples = estimate.info["samples"]["model.0.weight"].numpy().reshape(population, -1)
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(population)
    flat = exact.reshape(-1)
    z = np.abs(mean - flat) / np.where(se > 0, se, np.inf)
    return float(np.max(z)), relative_error(estimate.grads["model.0.weight"], exact)


@identity("meta: evolution strategies mean = exact gradient of a quadratic objective (standard errors)", 4.5)
def check_es(rng):
    """linmaml.meta.estimators.EvolutionStrategies (200 antithetic pairs, σ = 0.3) on depth-1 linear
    MAML with the squared loss, a quadratic objective whose Gaussian-smoothed gradient is the exact
    linmaml.closedform.deep_linear.maml_grad: the largest deviation of the Monte Carlo mean from it,
    over coordinates and 3 instances, in standard errors of the per-pair estimates."""
    scores = [es_z_score(rng)[0] for _ in range(3)]
    return worst_case(scores, "largest |mean − exact| in standard errors (≤ 16 coordinates × 3 instances)")
