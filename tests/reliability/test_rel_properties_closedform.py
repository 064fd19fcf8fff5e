"""Property-based tests (hypothesis) of the closed forms: bad input never crashes.

Every call gets random shapes, depths, widths, step counts, learning rates (0, −0, negative, huge,
NaN, ±∞, per-step lists of the wrong length), adapted layers and labels (logistic labels outside
{0, 1} included), and must do one of two things:

* return finite results that agree with an independent computation: the torch simulator
  (:mod:`linmaml.simulator`, autograd through the inner loop) for deep linear networks, autograd
  for the depth-2 step and the scalar chain's gradient, exact rational arithmetic
  (:class:`fractions.Fraction`) for the Gaussian and scalar population objectives;
* raise ``ValueError``/``TypeError`` whose message starts with the name of an argument that is
  actually wrong (computed here from the input, independently of the library).

Nothing else may escape: no other exception type, no numpy warning (they are turned into errors
around every library call), no NaN.

Overflow policy (documented in ``closedform.deep_linear``): a result is finite or a ``ValueError``.
A diverging inner loop names ``lr`` ("the inner loop diverged: …"); a network that already
overflows float64 at its initial weights names ``weights``. The only ∞ that comes back is the
scalar chain's population objective (``scalar_maml_loss``), which is a non-negative expectation
that can genuinely exceed float64 (see ``closedform.scalar``). When the library reports an
overflow, the test checks that the independent computation indeed overflows or is astronomically
large (> 1e250), so an error can never hide a representable answer.
"""
from __future__ import annotations

import importlib
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from linmaml import simulator as sim
from linmaml.closedform import deep_linear as dl
from linmaml.closedform import gaussian
from linmaml.closedform import scalar
from linmaml.tasks import RegressionFamily

# The package attribute ``preconditioner`` is the function; the module is reached by name.
pc = importlib.import_module("linmaml.closedform.preconditioner")

PROPERTY = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
HUGE = 1e250  # "astronomically large": where an overflow in one implementation is no disagreement

# --------------------------------------------------------------------------------------------------
# Strategies

# Valid extremes are drawn more often than invalid values, so that both branches of every property
# (an error naming the argument; a finite result equal to the reference, or an honest overflow) run.
VALID_RATES = [0.0, -0.0, 1e-300, 1.0, 1e2, 1e4, 1e10, 1e100, 1e300]
INVALID_RATES = [-1e-3, -2.0, math.nan, math.inf, -math.inf]
rate = st.one_of(st.floats(0.0, 2.0), st.sampled_from(VALID_RATES), st.floats(0.0, 1e308),
                 st.sampled_from(INVALID_RATES), st.floats(allow_nan=True, allow_infinity=True))
learning_rate = st.one_of(rate, rate, rate, st.lists(rate, min_size=0, max_size=4))
steps_strategy = st.one_of(st.integers(0, 4), st.integers(1, 4), st.integers(1, 3), st.integers(-2, -1))
# Mostly ordinary weight scales, sometimes ones whose products overflow float64.
weight_scale = st.sampled_from([0.5, 1.0, 1.0, 1.5, 1e-3, 1e3, 1e150])


@st.composite
def deep_linear_case(draw):
    depth = draw(st.integers(1, 4))
    loss = draw(st.sampled_from(["squared", "logistic"]))
    sizes = [draw(st.integers(1, 4)) for _ in range(depth + 1)]
    if loss == "logistic":
        sizes[-1] = 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(weight_scale)
    weights = [scale * rng.standard_normal((sizes[j + 1], sizes[j])) for j in range(depth)]
    tasks, n_s, n_q = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    Xs, Xq = rng.standard_normal((tasks, n_s, sizes[0])), rng.standard_normal((tasks, n_q, sizes[0]))
    labels = draw(st.sampled_from(["good"] * 5 + ["half", "minus_one", "two"]))
    if loss == "squared":
        Ys, Yq = rng.standard_normal((tasks, n_s, sizes[-1])), rng.standard_normal((tasks, n_q, sizes[-1]))
    else:
        Ys = (rng.random((tasks, n_s, 1)) < 0.5).astype(float)
        Yq = (rng.random((tasks, n_q, 1)) < 0.5).astype(float)
    if labels != "good":
        bad = {"half": 0.5, "minus_one": -1.0, "two": 2.0}[labels]
        target = Ys if draw(st.booleans()) else Yq
        target[0, 0, 0] = bad
        labels = "good" if loss == "squared" else ("support" if target is Ys else "query")
    layers = draw(st.one_of(st.none(), st.none(), st.lists(st.integers(0, depth - 1), max_size=depth),
                            st.lists(st.integers(-1, depth), max_size=depth)))
    return dict(weights=weights, loss=loss, Xs=Xs, Ys=Ys, Xq=Xq, Yq=Yq, layers=layers, bad_labels=labels)


def fixed_case(loss="squared", scale=1.0, labels="good", layers=None, sizes=(3, 4, 2), tasks=2):
    """A deterministic case for the ``@example`` rows that every run must cover."""
    rng = np.random.default_rng(5)
    sizes = list(sizes[:-1]) + [1] if loss == "logistic" else list(sizes)
    weights = [scale * rng.standard_normal((sizes[j + 1], sizes[j])) for j in range(len(sizes) - 1)]
    Xs, Xq = rng.standard_normal((tasks, 4, sizes[0])), rng.standard_normal((tasks, 3, sizes[0]))
    if loss == "squared":
        Ys, Yq = rng.standard_normal((tasks, 4, sizes[-1])), rng.standard_normal((tasks, 3, sizes[-1]))
    else:
        Ys, Yq = (Xs[..., :1] > 0).astype(float), (Xq[..., :1] > 0).astype(float)
    if labels == "support":
        Ys[0, 0, 0] = 2.0
    return dict(weights=weights, loss=loss, Xs=Xs, Ys=Ys, Xq=Xq, Yq=Yq, layers=layers, bad_labels=labels)


# Cases every run covers, whatever hypothesis draws: a diverging inner loop (both losses), weights
# whose products overflow, logistic labels outside {0, 1}, a negative, NaN and a per-step rate.
EXAMPLES = [
    dict(case=fixed_case(), lr=1e10, steps=3),
    dict(case=fixed_case("logistic"), lr=1e200, steps=2),
    dict(case=fixed_case(scale=1e150), lr=0.1, steps=1),
    dict(case=fixed_case("logistic", labels="support"), lr=0.1, steps=1),
    dict(case=fixed_case(), lr=-0.1, steps=1),
    dict(case=fixed_case(), lr=math.nan, steps=1),
    dict(case=fixed_case(layers=[1]), lr=[0.1, 0.05], steps=2),
    dict(case=fixed_case(), lr=0.1, steps=2),
]


def with_examples(extra=None):
    def decorate(test):
        for row in EXAMPLES:
            test = example(**row, **(extra or {}))(test)
        return test
    return decorate


# --------------------------------------------------------------------------------------------------
# Helpers


def call(function, *args, **kwargs):
    """(result, None) or (None, error) for ValueError/TypeError; warnings are errors, anything else escapes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return function(*args, **kwargs), None
        except (ValueError, TypeError) as error:
            return None, error


def number_problems(lr, steps) -> set[str]:
    """Names to blame when ``lr`` (a number ≥ 0) and ``steps`` (≥ 0) are each checked."""
    return ({"steps"} if steps < 0 else set()) | ({"lr"} if not (math.isfinite(lr) and lr >= 0) else set())


def rate_problems(lr, steps, *, allow_negative=False) -> set[str]:
    """Names that must be blamed for (lr, steps), or an empty set if both are valid."""
    if steps < 0:
        return {"steps"}
    rates = lr if isinstance(lr, list) else [lr] * steps
    if isinstance(lr, list) and len(lr) != steps:
        return {"lr"}
    if not isinstance(lr, list) and not math.isfinite(lr):
        return {"lr"}
    if any(not math.isfinite(r) or (r < 0 and not allow_negative) for r in rates):
        return {"lr"}
    return set()


def layer_problems(layers, depth) -> set[str]:
    return {"adapt_layers"} if layers is not None and any(j < 0 or j >= depth for j in layers) else set()


def comparable(loss, lr) -> bool:
    """Whether two float64 implementations must agree closely. With the logistic loss near
    saturation, σ(F) − y carries an absolute rounding error of ~1e-16 that a rate far above 1
    multiplies into the weights: there both answers are legitimate, and only their finiteness (or a
    clear error) is checked."""
    rates = lr if isinstance(lr, list) else [lr]
    return loss == "squared" or all(abs(r) <= 10 for r in rates)


def rates_for_reference(lr, steps):
    return list(lr) if isinstance(lr, list) else lr


def torch_list(weights):
    return [torch.as_tensor(W, dtype=torch.float64) for W in weights]


def overflows(*arrays) -> bool:
    """The independent computation overflows or is astronomically large (module docstring)."""
    for a in arrays:
        a = np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
        with np.errstate(all="ignore"):
            if not np.all(np.isfinite(a)) or (a.size and np.max(np.abs(a)) > HUGE):
                return True
    return False


def assert_close(ours, reference, rtol=1e-7):
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference.detach() if isinstance(reference, torch.Tensor) else reference, dtype=np.float64)
    assert np.all(np.isfinite(ours))
    scale = max(float(np.max(np.abs(reference))) if reference.size else 0.0, 1e-300)
    assert float(np.max(np.abs(ours - reference))) <= rtol * scale + 1e-12, (ours, reference)


# --------------------------------------------------------------------------------------------------
# Deep linear networks: adapt, maml_loss, maml_grad against the torch simulator


@PROPERTY
@given(case=deep_linear_case(), lr=learning_rate, steps=steps_strategy)
@with_examples()
def test_adapt_is_finite_and_equals_the_simulator_or_names_the_argument(case, lr, steps, assert_names):
    weights, loss, layers = case["weights"], case["loss"], case["layers"]
    X, Y = case["Xs"][0], case["Ys"][0]
    adapted, error = call(dl.adapt, weights, X, Y, lr, steps, loss=loss, adapt_layers=layers)
    expected = rate_problems(lr, steps) | layer_problems(layers, len(weights))
    if case["bad_labels"] == "support":
        expected.add("Y")
    if expected:
        assert error is not None, "invalid input was accepted"
        assert_names(error, expected)
        return
    reference = sim.adapt(torch_list(weights), X, Y, rates_for_reference(lr, steps), steps, loss, layers,
                          create_graph=False)
    if not comparable(loss, lr):
        event("ill-conditioned logistic inner loop: finite or an error")
        if error is not None:
            assert_names(error, {"lr", "weights"})
        return
    if error is not None:
        assert_names(error, {"lr", "weights"})
        assert "diverged" in str(error) or str(error).startswith("weights")
        assert overflows(*reference) or overflows(sim.task_loss(torch_list(weights), torch.as_tensor(X),
                                                                torch.as_tensor(Y), loss))
        return
    if overflows(*reference):
        assert max(float(np.max(np.abs(W))) for W in adapted) > HUGE
        return
    event("finite, equal to the simulator")
    for ours, theirs in zip(adapted, reference):
        assert_close(ours, theirs)


@PROPERTY
@given(case=deep_linear_case(), lr=learning_rate, steps=steps_strategy, first_order=st.booleans())
@with_examples({"first_order": False})
def test_maml_loss_and_grad_are_finite_and_equal_the_simulator_or_name_the_argument(case, lr, steps, first_order,
                                                                                    assert_names):
    weights, loss, layers = case["weights"], case["loss"], case["layers"]
    tasks = list(zip(case["Xs"], case["Ys"], case["Xq"], case["Yq"]))
    value, error = call(dl.maml_loss, weights, tasks, lr, steps, loss=loss, adapt_layers=layers)
    pair, grad_error = call(dl.maml_value_and_grad, weights, tasks, lr, steps, loss=loss, adapt_layers=layers,
                            first_order=first_order)
    expected = rate_problems(lr, steps) | layer_problems(layers, len(weights))
    if case["bad_labels"] != "good":
        expected.add("tasks[")
    if expected:
        assert error is not None and grad_error is not None, "invalid input was accepted"
        assert_names(error, expected)
        assert_names(grad_error, expected)
        return
    if not comparable(loss, lr):
        event("ill-conditioned logistic inner loop: finite or an error")
        for err in (error, grad_error):
            if err is not None:
                assert_names(err, {"lr", "weights"})
        return
    ref_value, ref_grads = sim.maml_value_and_grad(torch_list(weights), (case["Xs"], case["Ys"], case["Xq"],
                                                                         case["Yq"]),
                                                   rates_for_reference(lr, steps), steps, loss, layers,
                                                   first_order=first_order)
    for err, outputs in ((error, [value]), (grad_error, None if pair is None else [pair[0], *pair[1]])):
        if err is not None:
            assert_names(err, {"lr", "weights"})
            assert overflows(ref_value, *ref_grads) or overflows(
                sim.task_loss(torch_list(weights), torch.as_tensor(case["Xs"]), torch.as_tensor(case["Ys"]), loss),
                sim.task_loss(torch_list(weights), torch.as_tensor(case["Xq"]), torch.as_tensor(case["Yq"]), loss))
        elif overflows(ref_value, *ref_grads):
            assert max(float(np.max(np.abs(o))) for o in outputs) > HUGE or not outputs
        else:
            event("finite, equal to the simulator")
            assert_close(outputs[0], ref_value)
            for ours, theirs in zip(outputs[1:], ref_grads):
                assert_close(ours, theirs, rtol=1e-6)
    if error is None and grad_error is None:
        assert value == pytest.approx(pair[0], rel=1e-12, abs=1e-300)


@PROPERTY
@given(depth=st.integers(1, 4), widths=st.lists(st.integers(1, 3), min_size=5, max_size=5),
       scale=weight_scale, seed=st.integers(0, 2**32 - 1),
       layers=st.one_of(st.none(), st.lists(st.integers(-1, 4), max_size=3)))
def test_preconditioner_is_the_simulators_jacobian_gram_matrix(depth, widths, scale, seed, layers, assert_names):
    rng = np.random.default_rng(seed)
    weights = [scale * rng.standard_normal((widths[j + 1], widths[j])) for j in range(depth)]
    P, error = call(pc.preconditioner, weights, adapt_layers=layers)
    if layer_problems(layers, depth):
        assert_names(error, {"adapt_layers"})
        return
    reference = sim.implicit_preconditioner(torch_list(weights), layers)
    if error is not None:
        assert_names(error, {"weights"})
        assert overflows(reference)
        return
    if overflows(reference):
        assert np.max(np.abs(P)) > HUGE
        return
    assert_close(P, reference, rtol=1e-10)


@PROPERTY
@given(sizes=st.lists(st.integers(1, 3), min_size=3, max_size=3), scale=weight_scale, g_scale=weight_scale,
       lr=rate, seed=st.integers(0, 2**32 - 1), layers=st.one_of(st.none(), st.lists(st.integers(0, 1), max_size=2)))
def test_depth2_step_is_one_autograd_step_on_a_linear_loss(sizes, scale, g_scale, lr, seed, layers, assert_names):
    # ℓ(W_e) = ⟨G, W_e⟩ has ∂ℓ/∂W_e = G exactly, so one GD step on its layers is what depth2_step computes.
    rng = np.random.default_rng(seed)
    weights = [scale * rng.standard_normal((sizes[1], sizes[0])), scale * rng.standard_normal((sizes[2], sizes[1]))]
    G = g_scale * rng.standard_normal((sizes[2], sizes[0]))
    step, error = call(pc.depth2_step, weights, G, lr, adapt_layers=layers)
    remainder, remainder_error = call(pc.second_order_remainder, weights, G, lr, adapt_layers=layers)
    if not math.isfinite(lr) or lr < 0:
        assert_names(error, {"lr"})
        assert_names(remainder_error, {"lr"})
        return
    W1, W2 = (torch.tensor(W, requires_grad=True) for W in weights)
    (torch.as_tensor(G) * (W2 @ W1)).sum().backward()
    moving = {0, 1} if layers is None else set(layers)
    new1 = W1 - lr * W1.grad if 0 in moving else W1
    new2 = W2 - lr * W2.grad if 1 in moving else W2
    with torch.no_grad():
        reference = new2 @ new1 - W2 @ W1
    if error is not None:
        assert_names(error, {"lr", "G"})
        assert overflows(reference) or overflows(W1.grad, W2.grad)
        return
    if overflows(reference):
        assert np.max(np.abs(step)) > HUGE
        return
    # Rounding is relative to the terms lr·W W ᵀG, lr·G WᵀW and lr²·G WᵀWᵀG, which may cancel.
    n1, n2, ng = (float(np.linalg.norm(a)) for a in (*weights, G))
    terms = lr * ng * (n1**2 + n2**2) + lr * lr * ng * ng * n1 * n2
    # The reference itself rounds on the scale of W_2 W_1 (a difference of two products).
    assert np.max(np.abs(step - reference.numpy())) <= 1e-12 * terms + 1e-14 * n1 * n2 + 1e-300
    if remainder_error is None and len(moving) == 2:
        assert_close(remainder, torch.as_tensor(lr * lr * G @ weights[0].T @ weights[1].T @ G), rtol=1e-10)


# --------------------------------------------------------------------------------------------------
# Fractional powers and the balanced closed form


@PROPERTY
@given(d=st.integers(1, 4), rank=st.integers(0, 4), p=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, -0.5, -1.0, 3.0]),
       scale=st.sampled_from([1.0, 1.0, 1e-3, 1e150, 1e300]), seed=st.integers(0, 2**32 - 1))
def test_fractional_power_of_psd_matrices(d, rank, p, scale, seed, assert_names):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((d, min(rank, d)))
    # Built from an orthonormal frame so that the eigenvalues are known exactly: A = Q diag(λ) Qᵀ.
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.zeros(d)
    lam[: B.shape[1]] = scale * rng.uniform(0.5, 2.0, B.shape[1])
    A = (Q * lam) @ Q.T
    if not np.all(np.isfinite(A)):
        return
    result, error = call(pc.fractional_power, A, p)
    # λ^p on the non-zero eigenvalues, 0 on the null space, and [A]⁰ = I.
    with np.errstate(all="ignore"):
        powered = np.ones(d) if p == 0 else np.where(lam > 0, np.power(np.where(lam > 0, lam, 1.0), p), 0.0)
        reference = (Q * powered) @ Q.T
    if error is not None:
        assert_names(error, {"p"})
        assert not (np.all(np.isfinite(powered)) and np.all(np.isfinite(reference)))
        return
    assert np.all(np.isfinite(powered))
    assert np.max(np.abs(result - reference)) <= 1e-8 * max(float(np.max(np.abs(powered))), 1e-300)


@PROPERTY
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 3)), hidden=st.lists(st.integers(1, 4), max_size=3),
       scale=st.sampled_from([1.0, 1.0, 1e-2, 1e100, 1e200]), seed=st.integers(0, 2**32 - 1),
       rng_arg=st.sampled_from([None, 0, 7, -1, "seed"]))
def test_balanced_weights_multiply_to_W_e_and_match_the_per_layer_preconditioner(shape, hidden, scale, seed, rng_arg,
                                                                                 assert_names):
    W_e = scale * np.random.default_rng(seed).standard_normal(shape)
    weights, error = call(pc.balanced_weights, W_e, hidden, rng=rng_arg)
    rank = np.linalg.matrix_rank(W_e)
    if error is not None:
        wrong = {"hidden_widths"} if hidden and min(hidden) < rank else set()
        if hidden and rng_arg in (-1, "seed"):
            wrong.add("rng")
        if hidden and scale > 1e150:
            wrong.add("W_e")  # σ² overflows float64
        assert wrong, f"valid input refused: {error}"
        assert_names(error, wrong)
        return
    assert not (hidden and (min(hidden) < rank or rng_arg in (-1, "seed") or scale > 1e150))
    product = weights[0]
    for W in weights[1:]:
        product = W @ product
    assert_close(product, W_e, rtol=1e-10)
    if not hidden:
        return
    eigenvalues, eig_error = call(pc.balanced_preconditioner_eigenvalues, W_e, len(hidden) + 1)
    assert eig_error is None
    reference = np.linalg.eigvalsh(sim.implicit_preconditioner(torch_list(weights)).numpy())
    assert_close(eigenvalues, reference, rtol=1e-9)


# --------------------------------------------------------------------------------------------------
# Gaussian task families: the population objective in exact rational arithmetic


def exact_population_loss(W, M, task_var, Sigma, noise, lr, steps) -> Fraction:
    """½·[tr(B S) + d_out σ²], B = (I − αΣ)^k Σ (I − αΣ)^k, S = (W − M)ᵀ(W − M) + d_out·c·I, in Fractions."""
    F = lambda a: [[Fraction(float(x)) for x in row] for row in np.atleast_2d(a)]  # noqa: E731
    matmul = lambda a, b: [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))]  # noqa: E731
                           for i in range(len(a))]
    d_out, d_in = W.shape
    S_, a = F(Sigma), Fraction(float(lr))
    step = [[(1 if i == j else 0) - a * S_[i][j] for j in range(d_in)] for i in range(d_in)]
    power = [[Fraction(int(i == j)) for j in range(d_in)] for i in range(d_in)]
    for _ in range(steps):
        power = matmul(power, step)
    B = matmul(matmul(power, S_), [list(r) for r in zip(*power)])
    D = [[x - y for x, y in zip(rw, rm)] for rw, rm in zip(F(W), F(M))]
    S = matmul([list(r) for r in zip(*D)], D)
    for i in range(d_in):
        S[i][i] += d_out * Fraction(float(task_var))
    trace = sum(B[i][j] * S[j][i] for i in range(d_in) for j in range(d_in))
    return (trace + d_out * Fraction(float(noise)) ** 2) / 2


@PROPERTY
@given(d_in=st.integers(1, 2), d_out=st.integers(1, 2), lr=rate, steps=steps_strategy,
       w_scale=st.sampled_from([1.0, 1.0, 1e100, 1e200]), seed=st.integers(0, 2**32 - 1))
def test_expected_population_loss_is_exact_or_names_the_argument(d_in, d_out, lr, steps, w_scale, seed, assert_names):
    rng = np.random.default_rng(seed)
    root = rng.standard_normal((d_in, d_in))
    Sigma = root @ root.T + 0.1 * np.eye(d_in)
    family = RegressionFamily(d_in=d_in, d_out=d_out, task_mean=rng.standard_normal((d_out, d_in)), task_cov=0.3,
                              x_cov=Sigma, noise_std=0.2, n_support=4)
    W = w_scale * rng.standard_normal((d_out, d_in))
    value, error = call(gaussian.expected_post_adaptation_loss, W, family, lr, steps, population=True)
    fixed, fixed_error = call(gaussian.maml_fixed_point, family, lr, steps, population=True)
    # Negative rates are valid here (Bernacchia's regime): only a non-finite rate is wrong.
    wrong = ({"steps"} if steps < 0 else set()) | ({"lr"} if not math.isfinite(lr) else set())
    if wrong:
        assert_names(error, wrong)
        assert_names(fixed_error, wrong)
        return
    exact = exact_population_loss(W, family.task_mean, 0.3, family.x_cov, 0.2, lr, steps)
    if error is not None:
        assert_names(error, {"lr", "weights"})
        assert exact > HUGE
    elif exact > Fraction(1.7e308):
        pytest.fail(f"an overflowing loss came back as {value}")
    else:
        assert value == pytest.approx(float(exact), rel=1e-9)
    if fixed_error is not None:
        assert_names(fixed_error, {"lr", "family"})
        assert lr != 0 and steps > 0
    else:
        assert np.all(np.isfinite(fixed))


# --------------------------------------------------------------------------------------------------
# The scalar chain


def exact_single_task_loss(ws, a, lr, steps, v) -> Fraction:
    """½v(p_k − a)² after k inner steps on one task, in exact rational arithmetic."""
    ws = [Fraction(float(w)) for w in ws]
    a, lr, v = Fraction(float(a)), Fraction(float(lr)), Fraction(float(v))
    for _ in range(steps):
        p = math.prod(ws)
        ws = [w - lr * v * (p - a) * math.prod(ws[:j] + ws[j + 1:]) for j, w in enumerate(ws)]
        if max(abs(w) for w in ws) > Fraction(10) ** 400:  # far beyond float64: the loss is too
            return Fraction(10) ** 800
    return v * (math.prod(ws) - a) ** 2 / 2


def torch_scalar_loss_and_grad(ws, lr, steps, mean, std, v):
    """The objective by a plain torch loop over Gauss–Hermite nodes (numpy's rule) and its autograd gradient."""
    nodes = scalar.quadrature_nodes(len(ws), steps) if std > 0 else 1
    z, w = np.polynomial.hermite_e.hermegauss(nodes) if std > 0 else (np.zeros(1), np.ones(1))
    a = torch.as_tensor(mean + std * z)
    pi = torch.as_tensor(w / w.sum())
    leaves = [torch.tensor(float(x), dtype=torch.float64, requires_grad=True) for x in ws]
    current = [x.expand(a.shape) for x in leaves]
    for _ in range(steps):
        p = torch.stack(current).prod(dim=0)
        current = [x - lr * v * (p - a) * torch.stack(current[:j] + current[j + 1:]).prod(dim=0) if len(current) > 1
                   else x - lr * v * (p - a) for j, x in enumerate(current)]
    loss = (0.5 * v * (torch.stack(current).prod(dim=0) - a) ** 2 * pi).sum()
    grads = torch.autograd.grad(loss, leaves)
    return float(loss.detach()), [float(g) for g in grads]


@PROPERTY
@given(depth=st.integers(1, 3), lr=rate, steps=steps_strategy, mean=st.floats(-2, 2),
       std=st.sampled_from([0.0, 0.0, 0.3, 1.0, -1.0, math.nan]), v=st.sampled_from([1.0, 0.5, 0.0, 2.0, -1.0]),
       ws=st.lists(st.sampled_from([0.0, 0.5, -0.9, 1.3, 2.0, 1e3, 1e100]), min_size=3, max_size=3))
def test_scalar_objective_is_never_nan_and_agrees_with_exact_and_autograd(depth, lr, steps, mean, std, v, ws,
                                                                          assert_names):
    ws = ws[:depth]
    loss, error = call(scalar.scalar_maml_loss, ws, lr, steps, mean, std, v)
    grads, grad_error = call(scalar.scalar_maml_grad, ws, lr, steps, mean, std, v)
    wrong = number_problems(lr, steps)
    if not math.isfinite(std) or std < 0:
        wrong.add("std")
    if v < 0:
        wrong.add("x_var")
    if wrong:
        assert_names(error, wrong)
        assert_names(grad_error, wrong)
        return
    assert error is None, error
    assert not math.isnan(loss)
    if std == 0:
        exact = exact_single_task_loss(ws, mean, lr, steps, v)
        if exact > Fraction(np.finfo(float).max):
            assert loss == math.inf
        elif loss != math.inf:
            # p_k − a may cancel: compare on the scale of the terms of the difference.
            assert abs(Fraction(loss) - exact) <= Fraction(1e-9) * (exact + 1) or exact > HUGE
    if grad_error is not None:
        assert_names(grad_error, {"lr", "ws"})
        assert loss > HUGE
        return
    assert all(math.isfinite(g) for g in grads)
    ref_loss, ref_grads = torch_scalar_loss_and_grad(ws, lr, steps if lr * v != 0 else 0, mean, std, v)
    if math.isfinite(ref_loss) and ref_loss < HUGE and all(math.isfinite(g) and abs(g) < HUGE for g in ref_grads):
        assert loss == pytest.approx(ref_loss, rel=1e-8, abs=1e-12)
        scale_ = max(1.0, *(abs(g) for g in ref_grads))
        for ours, theirs in zip(grads, ref_grads):
            assert abs(ours - theirs) <= 1e-7 * scale_


@settings(max_examples=40, deadline=None, derandomize=True)
@given(depth=st.one_of(st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.integers(-1, 8)), steps=st.integers(-1, 80), grid=st.integers(-1, 12), half=st.sampled_from(
    [1.0, 0.0, -1.0, 1e308, math.inf]))
def test_surface_grid_is_finite_or_inf_or_names_the_argument(depth, steps, grid, half, assert_names):
    result, error = call(scalar.surface_grid, depth, 0.1, steps, 0.5, 0.5, 1.0, grid, half)
    wrong = set()
    if depth not in (1, 2):
        wrong.add("depth")
    if steps < 0:
        wrong.add("steps")
    if grid < 2:
        wrong.add("grid")
    if not (math.isfinite(half) and half > 0):
        wrong.add("range")
    # Too many quadrature nodes (module constant): log of L(2L − 1)^(k−1)
    if depth in (1, 2) and steps > 0 and math.log(depth) + (steps - 1) * math.log(2 * depth - 1) > math.log(
            scalar.MAX_NODES - 1):
        wrong.add("steps")
    if wrong:
        assert error is not None, "invalid input was accepted"
        assert_names(error, wrong)
        return
    assert error is None, error
    assert not np.any(np.isnan(result["loss"]))
    axis = result["w"] if depth == 1 else result["w1"]
    assert np.all(np.isfinite(axis)) and axis[0] == -half and axis[-1] == half


# --------------------------------------------------------------------------------------------------
# Symbolic derivations: the bounds are errors naming the argument


@settings(max_examples=30, deadline=None, derandomize=True)
@given(depth=st.one_of(st.integers(-1, 8), st.sampled_from([1.5, "2", None, True])),
       steps=st.one_of(st.integers(-1, 7), st.sampled_from([2.0, "1", None])))
def test_symbolic_bounds_name_the_argument(depth, steps, assert_names):
    from linmaml.closedform import symbolic

    valid_depth = isinstance(depth, int) and not isinstance(depth, bool) and 1 <= depth <= symbolic.MAX_DEPTH
    valid_steps = isinstance(steps, int) and 0 <= steps <= symbolic.MAX_STEPS
    if valid_depth and valid_steps:
        if depth <= 2 and steps <= 1:  # cheap enough to derive here; the other sizes are tested elsewhere
            objective, error = call(symbolic.scalar_objective, depth, steps)
            assert error is None
            value = objective.lambdify()(*([0.7] * depth), 0.1, 0.3, 0.4, 1.2)
            assert value == pytest.approx(scalar.scalar_maml_loss([0.7] * depth, 0.1, steps, 0.3, 0.4, 1.2), rel=1e-12)
        return
    _, error = call(symbolic.scalar_objective, depth, steps)
    wrong = ({"depth"} if not valid_depth else set()) | ({"steps"} if not valid_steps else set())
    assert_names(error, wrong)
