"""linmaml.closedform.preconditioner against independent computations: the Jacobian of the end-to-end
map, explicit updates, scipy's fractional_matrix_power, hand-built eigen-decompositions."""
import numpy as np
import pytest
import scipy.linalg

from linmaml.closedform import end_to_end
from linmaml.closedform.preconditioner import (
    apply_preconditioner,
    balanced_preconditioner,
    balanced_preconditioner_eigenvalues,
    balanced_weights,
    depth2_step,
    fractional_power,
    preconditioner,
    second_order_remainder,
    unvec,
    vec,
)


def make_weights(rng, widths):
    return [rng.standard_normal((widths[j + 1], widths[j])) / np.sqrt(widths[j]) for j in range(len(widths) - 1)]


def jacobian_of_end_to_end(weights, layers):
    """∂ vec W_e / ∂ vec W_j for the given layers, by central differences: exact up to rounding,
    since W_e is linear in each single layer."""
    columns = []
    for j in layers:
        for idx in np.ndindex(weights[j].shape[::-1]):  # column-major order of vec W_j
            idx = idx[::-1]
            plus = [W.copy() for W in weights]
            minus = [W.copy() for W in weights]
            plus[j][idx] += 1.0
            minus[j][idx] -= 1.0
            columns.append(vec(end_to_end(plus) - end_to_end(minus)) / 2.0)
    return np.array(columns).T


def test_vec_is_column_major_and_matches_the_kronecker_rule():
    rng = np.random.default_rng(0)
    A, G, B = rng.standard_normal((3, 2)), rng.standard_normal((2, 4)), rng.standard_normal((4, 5))
    np.testing.assert_array_equal(vec(np.array([[1, 2], [3, 4]])), [1, 3, 2, 4])
    np.testing.assert_allclose(vec(A @ G @ B), np.kron(B.T, A) @ vec(G), rtol=1e-13)
    np.testing.assert_array_equal(unvec(vec(G), G.shape), G)


@pytest.mark.parametrize("widths", [[3, 2], [3, 4, 2], [2, 3, 4, 3], [4, 2, 3, 5, 2]])
@pytest.mark.parametrize("layers", [None, [0], "last", "ends"])
def test_preconditioner_is_the_gram_matrix_of_the_jacobian(widths, layers):
    # One step on the adapted layers moves vec W_e by −α J Jᵀ vec G to first order (J = ∂vec W_e/∂θ).
    rng = np.random.default_rng(1)
    weights = make_weights(rng, widths)
    L = len(weights)
    layers = {"last": [L - 1], "ends": sorted({0, L - 1})}.get(layers, layers) if isinstance(layers, str) else layers
    chosen = list(range(L)) if layers is None else layers
    J = jacobian_of_end_to_end(weights, chosen)
    P = preconditioner(weights, adapt_layers=layers)
    np.testing.assert_allclose(P, J @ J.T, rtol=1e-12, atol=1e-12 * np.abs(P).max())
    # Each layer's own term, and the matrix-free application.
    for j in chosen:
        Jj = jacobian_of_end_to_end(weights, [j])
        np.testing.assert_allclose(preconditioner(weights, layer=j), Jj @ Jj.T, rtol=1e-12, atol=1e-12 * np.abs(P).max())
    G = rng.standard_normal((widths[-1], widths[0]))
    np.testing.assert_allclose(apply_preconditioner(weights, G, layers), unvec(P @ vec(G), G.shape), rtol=1e-12, atol=1e-13)


def test_a_single_layer_has_the_identity_preconditioner():
    W = np.random.default_rng(2).standard_normal((3, 4))
    np.testing.assert_array_equal(preconditioner([W]), np.eye(12))


def test_depth2_step_matches_the_explicit_update_and_its_remainder():
    rng = np.random.default_rng(3)
    W1, W2 = rng.standard_normal((4, 3)), rng.standard_normal((2, 4))
    G = rng.standard_normal((2, 3))
    lr = 0.37
    # Independent: update each layer with its gradient W2ᵀG, G W1ᵀ and multiply out.
    updates = {0: W1 - lr * W2.T @ G, 1: W2 - lr * G @ W1.T}
    for layers in (None, [0], [1], [0, 1]):
        chosen = [0, 1] if layers is None else layers
        new1 = updates[0] if 0 in chosen else W1
        new2 = updates[1] if 1 in chosen else W2
        expected = new2 @ new1 - W2 @ W1
        np.testing.assert_allclose(depth2_step([W1, W2], G, lr, layers), expected, rtol=1e-13, atol=1e-14)
        first = -lr * apply_preconditioner([W1, W2], G, layers)
        np.testing.assert_allclose(second_order_remainder([W1, W2], G, lr, layers), expected - first, rtol=1e-12, atol=1e-14)
    assert np.all(second_order_remainder([W1, W2], G, lr, [0]) == 0)


# --------------------------------------------------------------------------------------------------
# Fractional powers


def psd_with_spectrum(rng, eigenvalues):
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (Q * eigenvalues) @ Q.T, Q


@pytest.mark.parametrize("p", [0.5, 1 / 3, 0.75, 2.0, -0.5])
def test_fractional_power_matches_scipy_on_positive_definite_matrices(p):
    A, _ = psd_with_spectrum(np.random.default_rng(4), np.array([0.2, 0.9, 1.5, 3.0]))
    np.testing.assert_allclose(fractional_power(A, p), scipy.linalg.fractional_matrix_power(A, p).real, rtol=1e-11, atol=1e-13)


def test_fractional_power_of_a_rank_deficient_matrix_thresholds_its_null_space():
    rng = np.random.default_rng(5)
    spectrum = np.array([0.0, 0.0, 0.5, 2.0])
    A, Q = psd_with_spectrum(rng, spectrum)
    for p in (0.25, 0.5, 1.0, 1.5):
        expected = (Q * np.where(spectrum > 0, spectrum, 0.0) ** p) @ Q.T
        np.testing.assert_allclose(fractional_power(A, p), expected, rtol=1e-12, atol=1e-13)
    # [A]⁰ is the identity (not the projector onto the range), also for the zero matrix.
    np.testing.assert_array_equal(fractional_power(A, 0), np.eye(4))
    np.testing.assert_array_equal(fractional_power(np.zeros((3, 3)), 0.0), np.eye(3))
    np.testing.assert_array_equal(fractional_power(np.zeros((3, 3)), 0.5), np.zeros((3, 3)))
    # Negative powers: the pseudo-inverse on the range.
    np.testing.assert_allclose(fractional_power(A, -1), np.linalg.pinv(A, rcond=1e-10), rtol=1e-10, atol=1e-12)
    # Semigroup on the range: [A]^p [A]^q = [A]^{p+q} for p, q > 0.
    np.testing.assert_allclose(fractional_power(A, 0.3) @ fractional_power(A, 0.45), fractional_power(A, 0.75), atol=1e-13)


def test_without_thresholding_rounding_noise_becomes_a_visible_error():
    # The pitfall the threshold exists for: eigenvalues of order 1e-17 raised to 1/4 become 1e-4.
    rng = np.random.default_rng(6)
    W = rng.standard_normal((5, 2)) @ rng.standard_normal((2, 5))  # rank 2, Gram eigenvalues ~eps at null
    A = W.T @ W
    vals, vecs = np.linalg.eigh(A)
    exact = (vecs[:, -2:] * vals[-2:] ** 0.25) @ vecs[:, -2:].T
    assert np.abs(fractional_power(A, 0.25) - exact).max() < 1e-12
    noisy = np.abs(fractional_power(A, 0.25, threshold=0.0) - exact).max()
    assert noisy > 1e-6
    # An explicit threshold above the noise and below the spectrum gives the same as the default.
    np.testing.assert_allclose(fractional_power(A, 0.25, threshold=1e-8), fractional_power(A, 0.25), atol=1e-14)


@pytest.mark.parametrize(
    "name, kind, call",
    [
        ("A", ValueError, lambda: fractional_power(np.array([[1.0, 2.0], [0.0, 1.0]]), 0.5)),
        ("A", ValueError, lambda: fractional_power(np.diag([1.0, -1.0]), 0.5)),
        ("A", ValueError, lambda: fractional_power(np.ones((2, 3)), 0.5)),
        ("A", ValueError, lambda: fractional_power(np.ones(3), 0.5)),
        ("p", ValueError, lambda: fractional_power(np.eye(2), float("nan"))),
        ("p", TypeError, lambda: fractional_power(np.eye(2), "half")),
        ("threshold", ValueError, lambda: fractional_power(np.eye(2), 0.5, threshold=-1.0)),
        ("layer", ValueError, lambda: preconditioner([np.eye(2)], layer=1)),
        ("layer", ValueError, lambda: preconditioner([np.eye(2), np.eye(2)], layer=0, adapt_layers=[0])),
        ("adapt_layers", ValueError, lambda: preconditioner([np.eye(2)], adapt_layers=[-1])),
        ("weights[1]", ValueError, lambda: preconditioner([np.eye(2), np.eye(3)])),
        ("weights", ValueError, lambda: depth2_step([np.eye(2)], np.eye(2), 0.1)),
        ("G", ValueError, lambda: depth2_step([np.eye(2), np.ones((3, 2))], np.eye(2), 0.1)),
        ("G", ValueError, lambda: apply_preconditioner([np.eye(2)], np.eye(3))),
        ("lr", ValueError, lambda: depth2_step([np.eye(2), np.eye(2)], np.eye(2), -0.1)),
        ("W_e", ValueError, lambda: balanced_preconditioner(np.ones(3), 2)),
        ("depth", ValueError, lambda: balanced_preconditioner(np.eye(2), 0)),
        ("depth", TypeError, lambda: balanced_preconditioner_eigenvalues(np.eye(2), 2.5)),
        ("hidden_widths", ValueError, lambda: balanced_weights(np.eye(3), [3, 2])),
        ("hidden_widths", TypeError, lambda: balanced_weights(np.eye(3), ["a"])),
    ],
)
def test_bad_input_raises_an_error_naming_the_argument(name, kind, call):
    with pytest.raises(kind) as info:
        call()
    assert str(info.value).startswith(name), str(info.value)


# --------------------------------------------------------------------------------------------------
# The balanced closed form


@pytest.mark.parametrize("shape, rank, hidden", [((3, 4), 3, [3, 5]), ((2, 5), 1, [1, 2, 4]), ((4, 4), 2, [2]), ((3, 2), 0, [2, 2])])
def test_balanced_weights_are_balanced_and_multiply_to_the_target(shape, rank, hidden):
    rng = np.random.default_rng(7)
    target = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    for generator in (None, rng):
        weights = balanced_weights(target, hidden, rng=generator)
        assert [W.shape for W in weights] == [(d_out, d_in) for d_in, d_out in zip([shape[1]] + hidden, hidden + [shape[0]])]
        np.testing.assert_allclose(end_to_end(weights), target, atol=1e-12 * max(1.0, np.abs(target).max()))
        for lower, upper in zip(weights, weights[1:]):
            np.testing.assert_allclose(upper.T @ upper, lower @ lower.T, atol=1e-12)


def test_balanced_preconditioner_of_a_scaled_identity_is_a_scaled_identity():
    # W_e = σ I: every term is σ^{2(j−1)/L} σ^{2(L−j)/L} I, so P = L σ^{2(L−1)/L} I.
    sigma, d = 1.7, 3
    for L in (1, 2, 3, 5):
        expected = L * sigma ** (2 * (L - 1) / L) * np.eye(d * d)
        np.testing.assert_allclose(balanced_preconditioner(sigma * np.eye(d), L), expected, rtol=1e-13)
        np.testing.assert_allclose(balanced_preconditioner_eigenvalues(sigma * np.eye(d), L), np.diag(expected), rtol=1e-13)


@pytest.mark.parametrize("shape, rank, depth", [((3, 4), 3, 2), ((2, 5), 1, 3), ((4, 4), 2, 4), ((3, 3), 0, 3), ((1, 4), 1, 4)])
def test_balanced_closed_form_equals_the_per_layer_sum_and_its_spectrum(shape, rank, depth):
    rng = np.random.default_rng(8)
    target = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    weights = balanced_weights(target, [max(rank, 1) + 1] * (depth - 1), rng=rng)
    W_e = end_to_end(weights)
    per_layer = preconditioner(weights)
    scale = max(np.abs(per_layer).max(), 1.0)
    np.testing.assert_allclose(balanced_preconditioner(W_e, depth), per_layer, atol=1e-12 * scale)
    np.testing.assert_allclose(
        balanced_preconditioner_eigenvalues(W_e, depth), np.linalg.eigvalsh(per_layer), atol=1e-12 * scale
    )
