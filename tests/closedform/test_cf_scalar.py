"""linmaml.closedform.scalar against independent computations: the depth-1 closed form, adaptive
numerical integration of a plain inner loop, torch autograd through that loop, finite differences,
and the degree of the symbolic integrand."""
import warnings

import numpy as np
import pytest
import sympy as sp
import torch
from scipy import integrate

from linmaml.closedform.scalar import (
    quadrature_nodes,
    scalar_maml_grad,
    scalar_maml_loss,
    surface_grid,
    symmetric_grid,
)


def direct_task_loss(ws, a, lr, steps, v):
    """½v(p_k − a)² by a plain loop (numpy or torch, elementwise over a)."""
    ws = list(ws)
    for _ in range(steps):
        p = ws[0]
        for w in ws[1:]:
            p = p * w
        grads = []
        for j in range(len(ws)):
            others = 1.0
            for i, w in enumerate(ws):
                if i != j:
                    others = others * w
            grads.append(v * (p - a) * others)
        ws = [w - lr * g for w, g in zip(ws, grads)]
    p = ws[0]
    for w in ws[1:]:
        p = p * w
    return 0.5 * v * (p - a) ** 2


def quad_reference(ws, lr, steps, m, s, v):
    def integrand(z):
        return direct_task_loss([float(w) for w in ws], m + s * z, lr, steps, v) * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)

    return integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-13, limit=400, points=[0.0])[0]


# --------------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("steps", [0, 1, 2, 5])
def test_depth1_matches_closed_form(steps):
    # w_k − a = (1 − αV)^k (w − a), so J = ½V(1 − αV)^{2k}((w − m)² + s²) and ∂J/∂w = V(1 − αV)^{2k}(w − m).
    w = np.linspace(-3, 3, 13)
    lr, m, s, v = 0.15, 0.7, 0.4, 1.3
    factor = (1 - lr * v) ** (2 * steps)
    np.testing.assert_allclose(scalar_maml_loss([w], lr, steps, m, s, v), 0.5 * v * factor * ((w - m) ** 2 + s**2),
                               rtol=1e-13)
    np.testing.assert_allclose(scalar_maml_grad([w], lr, steps, m, s, v)[0], v * factor * (w - m), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("depth,steps", [(2, 1), (2, 3), (3, 2), (4, 1), (4, 2), (5, 1)])
def test_loss_matches_adaptive_integration(depth, steps):
    rng = np.random.default_rng(depth * 10 + steps)
    ws = list(rng.uniform(0.4, 1.1, size=depth) * rng.choice([-1, 1], size=depth))
    lr, m, s, v = 0.12, 0.6, 0.5, 1.1
    assert scalar_maml_loss(ws, lr, steps, m, s, v) == pytest.approx(quad_reference(ws, lr, steps, m, s, v), rel=1e-11)


def test_zero_spread_is_the_single_task_loss():
    ws, lr, m, v = [0.8, -1.1, 0.5], 0.2, 1.3, 0.9
    expected = direct_task_loss(ws, m, lr, 3, v)
    assert scalar_maml_loss(ws, lr, 3, m, 0.0, v) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("lr,x_var,steps", [(0.0, 1.0, 3), (0.3, 0.0, 2), (0.3, 1.2, 0)])
def test_no_adaptation_is_the_average_loss(lr, x_var, steps):
    w1, w2 = np.meshgrid(np.linspace(-2, 2, 5), np.linspace(-1, 1, 4), indexing="ij")
    m, s = 0.4, 0.7
    expected = 0.5 * x_var * ((w1 * w2 - m) ** 2 + s**2)
    np.testing.assert_allclose(scalar_maml_loss([w1, w2], lr, steps, m, s, x_var), expected, rtol=1e-14, atol=0)


def test_broadcasting_and_scalar_output():
    col, row = np.linspace(-1, 1, 3)[:, None], np.linspace(-2, 2, 4)[None, :]
    grid = scalar_maml_loss([col, row], 0.2, 2, 0.5, 0.3, 1.0)
    assert grid.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            point = scalar_maml_loss([col[i, 0], row[0, j]], 0.2, 2, 0.5, 0.3, 1.0)
            assert isinstance(point, float)
            assert point == pytest.approx(grid[i, j], rel=1e-14)
    grads = scalar_maml_grad([col, row], 0.2, 2, 0.5, 0.3, 1.0)
    assert [g.shape for g in grads] == [(3, 4), (3, 4)]
    assert all(isinstance(g, float) for g in scalar_maml_grad([0.3, 0.4], 0.2, 2, 0.5, 0.3, 1.0))


def test_large_arrays_agree_with_pointwise_evaluation():
    # Many chunks and (where cores allow) several threads: each point as if evaluated alone.
    rng = np.random.default_rng(3)
    w1, w2 = rng.uniform(-1.5, 1.5, size=(2, 20000))
    values = scalar_maml_loss([w1, w2], 0.25, 4, 0.8, 0.6, 1.0)
    for k in rng.choice(w1.size, size=25, replace=False):
        assert values[k] == pytest.approx(scalar_maml_loss([w1[k], w2[k]], 0.25, 4, 0.8, 0.6, 1.0), rel=1e-14)


# --------------------------------------------------------------------------------------------------
# Node count


@pytest.mark.parametrize("depth,steps", [(1, 0), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2)])
def test_node_count_is_half_the_integrand_degree_plus_one(depth, steps):
    # Independent: the degree in a of the integrand (p_k − a)² by sympy, at generic rational weights.
    a = sp.Symbol("a")
    ws = [sp.Rational(p, q) for p, q in zip((3, -5, 7, 2), (4, 6, 5, 3))][:depth]
    lr, v = sp.Rational(1, 7), sp.Rational(3, 2)
    loss = direct_task_loss(ws, a, lr, steps, v)
    degree = sp.Poly(sp.expand(loss), a).degree()
    assert quadrature_nodes(depth, steps) == degree // 2 + 1


def test_one_node_fewer_is_not_exact():
    # The minimal rule is needed: with n − 1 nodes the depth-2, 2-step objective comes out wrong.
    ws, lr, m, s, v = [0.9, 1.2], 0.3, 0.5, 0.9, 1.0
    n = quadrature_nodes(2, 2)
    z, w = np.polynomial.hermite_e.hermegauss(n - 1)
    short = np.dot(w / w.sum(), direct_task_loss(ws, m + s * z, lr, 2, v))
    exact = quad_reference(ws, lr, 2, m, s, v)
    assert scalar_maml_loss(ws, lr, 2, m, s, v) == pytest.approx(exact, rel=1e-12)
    assert abs(short - exact) > 1e-6 * exact


# --------------------------------------------------------------------------------------------------
# Gradient


@pytest.mark.parametrize("depth,steps", [(1, 2), (2, 0), (2, 1), (2, 4), (3, 3), (5, 2)])
def test_gradient_matches_torch_autograd(depth, steps):
    # Torch differentiates a plain loop over a wider Gauss rule (2n + 5 nodes): no shared code.
    rng = np.random.default_rng(depth + 7 * steps)
    points = rng.uniform(-1.2, 1.2, size=(depth, 6))
    lr, m, s, v = 0.1, 0.4, 0.5, 1.2
    z, w = np.polynomial.hermite_e.hermegauss(2 * quadrature_nodes(depth, steps) + 5)
    a = torch.tensor(m + s * z, dtype=torch.float64)
    pi = torch.tensor(w / w.sum(), dtype=torch.float64)
    ws = [torch.tensor(row, dtype=torch.float64, requires_grad=True) for row in points]
    per_node = direct_task_loss([x[:, None] for x in ws], a[None, :], lr, steps, v)
    total = (per_node * pi).sum(dim=1)
    total.sum().backward()
    np.testing.assert_allclose(scalar_maml_loss(list(points), lr, steps, m, s, v), total.detach().numpy(), rtol=1e-12)
    ours = scalar_maml_grad(list(points), lr, steps, m, s, v)
    for g_ours, x in zip(ours, ws):
        np.testing.assert_allclose(g_ours, x.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_gradient_matches_finite_differences_with_zero_weights():
    # Zero weights exercise the prefix/suffix products (no division by a weight).
    ws, lr, m, s, v, h = [0.0, 0.7, -0.4], 0.2, 0.9, 0.4, 1.0, 1e-6
    grad = scalar_maml_grad(ws, lr, 3, m, s, v)
    for j in range(3):
        up = [w + (h if i == j else 0.0) for i, w in enumerate(ws)]
        down = [w - (h if i == j else 0.0) for i, w in enumerate(ws)]
        fd = (scalar_maml_loss(up, lr, 3, m, s, v) - scalar_maml_loss(down, lr, 3, m, s, v)) / (2 * h)
        assert grad[j] == pytest.approx(fd, rel=1e-7, abs=1e-9)


# --------------------------------------------------------------------------------------------------
# Surfaces


def test_surface_grid_depth2_equals_pointwise_objective():
    out = surface_grid(2, 0.3, 3, 1.0, 0.5, 1.0, 41, 2.0)
    assert set(out) == {"w1", "w2", "loss"}
    axis = out["w1"]
    np.testing.assert_array_equal(axis, -axis[::-1])
    np.testing.assert_allclose(axis, np.linspace(-2, 2, 41), rtol=0, atol=1e-15)
    w1, w2 = np.meshgrid(out["w1"], out["w2"], indexing="ij")
    reference = np.vectorize(lambda x, y: quad_reference([x, y], 0.3, 3, 1.0, 0.5, 1.0))(w1[::8, ::8], w2[::8, ::8])
    np.testing.assert_allclose(out["loss"][::8, ::8], reference, rtol=1e-10)
    np.testing.assert_allclose(out["loss"], scalar_maml_loss([w1, w2], 0.3, 3, 1.0, 0.5, 1.0), rtol=1e-15)


@pytest.mark.parametrize("n", [2, 3, 10, 11])
def test_surface_grid_mirrors_every_point(n):
    # Odd and even sizes: the quarter-grid bookkeeping covers every grid point.
    out = surface_grid(2, 0.2, 2, 0.3, 0.4, 1.0, n, 1.5)
    w1, w2 = np.meshgrid(out["w1"], out["w2"], indexing="ij")
    np.testing.assert_allclose(out["loss"], scalar_maml_loss([w1, w2], 0.2, 2, 0.3, 0.4, 1.0), rtol=1e-15)


def test_surface_grid_depth1_is_the_closed_form():
    out = surface_grid(1, 0.2, 2, 0.5, 0.3, 2.0, 9, 3.0)
    assert set(out) == {"w", "loss"}
    factor = (1 - 0.2 * 2.0) ** 4
    np.testing.assert_allclose(out["loss"], 0.5 * 2.0 * factor * ((out["w"] - 0.5) ** 2 + 0.09), rtol=1e-13)


def test_symmetric_grid_endpoints():
    g = symmetric_grid(5, 2.0)
    assert g[0] == -2.0 and g[-1] == 2.0 and g[2] == 0.0


def test_overflow_is_inf_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = surface_grid(2, 0.3, 2, 1.0, 0.5, 1.0, 64, 1e10)
    assert np.isinf(out["loss"]).any() and np.isfinite(out["loss"]).any()


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kwargs,name", [
    (dict(ws=[]), "ws"),
    (dict(ws=[np.nan, 1.0]), "ws[0]"),
    (dict(ws=[np.ones(3), np.ones(4)]), "ws"),
    (dict(lr=-0.1), "lr"),
    (dict(lr=np.inf), "lr"),
    (dict(steps=-1), "steps"),
    (dict(std=-1.0), "std"),
    (dict(x_var=-1.0), "x_var"),
    (dict(mean=np.nan), "mean"),
])
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(ws=[1.0, 1.0], lr=0.1, steps=1, mean=0.0, std=1.0, x_var=1.0)
    args.update(kwargs)
    for function in (scalar_maml_loss, scalar_maml_grad):
        with pytest.raises(ValueError, match=f"^{name.replace('[', '.').replace(']', '.')}"):
            function(**args)


def test_bad_types():
    with pytest.raises(TypeError, match="^ws"):
        scalar_maml_loss(1.0, 0.1, 1, 0.0, 1.0, 1.0)
    with pytest.raises(TypeError, match="^steps"):
        scalar_maml_loss([1.0], 0.1, 1.5, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("kwargs,name", [(dict(depth=3), "depth"), (dict(grid=1), "grid"), (dict(range=0.0), "range")])
def test_surface_bad_input(kwargs, name):
    args = dict(depth=2, lr=0.1, steps=1, mean=0.0, std=1.0, x_var=1.0, grid=5, range=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        surface_grid(**args)


@pytest.mark.parametrize("lr", [1e-17, 1e-14, 0.3])
def test_tiny_and_ordinary_rates_agree_with_the_direct_loop(lr):
    # α·V below ~1e-15 (depth 2) skips the internal rescaling of the inner loop; both paths are exact.
    ws, m, v = [0.9, -1.3], 0.7, 1.0
    expected = direct_task_loss(ws, m, lr, 4, v)
    assert scalar_maml_loss(ws, lr, 4, m, 0.0, v) == pytest.approx(expected, rel=1e-14)
    h = 1e-6
    fd = (direct_task_loss([ws[0] + h, ws[1]], m, lr, 4, v) - direct_task_loss([ws[0] - h, ws[1]], m, lr, 4, v)) / (2 * h)
    assert scalar_maml_grad(ws, lr, 4, m, 0.0, v)[0] == pytest.approx(fd, rel=1e-7)
