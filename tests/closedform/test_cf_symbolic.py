"""linmaml.closedform.symbolic against independent computations: hand-derived closed forms, sympy.stats
expectations of the nested inner loop, numeric evaluation of hand-written matrix formulas, and
deep_linear.adapt."""

import numpy as np
import pytest
import sympy as sp
from sympy.stats import E, Normal

from linmaml.closedform import deep_linear as dl
from linmaml.closedform import symbolic
from linmaml.closedform.scalar import scalar_maml_grad, scalar_maml_loss


def stats_objective(depth, steps):
    """E_a of the nested per-task loss with sympy.stats (a ~ Normal(m, s)): shares no moment code."""
    recursion = symbolic.scalar_recursion(depth, steps)
    sym = recursion.symbols
    s_pos = sp.Symbol("s_pos", positive=True)
    a = Normal("A", sym["m"], s_pos)
    return sp.expand(E(recursion.substitute().xreplace({sym["a"]: a}))).xreplace({s_pos: sym["s"]}), sym


@pytest.mark.parametrize("steps", [0, 1, 2, 5])
def test_depth1_objective_is_the_closed_form(steps):
    derived = symbolic.scalar_objective(1, steps)
    sym = derived.symbols
    w, alpha, m, s, v = sym["w"][0], sym["alpha"], sym["m"], sym["s"], sym["v"]
    closed = v / 2 * (1 - alpha * v) ** (2 * steps) * ((w - m) ** 2 + s**2)
    assert sp.expand(derived.objective - closed) == 0
    assert sp.expand(derived.collected() - closed) == 0


@pytest.mark.parametrize("depth,steps", [(2, 1), (3, 1), (2, 2)])
def test_objective_matches_sympy_stats_expectation(depth, steps):
    expected, _ = stats_objective(depth, steps)
    derived = symbolic.scalar_objective(depth, steps)
    assert sp.expand(derived.objective - expected) == 0


def test_gradient_is_the_derivative_and_alpha_grouping_shows_the_preconditioner():
    derived = symbolic.scalar_objective(2, 1)
    sym = derived.symbols
    for w, g in zip(sym["w"], derived.gradient):
        assert sp.expand(sp.diff(derived.objective, w) - g) == 0
    w1, w2, m, s, v = *sym["w"], sym["m"], sym["s"], sym["v"]
    # α¹ coefficient: −v²(w1² + w2²)((w1w2 − m)² + s²) — the preconditioner w1² + w2² times the loss.
    first = derived.by_alpha()[1]
    assert sp.expand(first + v**2 * (w1**2 + w2**2) * ((w1 * w2 - m) ** 2 + s**2)) == 0
    assert sp.expand(derived.collected() - derived.objective) == 0


def test_gaussian_moments_match_sympy_stats():
    m, s = sp.symbols("m s", positive=True)
    a = Normal("A", m, s)
    for p in range(8):
        assert sp.expand(symbolic.gaussian_moment(p, m, s) - E(a**p)) == 0


@pytest.mark.parametrize("depth,steps", [(2, 2), (3, 1), (1, 4)])
def test_lambdified_and_exact_values_match_scalar_py(depth, steps):
    derived = symbolic.scalar_objective(depth, steps)
    rng = np.random.default_rng(depth + steps)
    points = [rng.uniform(-1.2, 1.2, size=(3, 4)) for _ in range(depth)]
    lr, m, s, v = 0.17, 0.3, 0.6, 1.4
    np.testing.assert_allclose(derived.lambdify()(*points, lr, m, s, v), scalar_maml_loss(points, lr, steps, m, s, v),
                               rtol=1e-12)
    for ours, theirs in zip(derived.lambdify_gradient()(*points, lr, m, s, v), scalar_maml_grad(points, lr, steps, m, s, v)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-13)
    point = [float(p[0, 0]) for p in points]
    exact = derived.evaluate_exact(point, lr, m, s, v)
    assert isinstance(exact, sp.Rational)
    assert float(exact) == pytest.approx(scalar_maml_loss(point, lr, steps, m, s, v), rel=1e-14)


def test_latex_output():
    derived = symbolic.scalar_objective(2, 1)
    text = derived.latex()
    assert text.startswith("J = ") and r"\alpha" in text and "w_{1}" in text
    assert r"\frac{\partial J}{\partial w_{1}}" in derived.latex(gradient=True)
    recursion = symbolic.scalar_recursion(2, 2)
    assert r"\mathbb{E}" in recursion.latex() and "w^{(2)}_{1}" in recursion.latex()


def test_expansion_out_of_reach_is_refused():
    with pytest.raises(ValueError, match="^depth, steps"):
        symbolic.scalar_objective(2, 4)
    with pytest.raises(ValueError, match="max_work=10"):
        symbolic.scalar_objective(2, 2, max_work=10)


def test_nested_form_for_depth6_with_5_steps():
    recursion = symbolic.scalar_recursion(6, 5)
    assert len(recursion.updates) == 5 and all(len(eqs) == 6 for eqs in recursion.updates)
    assert recursion.degree_in_a == 2 * 6 * 11**4 and recursion.nodes == 6 * 11**4 + 1
    # The nested recursion is the inner loop: check one update numerically against a direct step.
    sym = recursion.symbols
    values = {w: sp.Rational(k + 2, 7) for k, w in enumerate(sym["w"])}
    values.update({sym["alpha"]: sp.Rational(1, 10), sym["v"]: sp.Rational(3, 2), sym["a"]: sp.Rational(1, 3)})
    p = sp.Mul(*[values[w] for w in sym["w"]])
    for j, eq in enumerate(recursion.updates[0]):
        others = sp.Mul(*[values[w] for i, w in enumerate(sym["w"]) if i != j])
        direct = values[sym["w"][j]] - values[sym["alpha"]] * values[sym["v"]] * (p - values[sym["a"]]) * others
        assert eq.rhs.xreplace(values) == direct


@pytest.mark.parametrize("depth,steps", [(0, 1), (7, 1), (2, 6), (2, -1)])
def test_bad_depth_or_steps(depth, steps):
    name = "depth" if depth not in range(1, 7) else "steps"
    for function in (symbolic.scalar_objective, symbolic.scalar_recursion):
        with pytest.raises(ValueError, match=f"^{name}"):
            function(depth, steps)


# --------------------------------------------------------------------------------------------------
# Matrix update


def random_network(rng, widths):
    return [rng.standard_normal((widths[j + 1], widths[j])) for j in range(len(widths) - 1)]


def test_depth2_terms_are_the_known_formula():
    rng = np.random.default_rng(0)
    W1, W2 = random_network(rng, [3, 4, 2])
    G = rng.standard_normal((2, 3))
    update = symbolic.matrix_update(2)
    assert sorted(update.orders) == [0, 1, 2]
    np.testing.assert_allclose(update.evaluate_order(1, [W1, W2], G), -(W2 @ W2.T @ G + G @ W1.T @ W1), rtol=1e-13)
    np.testing.assert_allclose(update.evaluate_order(2, [W1, W2], G), G @ W1.T @ W2.T @ G, rtol=1e-13)
    np.testing.assert_allclose(update.evaluate_order(0, [W1, W2], G), W2 @ W1, rtol=1e-13)
    assert "G*W_1.T*W_2.T*G" == sp.sstr(update.orders[2])


def test_depth3_update_equals_one_explicit_step():
    rng = np.random.default_rng(1)
    weights = random_network(rng, [3, 2, 4, 2])
    X, Y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    G = dl.end_to_end_grad(weights, X, Y)
    lr = 0.37
    expected = dl.end_to_end(dl.adapt(weights, X, Y, lr, 1)) - dl.end_to_end(weights)
    update = symbolic.matrix_update(3)
    assert sorted(update.orders) == [0, 1, 2, 3]
    np.testing.assert_allclose(update.evaluate(weights, G, lr), expected, rtol=1e-12, atol=1e-14)


def test_only_the_first_layer_adapting_is_exactly_preconditioned():
    rng = np.random.default_rng(2)
    W1, W2, W3 = random_network(rng, [3, 2, 4, 2])
    G = rng.standard_normal((2, 3))
    update = symbolic.matrix_update(3, adapt_layers=[0])
    assert sorted(update.orders) == [0, 1]
    A = W3 @ W2
    np.testing.assert_allclose(update.evaluate([W1, W2, W3], G, 0.5), -0.5 * A @ A.T @ G, rtol=1e-13)
    np.testing.assert_allclose(update.evaluate_preconditioner([W1, W2, W3]), np.kron(np.eye(3), A @ A.T), rtol=1e-13)


def test_kronecker_preconditioner_depth2_by_hand():
    rng = np.random.default_rng(3)
    W1, W2 = random_network(rng, [3, 4, 2])
    P = symbolic.matrix_update(2).evaluate_preconditioner([W1, W2])
    np.testing.assert_allclose(P, np.kron(W1.T @ W1, np.eye(2)) + np.kron(np.eye(3), W2 @ W2.T), rtol=1e-13)


def test_matrix_latex_and_bad_input():
    text = symbolic.matrix_update(2).latex()
    assert text.startswith("W_e' - W_e = ") and r"W_{2} W_{2}^{T} G" in text and r"\alpha^{2}" in text
    with pytest.raises(ValueError, match="^adapt_layers"):
        symbolic.matrix_update(2, adapt_layers=[2])
    with pytest.raises(ValueError, match="^depth"):
        symbolic.matrix_update(0)
    rng = np.random.default_rng(4)
    update = symbolic.matrix_update(2)
    with pytest.raises(ValueError, match="^weights"):
        update.evaluate(random_network(rng, [3, 4, 2])[:1], np.zeros((2, 3)), 0.1)
    with pytest.raises(ValueError, match="^G"):
        update.evaluate(random_network(rng, [3, 4, 2]), np.zeros((3, 3)), 0.1)
