"""Verification rows for the numeric closed forms of MAML on deep linear networks (numpy only).

Every row draws random instances (random widths 1–4, depths 1–4, inner steps 1–5, both losses,
random sets of adapted layers) and compares the closed form with a computation that does not share
its code: an explicit per-sample loop, finite differences, the step actually taken by ``adapt``,
or numerical eigenvalues. All rows start with "deep linear:" (``linmaml verify --only "deep linear"``).
"""
from __future__ import annotations

import numpy as np

from linmaml.closedform import deep_linear as dl
from linmaml.closedform.preconditioner import (
    balanced_preconditioner,
    balanced_preconditioner_eigenvalues,
    balanced_weights,
    depth2_step,
    preconditioner,
    unvec,
    vec,
)
from linmaml.verification import CheckResult, identity

LOSSES = ("squared", "logistic")


# --------------------------------------------------------------------------------------------------
# Random instances


def _random_widths(rng: np.random.Generator, depth: int, loss: str) -> list[int]:
    widths = list(rng.integers(1, 5, size=depth + 1))
    if loss == "logistic":
        widths[-1] = 1
    return [int(w) for w in widths]


def _random_weights(rng: np.random.Generator, widths: list[int], scale: float = 1.0) -> list[np.ndarray]:
    # Entries of variance scale²/d_in keep the end-to-end map of order one at every depth.
    return [scale * rng.standard_normal((widths[j + 1], widths[j])) / np.sqrt(widths[j]) for j in range(len(widths) - 1)]


def _random_data(rng: np.random.Generator, n: int, widths: list[int], loss: str):
    X = rng.standard_normal((n, widths[0]))
    if loss == "squared":
        Y = rng.standard_normal((n, widths[-1]))
    else:
        Y = (rng.random((n, 1)) < 0.5).astype(np.float64)
    return X, Y


def _random_task(rng: np.random.Generator, widths: list[int], loss: str):
    Xs, Ys = _random_data(rng, int(rng.integers(2, 7)), widths, loss)
    Xq, Yq = _random_data(rng, int(rng.integers(2, 7)), widths, loss)
    return Xs, Ys, Xq, Yq


def _random_layers(rng: np.random.Generator, depth: int, minimum: int = 1):
    """None (all layers) half of the time, otherwise a random subset of at least ``minimum`` layers."""
    if rng.random() < 0.5 and minimum <= depth:
        return None
    size = int(rng.integers(minimum, depth + 1))
    return sorted(int(j) for j in rng.choice(depth, size=size, replace=False))


def _random_rates(rng: np.random.Generator, steps: int):
    """A number or (a third of the time) a per-step list, each in [0.02, 0.2]."""
    if rng.random() < 1 / 3:
        return [float(r) for r in rng.uniform(0.02, 0.2, size=steps)]
    return float(rng.uniform(0.02, 0.2))


def _relative(a, b) -> float:
    """‖a − b‖ / ‖b‖ over lists of arrays (Frobenius norms)."""
    a, b = list(a), list(b)
    num = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b)))
    den = np.sqrt(sum(np.sum(y**2) for y in b))
    return float(num / den) if den > 0 else float(num)


def _central_difference(f, params: list[np.ndarray], h: float = 1e-3) -> list[np.ndarray]:
    """Gradient of f(list of arrays) by the fourth-order central stencil
    (−f(x+2h) + 8f(x+h) − 8f(x−h) + f(x−2h)) / 12h, error O(h⁴), coordinate by coordinate."""
    grads = []
    for j, P in enumerate(params):
        g = np.zeros_like(P)
        for idx in np.ndindex(P.shape):
            values = []
            for shift in (2 * h, h, -h, -2 * h):
                moved = [Q.copy() for Q in params]
                moved[j][idx] += shift
                values.append(f(moved))
            g[idx] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
        grads.append(g)
    return grads


# --------------------------------------------------------------------------------------------------
# The independent direct loop for adaptation


def _direct_gradients(weights: list[np.ndarray], X: np.ndarray, Y: np.ndarray, loss: str, layers) -> list[np.ndarray]:
    """∂L/∂W_j = (1/n) Σ_i A_jᵀ r_i x_iᵀ B_jᵀ with explicit products A_j = W_L⋯W_{j+1},
    B_j = W_{j−1}⋯W_1 and residuals r_i = ℓ'(W_e x_i) sample by sample."""
    L = len(weights)
    n = X.shape[0]
    grads = [np.zeros_like(W) for W in weights]
    for j in layers:
        A = np.eye(weights[-1].shape[0])
        for W in reversed(weights[j + 1:]):
            A = A @ W
        B = np.eye(weights[0].shape[1])
        for W in weights[:j]:
            B = W @ B
        W_e = A @ weights[j] @ B
        for i in range(n):
            f = W_e @ X[i]
            r = f - Y[i] if loss == "squared" else 1.0 / (1.0 + np.exp(-f)) - Y[i]
            grads[j] += np.outer(A.T @ r, B @ X[i]) / n
    return grads


def _direct_adapt(weights, X, Y, rates, loss, layers):
    current = [W.copy() for W in weights]
    for rate in rates:
        grads = _direct_gradients(current, X, Y, loss, layers)
        current = [W - rate * g for W, g in zip(current, grads)]
    return current


@identity("deep linear: k-step adapt = direct per-sample loop", 1e-10)
def check_adapt_direct_loop(rng: np.random.Generator) -> CheckResult:
    """k-step adaptation (batched backprop) vs an explicit per-sample loop with layer products."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for _ in range(16):
            depth = int(rng.integers(1, 5))
            steps = int(rng.integers(1, 6))
            widths = _random_widths(rng, depth, loss)
            weights = _random_weights(rng, widths)
            X, Y = _random_data(rng, int(rng.integers(1, 8)), widths, loss)
            layers = _random_layers(rng, depth)
            rates = _random_rates(rng, steps)
            per_step = rates if isinstance(rates, list) else [rates] * steps
            fast = dl.adapt(weights, X, Y, rates, steps, loss=loss, adapt_layers=layers)
            direct = _direct_adapt(weights, X, Y, per_step, loss, range(depth) if layers is None else layers)
            worst = max(worst, _relative(fast, direct))
            count += 1
    return CheckResult(count, worst, "relative Frobenius error of the adapted weights")


@identity("deep linear: maml_grad = finite differences of maml_loss", 1e-6)
def check_maml_grad_fd(rng: np.random.Generator) -> CheckResult:
    """Second-order meta-gradient (adjoint recursion with hand-written HVPs) vs finite differences."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for depth in (1, 2, 3, 4, 2, 3, 4):
            steps = int(rng.integers(1, 6))
            widths = _random_widths(rng, depth, loss)
            weights = _random_weights(rng, widths, scale=0.8)
            tasks = [_random_task(rng, widths, loss) for _ in range(int(rng.integers(1, 4)))]
            layers = _random_layers(rng, depth)
            rates = _random_rates(rng, steps)
            exact = dl.maml_grad(weights, tasks, rates, steps, loss=loss, adapt_layers=layers)
            numeric = _central_difference(
                lambda w: dl.maml_loss(w, tasks, rates, steps, loss=loss, adapt_layers=layers), weights
            )
            worst = max(worst, _relative(exact, numeric))
            count += 1
    return CheckResult(count, worst, "relative error; 4th-order central differences, h = 1e-3")


@identity("deep linear: FOMAML grad = finite differences of query loss", 1e-6)
def check_first_order_fd(rng: np.random.Generator) -> CheckResult:
    """First-order MAML vs finite differences of the query loss at the adapted weights, held fixed.

    FOMAML treats the adaptation displacement θ_k − θ_0 as a constant, so its gradient is that of
    θ ↦ mean_t L_q^t(θ + (θ_k^t − θ_0)) at θ_0: the query loss differentiated at the adapted point.
    """
    worst, count = 0.0, 0
    for loss in LOSSES:
        for depth in (1, 2, 3, 4):
            steps = int(rng.integers(1, 6))
            widths = _random_widths(rng, depth, loss)
            weights = _random_weights(rng, widths, scale=0.8)
            tasks = [_random_task(rng, widths, loss) for _ in range(int(rng.integers(1, 4)))]
            layers = _random_layers(rng, depth)
            rates = _random_rates(rng, steps)
            exact = dl.maml_grad(weights, tasks, rates, steps, loss=loss, adapt_layers=layers, first_order=True)
            shifts = []
            for Xs, Ys, _, _ in tasks:
                adapted = dl.adapt(weights, Xs, Ys, rates, steps, loss=loss, adapt_layers=layers)
                shifts.append([a - w for a, w in zip(adapted, weights)])

            def held_query_loss(w):
                return np.mean([
                    dl.task_loss([wj + sj for wj, sj in zip(w, shift)], Xq, Yq, loss=loss)
                    for shift, (_, _, Xq, Yq) in zip(shifts, tasks)
                ])

            worst = max(worst, _relative(exact, _central_difference(held_query_loss, weights)))
            count += 1
    return CheckResult(count, worst, "relative error; 4th-order central differences, h = 1e-3")


@identity("deep linear: depth-2 one step = exact alpha^2 formula", 1e-12)
def check_depth2_exact(rng: np.random.Generator) -> CheckResult:
    """ΔW_e of one adapt step on W2 W1 vs −α(W2W2ᵀG + GW1ᵀW1) + α²GW1ᵀW2ᵀG (G = ∂L/∂W_e)."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for layers in (None, [0], [1], [0, 1]) * 4:
            widths = _random_widths(rng, 2, loss)
            weights = _random_weights(rng, widths)
            X, Y = _random_data(rng, int(rng.integers(1, 8)), widths, loss)
            G = dl.end_to_end_grad(weights, X, Y, loss=loss)
            # The taken step comes from W_j − α g_j, rounded at eps·‖W_j‖: the rate moves every adapted
            # layer by a fraction u in [0.1, 1] of its norm or less, so that rounding stays at
            # eps/u of the step (a tiny gradient would otherwise turn it into a large relative error).
            grads = dl.layer_grads(weights, X, Y, loss=loss, adapt_layers=layers)
            moved = [j for j in range(2) if layers is None or j in layers]
            room = min(np.linalg.norm(weights[j]) / max(np.linalg.norm(grads[j]), 1e-300) for j in moved)
            lr = float(rng.uniform(0.1, 1.0)) * room
            taken = dl.end_to_end(dl.adapt(weights, X, Y, lr, 1, loss=loss, adapt_layers=layers)) - dl.end_to_end(weights)
            formula = depth2_step(weights, G, lr, adapt_layers=layers)
            worst = max(worst, _relative([taken], [formula]))
            count += 1
    return CheckResult(count, worst, "relative Frobenius error of the end-to-end step")


@identity("deep linear: first-order rule, remainder ~ alpha^2 (|slope-2|)", 0.05)
def check_first_order_rule(rng: np.random.Generator) -> CheckResult:
    """‖ΔW_e + α unvec(P vec G)‖ shrinks as α²: the fitted log-log slope is 2 (depths 2–4)."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for depth in (2, 3, 4, 2, 3, 4):
            widths = _random_widths(rng, depth, loss)
            weights = _random_weights(rng, widths)
            X, Y = _random_data(rng, int(rng.integers(2, 8)), widths, loss)
            # At least two adapted layers: with one, W_e is linear in it and the rule is exact.
            layers = _random_layers(rng, depth, minimum=2)
            G = dl.end_to_end_grad(weights, X, Y, loss=loss)
            P = preconditioner(weights, adapt_layers=layers)
            first_order = unvec(P @ vec(G), G.shape)
            W_e = dl.end_to_end(weights)
            # α small enough for the α³ terms to be negligible, large enough to stay above rounding.
            alphas = np.geomspace(1e-5, 1e-3, 7) / max(np.linalg.norm(G), 1e-12)
            remainders = []
            for alpha in alphas:
                step = dl.end_to_end(dl.adapt(weights, X, Y, alpha, 1, loss=loss, adapt_layers=layers)) - W_e
                remainders.append(np.linalg.norm(step + alpha * first_order))
            slope = np.polyfit(np.log(alphas), np.log(remainders), 1)[0]
            worst = max(worst, abs(slope - 2.0))
            count += 1
    return CheckResult(count, worst, "|fitted log-log slope − 2| of the remainder, alpha over two decades")


def _random_balanced(rng: np.random.Generator, deficient: bool):
    """A target W_e with singular values in [0.3, 2] (some set to zero if ``deficient``) and
    balanced weights of random depth 1–4 whose product it is."""
    d_out, d_in = (int(d) for d in rng.integers(1, 5, size=2))
    k = min(d_out, d_in)
    rank = int(rng.integers(0, k)) if deficient else k
    U, _ = np.linalg.qr(rng.standard_normal((d_out, d_out)))
    V, _ = np.linalg.qr(rng.standard_normal((d_in, d_in)))
    s = np.zeros(k)
    s[:rank] = rng.uniform(0.3, 2.0, size=rank)
    target = (U[:, :k] * s) @ V[:, :k].T
    depth = int(rng.integers(1, 5))
    hidden = [int(rng.integers(max(rank, 1), 6)) for _ in range(depth - 1)]
    weights = balanced_weights(target, hidden, rng=rng)
    return weights, depth, target


@identity("deep linear: balanced P = fractional-power closed form", 1e-10)
def check_balanced_closed_form(rng: np.random.Generator) -> CheckResult:
    """Σ_j (B_jᵀB_j) ⊗ (A_jA_jᵀ) of balanced weights vs Σ_j [W_eᵀW_e]^{(j−1)/L} ⊗ [W_eW_eᵀ]^{(L−j)/L}."""
    worst, count, unthresholded = 0.0, 0, 0.0
    for deficient in (False, True) * 12:
        weights, depth, _ = _random_balanced(rng, deficient)
        W_e = dl.end_to_end(weights)
        per_layer = preconditioner(weights)
        worst = max(worst, _relative([balanced_preconditioner(W_e, depth)], [per_layer]))
        if deficient and depth > 1:
            raw = balanced_preconditioner(W_e, depth, threshold=0.0)
            unthresholded = max(unthresholded, _relative([raw], [per_layer]))
        count += 1
    note = f"relative error; half rank-deficient (without the threshold: {unthresholded:.1e})"
    return CheckResult(count, worst, note)


@identity("deep linear: spectrum of P = singular-value closed form", 1e-10)
def check_preconditioner_spectrum(rng: np.random.Generator) -> CheckResult:
    """eigvalsh of P (balanced weights) vs Σ_j μ^{(j−1)/L} ν^{(L−j)/L} from the singular values of W_e."""
    worst, count = 0.0, 0
    for deficient in (False, True) * 12:
        weights, depth, target = _random_balanced(rng, deficient)
        numeric = np.linalg.eigvalsh(preconditioner(weights))
        closed = balanced_preconditioner_eigenvalues(target, depth)
        # W_e = 0 at depth >= 3 gives P = 0: the error is then absolute.
        scale = float(np.max(np.abs(closed))) or 1.0
        worst = max(worst, float(np.max(np.abs(numeric - closed))) / scale)
        count += 1
    return CheckResult(count, worst, "max eigenvalue error relative to the largest; half rank-deficient")
