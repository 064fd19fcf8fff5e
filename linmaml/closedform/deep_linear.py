"""MAML on deep linear networks, numerically exact (numpy, float64, no autograd).

Conventions (DESIGN.md)
-----------------------
* ``weights = [W1, …, WL]``, W1 is applied first, ``Wj`` has shape (d_j, d_{j−1}); the end-to-end
  map is W_e = W_L ⋯ W_1, shape (d_L, d_0).
* Inputs X have shape (n, d_0), targets Y shape (n, d_L); the network output is F = X W_eᵀ.
* Squared loss 1/(2n)·‖F − Y‖²_F. Logistic loss (d_L = 1, Y in {0, 1}): the mean binary
  cross-entropy on the logits F, (1/n)·Σ_i [log(1 + e^{f_i}) − y_i f_i].
* A task is ``(Xs, Ys, Xq, Yq)``: support set (adaptation) and query set (evaluation).
* Layer indices (``adapt_layers``) are 0-based: 0 is W1.

Derivation of the meta-gradient
-------------------------------
Adaptation is θ_{i+1} = θ_i − α_i P ∇L_s(θ_i), i = 0 … k−1, where P keeps the adapted layers.
The meta-loss L_q(θ_k) has gradient λ_0, found by the adjoint recursion

    λ_k = ∇L_q(θ_k),        λ_i = λ_{i+1} − α_i H_s(θ_i) P λ_{i+1},

since the Jacobian of one step is I − α_i P H_s(θ_i) and H_s, P are symmetric. The Hessian-vector
product of the support loss of a deep linear net, for a direction V = (V_1, …, V_L), is per layer

    (H V)_j = A_jᵀ dG B_jᵀ + dA_jᵀ G B_jᵀ + A_jᵀ G dB_jᵀ,

with A_j = W_{L:j+1}, B_j = W_{j−1:1} (empty products are identities), G = ∂L/∂W_e, and the
directional derivatives dW_e = Σ_j A_j V_j B_j, dA_j = Σ_{m>j} W_{L:m+1} V_m W_{m−1:j+1},
dB_j = Σ_{m<j} W_{j−1:m+1} V_m W_{m−1:1}. The first term is the Gauss–Newton part:
dG = dW_e Σ̂ with Σ̂ = XᵀX/n for the squared loss, and dG = dW_e XᵀSX/n with
S = diag(σ(f_i)(1 − σ(f_i))) for the logistic loss. The other two come from the second derivative
of the product of layers. The code evaluates these sums with the forward/backward recursions over
activations (h_j = h_{j−1} W_jᵀ and its directional derivative Rh_j = Rh_{j−1} W_jᵀ + h_{j−1} V_jᵀ;
back-propagated signals δ_{j−1} = δ_j W_j and Rδ_{j−1} = Rδ_j W_j + δ_j V_j), which costs
O(n·d²) per layer instead of forming the d×d products.

Overflow policy
---------------
Every result is finite or the call raises ``ValueError``; NaN or ∞ never comes back. When the
network already overflows float64 at the given weights (outputs, loss or gradients on the data),
the message names ``weights``; when it is finite there but the k inner steps push it out of the
float64 range (a diverging inner loop: too large a learning rate, or too many steps), the message
names ``lr`` and says that the inner loop diverged. Computations run with numpy's floating-point
warnings silenced, since the check on the result replaces them.

Every internal function broadcasts over leading task axes (X of shape (T, n, d_0), weights of shape
(d_j, d_{j−1}) shared or (T, d_j, d_{j−1}) per task), so ``maml_loss``/``maml_grad`` process
tasks of equal shape as one batch with ``np.matmul`` instead of a Python loop.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.tasks import TaskBatch

__all__ = [
    "end_to_end",
    "end_to_end_grad",
    "task_loss",
    "layer_grads",
    "hessian_vector_product",
    "adapt",
    "maml_loss",
    "maml_grad",
    "maml_value_and_grad",
]


# --------------------------------------------------------------------------------------------------
# Argument checks


def check_weights(weights, name: str = "weights") -> list[np.ndarray]:
    """``weights`` as a list of finite float64 matrices with consistent widths (raise otherwise)."""
    if isinstance(weights, np.ndarray) and weights.ndim < 3:
        raise ArgumentTypeError(name, f"expected a list of weight matrices [W1, ..., WL], got one array of shape {weights.shape}")
    if isinstance(weights, (str, bytes)):
        raise ArgumentTypeError(name, f"expected a list of weight matrices [W1, ..., WL], got {type(weights).__name__}")
    try:
        items = list(weights)
    except TypeError:
        raise ArgumentTypeError(name, f"expected a list of weight matrices [W1, ..., WL], got {type(weights).__name__}") from None
    if not items:
        raise ArgumentError(name, "expected at least one weight matrix")
    out = []
    for j, W in enumerate(items):
        W = _validate.real_matrix(W, f"{name}[{j}]")
        if min(W.shape) < 1:
            raise ArgumentError(f"{name}[{j}]", f"expected non-empty dimensions, got shape {W.shape}")
        if out and W.shape[1] != out[-1].shape[0]:
            raise ArgumentError(
                f"{name}[{j}]", f"expected {out[-1].shape[0]} columns to match the {out[-1].shape[0]} outputs of "
                f"{name}[{j - 1}], got shape {W.shape}"
            )
        out.append(W)
    return out


def _check_loss(loss, weights: list[np.ndarray]) -> str:
    loss = _validate.loss_name(loss)
    if loss == "logistic" and weights[-1].shape[0] != 1:
        raise ArgumentError("loss", f"'logistic' needs one output (d_L = 1), but the weights have d_L = {weights[-1].shape[0]}")
    return loss


def _check_data(X, Y, weights: list[np.ndarray], loss: str, xname: str, yname: str, ndim: int = 2):
    """X of shape (..., n, d_0) and Y of shape (..., n, d_L) with ``ndim`` dimensions each."""
    X = _validate.real_matrix(X, xname, ndim=ndim)
    Y = _validate.real_matrix(Y, yname, ndim=ndim)
    d0, dL = weights[0].shape[1], weights[-1].shape[0]
    if X.shape[-1] != d0 or X.shape[-2] < 1:
        raise ArgumentError(xname, f"expected shape {X.shape[:-2] + ('n', d0)} with n >= 1 (d_0 = {d0}), got {X.shape}")
    if Y.shape != X.shape[:-1] + (dL,):
        raise ArgumentError(yname, f"expected shape {X.shape[:-1] + (dL,)} to match {xname} and d_L = {dL}, got {Y.shape}")
    if loss == "logistic" and not np.all((Y == 0) | (Y == 1)):
        raise ArgumentError(yname, "logistic labels must be 0 or 1")
    return X, Y


def check_rates(lr, steps) -> list[float]:
    """``steps`` validated (an integer >= 0) and one non-negative finite learning rate per step."""
    steps = _validate.integer(steps, "steps", minimum=0)
    rates = _validate.learning_rates(lr, steps, "lr")
    for i, rate in enumerate(rates):
        if rate < 0:
            where = "lr" if not isinstance(lr, (Sequence, np.ndarray)) else f"lr[{i}]"
            raise ArgumentError(where, f"expected a non-negative learning rate, got {rate}")
    return rates


def _tasks_as_batches(tasks, weights: list[np.ndarray], loss: str) -> tuple[list[tuple[np.ndarray, ...]], int]:
    """Validated tasks grouped into batches of equal shapes: [(Xs, Ys, Xq, Yq) each (T_b, n, d)], T."""
    if isinstance(tasks, TaskBatch):
        arrays = []
        for field in ("Xs", "Ys", "Xq", "Yq"):
            arrays.append(getattr(tasks, field))
        Xs, Ys = _check_data(arrays[0], arrays[1], weights, loss, "tasks.Xs", "tasks.Ys", ndim=3)
        Xq, Yq = _check_data(arrays[2], arrays[3], weights, loss, "tasks.Xq", "tasks.Yq", ndim=3)
        if Xq.shape[0] != Xs.shape[0] or Xs.shape[0] < 1:
            raise ArgumentError("tasks", f"expected as many query as support sets (at least one), got {Xs.shape[0]} and {Xq.shape[0]}")
        return [(Xs, Ys, Xq, Yq)], Xs.shape[0]
    if isinstance(tasks, (str, bytes, np.ndarray)) or not isinstance(tasks, Iterable):
        raise ArgumentTypeError("tasks", f"expected an iterable of (Xs, Ys, Xq, Yq) tuples or a TaskBatch, got {type(tasks).__name__}")
    groups: dict[tuple, list[tuple[np.ndarray, ...]]] = {}
    count = 0
    for t, task in enumerate(tasks):
        try:
            parts = tuple(task)
        except TypeError:
            parts = ()
        if len(parts) != 4:
            raise ArgumentError(f"tasks[{t}]", "expected a tuple (Xs, Ys, Xq, Yq)")
        Xs, Ys = _check_data(parts[0], parts[1], weights, loss, f"tasks[{t}].Xs", f"tasks[{t}].Ys")
        Xq, Yq = _check_data(parts[2], parts[3], weights, loss, f"tasks[{t}].Xq", f"tasks[{t}].Yq")
        groups.setdefault((Xs.shape, Xq.shape), []).append((Xs, Ys, Xq, Yq))
        count += 1
    if count == 0:
        raise ArgumentError("tasks", "expected at least one task")
    batches = [tuple(np.stack(column) for column in zip(*group)) for group in groups.values()]
    return batches, count


# --------------------------------------------------------------------------------------------------
# Batched building blocks (no validation; leading axes broadcast)


def _t(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # The tanh form never overflows, unlike 1/(1 + exp(−z)) for large negative z.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _activations(weights: Sequence[np.ndarray], X: np.ndarray) -> list[np.ndarray]:
    """h_0 = X, h_j = h_{j−1} W_jᵀ; the last entry is the output F (..., n, d_L)."""
    hs = [X]
    for W in weights:
        hs.append(hs[-1] @ _t(W))
    return hs


def _losses(F: np.ndarray, Y: np.ndarray, loss: str) -> np.ndarray:
    """Loss per task, shape F.shape[:-2]."""
    n = F.shape[-2]
    if loss == "squared":
        return 0.5 * np.sum((F - Y) ** 2, axis=(-2, -1)) / n
    return np.sum(np.logaddexp(0.0, F) - Y * F, axis=(-2, -1)) / n


def _output_grad(F: np.ndarray, Y: np.ndarray, loss: str) -> np.ndarray:
    """D = ∂L/∂F, shape of F."""
    n = F.shape[-2]
    if loss == "squared":
        return (F - Y) / n
    return (_sigmoid(F) - Y) / n


def _output_hvp(F: np.ndarray, RF: np.ndarray, loss: str) -> np.ndarray:
    """RD = (∂²L/∂F²)[RF]: RF/n for the squared loss, σ'(F)·RF/n for the logistic loss."""
    n = F.shape[-2]
    if loss == "squared":
        return RF / n
    s = _sigmoid(F)
    return s * (1.0 - s) * RF / n


def _backprop(weights: Sequence[np.ndarray], hs: Sequence[np.ndarray], D: np.ndarray, layers: Sequence[int]) -> dict[int, np.ndarray]:
    """Per-layer gradients {j: δ_jᵀ h_j} for the 0-based ``layers`` (δ propagated only as deep as needed)."""
    grads: dict[int, np.ndarray] = {}
    if not layers:
        return grads
    lowest = min(layers)
    wanted = set(layers)
    delta = D
    for j in range(len(weights) - 1, lowest - 1, -1):
        if j in wanted:
            grads[j] = _t(delta) @ hs[j]
        if j > lowest:
            delta = delta @ weights[j]
    return grads


def _hvp(weights: Sequence[np.ndarray], hs: Sequence[np.ndarray], D: np.ndarray, loss: str,
         direction: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """H V for every layer at the point whose activations are ``hs`` and output gradient ``D``.

    ``direction[j]`` is V_j or None for a zero block (layers that do not adapt).
    """
    L = len(weights)
    # Forward: Rh_j is the directional derivative of the activations (None where it is zero).
    Rh: list[np.ndarray | None] = [None]
    for j in range(L):
        r = None if Rh[j] is None else Rh[j] @ _t(weights[j])
        if direction[j] is not None:
            term = hs[j] @ _t(direction[j])
            r = term if r is None else r + term
        Rh.append(r)
    if Rh[L] is None:
        return [np.zeros(hs[0].shape[:-2] + W.shape[-2:]) for W in weights]
    # Backward: δ_j = ∂L/∂h_{j+1} (0-based layer j) and its directional derivative Rδ_j.
    delta, Rdelta = D, _output_hvp(hs[L], Rh[L], loss)
    out: list[np.ndarray] = [None] * L  # type: ignore[list-item]
    for j in range(L - 1, -1, -1):
        block = _t(Rdelta) @ hs[j]  # Gauss–Newton part and the curvature of the layers above j
        if Rh[j] is not None:
            block = block + _t(delta) @ Rh[j]  # curvature of the layers below j
        out[j] = block
        if j > 0:
            new_Rdelta = Rdelta @ weights[j]
            if direction[j] is not None:
                new_Rdelta = new_Rdelta + delta @ direction[j]
            Rdelta = new_Rdelta
            delta = delta @ weights[j]
    return out


def _adapt(weights: Sequence[np.ndarray], X: np.ndarray, Y: np.ndarray, rates: Sequence[float], loss: str,
           layers: Sequence[int], record: bool = False):
    """k plain GD steps on the support loss; with ``record`` also the (θ_i, activations, D) per step."""
    current = list(weights)
    trajectory = []
    for rate in rates:
        hs = _activations(current, X)
        D = _output_grad(hs[-1], Y, loss)
        if record:
            trajectory.append((current, hs, D))
        grads = _backprop(current, hs, D, layers)
        current = [W - rate * grads[j] if j in grads else W for j, W in enumerate(current)]
    return current, trajectory


def _maml_batch(weights: list[np.ndarray], batch: tuple[np.ndarray, ...], rates: list[float], loss: str,
                layers: tuple[int, ...], first_order: bool, want_grad: bool):
    """Sum over a batch of tasks (T, n, d) of the query loss after adaptation, and of its gradient."""
    Xs, Ys, Xq, Yq = batch
    second_order = want_grad and not first_order and bool(layers)
    adapted, trajectory = _adapt(weights, Xs, Ys, rates, loss, layers, record=second_order)
    hq = _activations(adapted, Xq)
    total = float(np.sum(_losses(hq[-1], Yq, loss)))
    if not want_grad:
        return total, None
    grads = _backprop(adapted, hq, _output_grad(hq[-1], Yq, loss), range(len(weights)))
    adjoint = [grads[j] for j in range(len(weights))]
    if second_order:
        for (theta, hs, D), rate in zip(reversed(trajectory), reversed(rates)):
            if rate == 0.0:
                continue
            masked = [adjoint[j] if j in layers else None for j in range(len(weights))]
            Hv = _hvp(theta, hs, D, loss, masked)
            adjoint = [a - rate * h for a, h in zip(adjoint, Hv)]
    T = Xs.shape[0]
    summed = [a.sum(axis=0) if a.ndim == 3 else T * a for a in adjoint]
    return total, summed


def _all_finite(*arrays) -> bool:
    return all(bool(np.all(np.isfinite(a))) for a in arrays)


def _network_overflows(weights: list[np.ndarray], data, loss: str) -> bool:
    """Whether the loss or gradients overflow on some (X, Y) of ``data`` at ``weights``."""
    with np.errstate(all="ignore"):
        for X, Y in data:
            hs = _activations(weights, X)
            grads = _backprop(weights, hs, _output_grad(hs[-1], Y, loss), range(len(weights)))
            if not _all_finite(_losses(hs[-1], Y, loss), *grads.values()):
                return True
    return False


def _overflow_error(weights: list[np.ndarray], data, loss: str, rates: Sequence[float] = (),
                    layers: Sequence[int] = ()) -> ArgumentError:
    """The error for a non-finite result (module docstring, "Overflow policy").

    ``data`` is a list of (X, Y) pairs (any leading task axes); ``rates``/``layers`` describe the
    inner loop that ran. Blames ``weights`` if the network overflows on the data at the initial
    weights, else ``lr`` if the inner loop moved them.
    """
    if _network_overflows(weights, data, loss):
        return ArgumentError("weights", "the network's loss or gradients overflow float64 on this data at these "
                                        "weights; expected smaller weights (or inputs)")
    if layers and any(rate != 0 for rate in rates):
        return ArgumentError("lr", f"the inner loop diverged: its {len(rates)} steps leave the float64 range; expected a "
                                   f"smaller learning rate or fewer steps")
    return ArgumentError("weights", "the result overflows float64 at these weights; expected smaller weights (or inputs)")


# --------------------------------------------------------------------------------------------------
# Public API


def end_to_end(weights) -> np.ndarray:
    """The end-to-end map W_e = W_L ⋯ W_1, shape (d_L, d_0)."""
    weights = check_weights(weights)
    W_e = weights[0]
    with np.errstate(all="ignore"):
        for W in weights[1:]:
            W_e = W @ W_e
    if not _all_finite(W_e):
        raise ArgumentError("weights", "the end-to-end product W_L ⋯ W_1 overflows float64; expected smaller weights")
    return W_e


def task_loss(weights, X, Y, loss: str = "squared") -> float:
    """The loss of the network on (X, Y): X (n, d_0), Y (n, d_L).

    Squared: 1/(2n)·‖X W_eᵀ − Y‖²_F. Logistic (d_L = 1, Y in {0, 1}): mean binary cross-entropy
    on the logits X W_eᵀ.
    """
    weights = check_weights(weights)
    loss = _check_loss(loss, weights)
    X, Y = _check_data(X, Y, weights, loss, "X", "Y")
    with np.errstate(all="ignore"):
        value = float(_losses(_activations(weights, X)[-1], Y, loss))
    if not np.isfinite(value):
        raise _overflow_error(weights, [(X, Y)], loss)
    return value


def end_to_end_grad(weights, X, Y, loss: str = "squared") -> np.ndarray:
    """G = ∂L/∂W_e, shape (d_L, d_0): Gᵀ = Xᵀ D with D = ∂L/∂F (F = X W_eᵀ) of shape (n, d_L)."""
    weights = check_weights(weights)
    loss = _check_loss(loss, weights)
    X, Y = _check_data(X, Y, weights, loss, "X", "Y")
    with np.errstate(all="ignore"):
        F = _activations(weights, X)[-1]
        G = _t(_output_grad(F, Y, loss)) @ X
    if not _all_finite(F, G):
        raise _overflow_error(weights, [(X, Y)], loss)
    return G


def layer_grads(weights, X, Y, loss: str = "squared", adapt_layers=None) -> list[np.ndarray]:
    """Per-layer gradients ∂L/∂W_j = A_jᵀ G B_jᵀ (A_j = W_{L:j+1}, B_j = W_{j−1:1}, G = ∂L/∂W_e).

    Returns a list of L arrays of the weights' shapes. Layers not in ``adapt_layers`` (0-based
    indices; None means all) get zero arrays, so ``W − lr·g`` is the masked GD step for every layer.
    """
    weights = check_weights(weights)
    loss = _check_loss(loss, weights)
    X, Y = _check_data(X, Y, weights, loss, "X", "Y")
    layers = _validate.layer_indices(adapt_layers, len(weights))
    with np.errstate(all="ignore"):
        hs = _activations(weights, X)
        grads = _backprop(weights, hs, _output_grad(hs[-1], Y, loss), layers)
    if not _all_finite(hs[-1], *grads.values()):
        raise _overflow_error(weights, [(X, Y)], loss)
    return [grads[j] if j in grads else np.zeros_like(W) for j, W in enumerate(weights)]


def hessian_vector_product(weights, X, Y, direction, loss: str = "squared") -> list[np.ndarray]:
    """H V: the Hessian of the loss on (X, Y) w.r.t. all weights, applied to ``direction``.

    ``direction`` is a list [V_1, …, V_L] with V_j of W_j's shape, or None for a zero block. Returns
    [(H V)_1, …, (H V)_L] (see the module docstring for the formula).
    """
    weights = check_weights(weights)
    loss = _check_loss(loss, weights)
    X, Y = _check_data(X, Y, weights, loss, "X", "Y")
    if isinstance(direction, np.ndarray) or not isinstance(direction, Iterable):
        raise ArgumentTypeError("direction", "expected a list [V1, ..., VL] of arrays (or None entries)")
    direction = list(direction)
    if len(direction) != len(weights):
        raise ArgumentError("direction", f"expected {len(weights)} blocks, got {len(direction)}")
    checked = []
    for j, (V, W) in enumerate(zip(direction, weights)):
        if V is not None:
            V = _validate.real_matrix(V, f"direction[{j}]")
            if V.shape != W.shape:
                raise ArgumentError(f"direction[{j}]", f"expected shape {W.shape}, got {V.shape}")
        checked.append(V)
    with np.errstate(all="ignore"):
        hs = _activations(weights, X)
        out = _hvp(weights, hs, _output_grad(hs[-1], Y, loss), loss, checked)
    if not _all_finite(*out):
        if _network_overflows(weights, [(X, Y)], loss):
            raise _overflow_error(weights, [(X, Y)], loss)
        raise ArgumentError("direction", "the Hessian-vector product overflows float64; expected a smaller direction")
    return out


def adapt(weights, X, Y, lr, steps: int, loss: str = "squared", adapt_layers=None) -> list[np.ndarray]:
    """The weights after ``steps`` plain gradient-descent steps on the loss of (X, Y).

    X (n, d_0), Y (n, d_L). ``lr`` is a non-negative number or a sequence of ``steps`` per-step
    rates; ``adapt_layers`` is an iterable of 0-based layer indices that move (None: all), the
    others stay fixed. Returns new arrays (copies when ``steps`` is 0); the input is not modified.
    """
    weights = check_weights(weights)
    rates = check_rates(lr, steps)
    loss = _check_loss(loss, weights)
    X, Y = _check_data(X, Y, weights, loss, "X", "Y")
    layers = _validate.layer_indices(adapt_layers, len(weights))
    with np.errstate(all="ignore"):
        adapted, _ = _adapt(weights, X, Y, rates, loss, layers)
    if not _all_finite(*adapted):
        raise _overflow_error(weights, [(X, Y)], loss, rates, layers)
    return [np.array(W, dtype=np.float64, copy=True) for W in adapted]


def maml_value_and_grad(weights, tasks, lr, steps: int, loss: str = "squared", adapt_layers=None,
                        first_order: bool = False) -> tuple[float, list[np.ndarray]]:
    """``(maml_loss(...), maml_grad(...))`` computed together (one adaptation pass)."""
    return _maml(weights, tasks, lr, steps, loss, adapt_layers, first_order, want_grad=True)


def maml_loss(weights, tasks, lr, steps: int, loss: str = "squared", adapt_layers=None) -> float:
    """The MAML objective: the mean over tasks of the query loss after adapting on the support set.

    ``tasks`` is an iterable of ``(Xs, Ys, Xq, Yq)`` with Xs (n_s, d_0), Ys (n_s, d_L),
    Xq (n_q, d_0), Yq (n_q, d_L) (sizes may differ between tasks), or a
    :class:`linmaml.tasks.TaskBatch`. ``lr``, ``steps``, ``loss`` and ``adapt_layers`` as in
    :func:`adapt`.
    """
    value, _ = _maml(weights, tasks, lr, steps, loss, adapt_layers, False, want_grad=False)
    return value


def maml_grad(weights, tasks, lr, steps: int, loss: str = "squared", adapt_layers=None,
              first_order: bool = False) -> list[np.ndarray]:
    """The exact gradient of :func:`maml_loss` w.r.t. every initial weight matrix, [∂/∂W_1, …, ∂/∂W_L].

    Computed by hand: forward through the k inner steps storing the iterates, then the adjoint
    recursion λ_i = λ_{i+1} − α_i H_s(θ_i) P λ_{i+1} with the Hessian-vector products of the support
    loss written out (module docstring). Layers that do not adapt still get their meta-gradient (they
    shape the adaptation of the others). ``first_order=True`` gives first-order MAML: the gradient of
    the query loss at the adapted weights, passed straight through to the initial weights.
    """
    _, grads = _maml(weights, tasks, lr, steps, loss, adapt_layers, first_order, want_grad=True)
    return grads


def _maml(weights, tasks, lr, steps, loss, adapt_layers, first_order, want_grad):
    weights = check_weights(weights)
    rates = check_rates(lr, steps)
    loss = _check_loss(loss, weights)
    layers = _validate.layer_indices(adapt_layers, len(weights))
    if not isinstance(first_order, (bool, np.bool_)):
        raise ArgumentTypeError("first_order", f"expected True or False, got {first_order!r}")
    batches, count = _tasks_as_batches(tasks, weights, loss)
    total = 0.0
    grads = [np.zeros_like(W) for W in weights] if want_grad else None
    with np.errstate(all="ignore"):
        for batch in batches:
            value, batch_grads = _maml_batch(weights, batch, rates, loss, layers, bool(first_order), want_grad)
            total += value
            if want_grad:
                grads = [g + b for g, b in zip(grads, batch_grads)]
        if want_grad:
            grads = [g / count for g in grads]
        total = total / count
    if not (np.isfinite(total) and (grads is None or _all_finite(*grads))):
        data = [pair for Xs, Ys, Xq, Yq in batches for pair in ((Xs, Ys), (Xq, Yq))]
        raise _overflow_error(weights, data, loss, rates, layers)
    return total, grads
