"""Verification rows for the numeric closed forms of MAML on deep linear networks (numpy only).

Every row draws random instances from :mod:`linmaml.checks._common` (random widths 1–4, depths 1–4,
inner steps 1–5, both losses, random sets of adapted layers) and compares the closed form with a
computation that does not share its code: an explicit per-sample loop with explicit layer products,
finite differences, the step actually taken by ``adapt``, or numerical eigenvalues. Errors are
``_common.relative_error`` (‖a − b‖_F / ‖b‖_F, b the reference side) unless a row's note says
otherwise. All rows start with "deep linear:" (``linmaml verify --only "deep linear"``).
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
from linmaml.checks._common import (
    LOSSES,
    central_difference,
    random_data,
    random_layers,
    random_rates,
    random_task,
    random_weights,
    random_widths,
    relative_error,
    worst_of,
)
from linmaml.verification import CheckResult, identity

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
    """k-step adaptation (checks linmaml.closedform.deep_linear.adapt: batched backprop) vs an explicit
    per-sample loop with explicit layer products."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for _ in range(16):
            depth = int(rng.integers(1, 5))
            steps = int(rng.integers(1, 6))
            widths = random_widths(rng, depth, loss)
            weights = random_weights(rng, widths)
            X, Y = random_data(rng, int(rng.integers(1, 8)), widths[0], widths[-1], loss)
            layers = random_layers(rng, depth)
            rates = random_rates(rng, steps)
            per_step = rates if isinstance(rates, list) else [rates] * steps
            fast = dl.adapt(weights, X, Y, rates, steps, loss=loss, adapt_layers=layers)
            direct = _direct_adapt(weights, X, Y, per_step, loss, range(depth) if layers is None else layers)
            worst = worst_of(worst, relative_error(fast, direct))
            count += 1
    return CheckResult(count, worst, "relative Frobenius error of the adapted weights")


def _random_maml_instance(rng: np.random.Generator, depth: int, loss: str):
    """(steps, weights, tasks, layers, rates) of one meta-gradient row instance: 1–5 steps,
    weights of scale 0.8, 1–3 tasks, random adapted layers and rates."""
    steps = int(rng.integers(1, 6))
    widths = random_widths(rng, depth, loss)
    weights = random_weights(rng, widths, scale=0.8)
    tasks = [random_task(rng, widths[0], widths[-1], loss) for _ in range(int(rng.integers(1, 4)))]
    return steps, weights, tasks, random_layers(rng, depth), random_rates(rng, steps)


@identity("deep linear: maml_grad = finite differences of maml_loss", 1e-6)
def check_maml_grad_fd(rng: np.random.Generator) -> CheckResult:
    """Second-order meta-gradient (checks linmaml.closedform.deep_linear.maml_grad: adjoint recursion
    with hand-written HVPs) vs 4th-order central differences of linmaml.closedform.deep_linear.maml_loss."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for depth in (1, 2, 3, 4, 2, 3, 4):
            steps, weights, tasks, layers, rates = _random_maml_instance(rng, depth, loss)
            exact = dl.maml_grad(weights, tasks, rates, steps, loss=loss, adapt_layers=layers)
            numeric = central_difference(
                lambda w: dl.maml_loss(w, tasks, rates, steps, loss=loss, adapt_layers=layers), weights
            )
            worst = worst_of(worst, relative_error(exact, numeric))
            count += 1
    return CheckResult(count, worst, "relative error; 4th-order central differences, h = 1e-3")


@identity("deep linear: FOMAML grad = query gradient after a per-sample loop", 1e-10)
def check_first_order_direct(rng: np.random.Generator) -> CheckResult:
    """First-order MAML (checks linmaml.closedform.deep_linear.maml_grad with first_order=True) vs
    the first-order gradient written out directly: each task's support set adapts the weights by the
    explicit per-sample loop above (no ``adapt``), and the meta-gradient is the mean over tasks of the
    query gradient of *every* layer at those adapted weights (FOMAML treats the displacement
    θ_k − θ_0 as a constant, so layers that did not adapt get their query gradient too)."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for depth in (1, 2, 3, 4, 2, 3):
            steps, weights, tasks, layers, rates = _random_maml_instance(rng, depth, loss)
            per_step = rates if isinstance(rates, list) else [rates] * steps
            adapted_layers = range(depth) if layers is None else layers
            exact = dl.maml_grad(weights, tasks, rates, steps, loss=loss, adapt_layers=layers, first_order=True)
            direct = [np.zeros_like(W) for W in weights]
            for Xs, Ys, Xq, Yq in tasks:
                adapted = _direct_adapt(weights, Xs, Ys, per_step, loss, adapted_layers)
                for total, g in zip(direct, _direct_gradients(adapted, Xq, Yq, loss, range(depth))):
                    total += g / len(tasks)
            worst = worst_of(worst, relative_error(exact, direct))
            count += 1
    return CheckResult(count, worst, "relative error of the meta-gradient (all layers)")


@identity("deep linear: depth-2 one step = exact alpha^2 formula", 1e-12)
def check_depth2_exact(rng: np.random.Generator) -> CheckResult:
    """The exact depth-2 step (checks linmaml.closedform.preconditioner.depth2_step),
    −α(W2W2ᵀG + GW1ᵀW1) + α²GW1ᵀW2ᵀG with G = ∂L/∂W_e, vs ΔW_e of one step actually taken by
    linmaml.closedform.deep_linear.adapt."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for layers in (None, [0], [1], [0, 1]) * 4:
            widths = random_widths(rng, 2, loss)
            weights = random_weights(rng, widths)
            X, Y = random_data(rng, int(rng.integers(1, 8)), widths[0], widths[-1], loss)
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
            worst = worst_of(worst, relative_error(formula, taken))
            count += 1
    return CheckResult(count, worst, "relative Frobenius error of the end-to-end step")


@identity("deep linear: first-order rule, remainder ~ alpha^2 (|slope-2|)", 0.05)
def check_first_order_rule(rng: np.random.Generator) -> CheckResult:
    """The first-order rule ΔW_e ≈ −α unvec(P vec G) (checks linmaml.closedform.preconditioner.preconditioner):
    ‖ΔW_e + α unvec(P vec G)‖ of a step taken by adapt shrinks as α², fitted log-log slope 2 (depths 2–4)."""
    worst, count = 0.0, 0
    for loss in LOSSES:
        for depth in (2, 3, 4, 2, 3, 4):
            widths = random_widths(rng, depth, loss)
            weights = random_weights(rng, widths)
            X, Y = random_data(rng, int(rng.integers(2, 8)), widths[0], widths[-1], loss)
            # At least two adapted layers: with one, W_e is linear in it and the rule is exact.
            layers = random_layers(rng, depth, minimum=2)
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
            worst = worst_of(worst, abs(slope - 2.0))
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
    """Fractional-power closed form Σ_j [W_eᵀW_e]^{(j−1)/L} ⊗ [W_eW_eᵀ]^{(L−j)/L} (checks
    linmaml.closedform.preconditioner.balanced_preconditioner) vs the per-layer Kronecker sum
    Σ_j (B_jᵀB_j) ⊗ (A_jA_jᵀ) of balanced weights (linmaml.closedform.preconditioner.preconditioner)."""
    worst, count, unthresholded = 0.0, 0, 0.0
    for deficient in (False, True) * 12:
        weights, depth, _ = _random_balanced(rng, deficient)
        W_e = dl.end_to_end(weights)
        per_layer = preconditioner(weights)
        worst = worst_of(worst, relative_error([balanced_preconditioner(W_e, depth)], [per_layer]))
        if deficient and depth > 1:
            raw = balanced_preconditioner(W_e, depth, threshold=0.0)
            unthresholded = worst_of(unthresholded, relative_error([raw], [per_layer]))
        count += 1
    note = f"relative error; half rank-deficient (without the threshold: {unthresholded:.1e})"
    return CheckResult(count, worst, note)


@identity("deep linear: spectrum of P = singular-value closed form", 1e-10)
def check_preconditioner_spectrum(rng: np.random.Generator) -> CheckResult:
    """Σ_j μ^{(j−1)/L} ν^{(L−j)/L} from the singular values of W_e (checks
    linmaml.closedform.preconditioner.balanced_preconditioner_eigenvalues) vs numpy eigvalsh of the
    per-layer P of balanced weights."""
    worst, count = 0.0, 0
    for deficient in (False, True) * 12:
        weights, depth, target = _random_balanced(rng, deficient)
        numeric = np.linalg.eigvalsh(preconditioner(weights))
        closed = balanced_preconditioner_eigenvalues(target, depth)
        # W_e = 0 at depth >= 3 gives P = 0: relative_error is then absolute.
        worst = worst_of(worst, relative_error(np.sort(closed), numeric))
        count += 1
    return CheckResult(count, worst, "relative error of the sorted spectrum; half rank-deficient")
