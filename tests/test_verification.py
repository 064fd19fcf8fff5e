"""The verification table's second runner: every registered row must hold (seed 0 and 1), state what
it checks, and say which relative error it means; the new hand-written references must catch a wrong
transform (a row that cannot fail checks nothing)."""
import importlib
import json

import numpy as np
import pytest

from linmaml import meta
from linmaml.checks import _common
from linmaml.cli import main
from linmaml.verification import SMOKE_PREFIX, all_identities, format_table, run_all

IDENTITIES = all_identities()


@pytest.mark.parametrize("ident", IDENTITIES, ids=[i.name for i in IDENTITIES])
@pytest.mark.parametrize("seed", [0, 1])
def test_identity_holds(ident, seed):
    row = ident.run(seed)
    assert row["instances"] > 0
    assert row["passed"], f"{ident.name}: max error {row['max_rel_error']:.3e} > tolerance {ident.tolerance:.1e}"


def _resolve(qualified: str):
    """The object a dotted name ``linmaml.a.b.C.f`` names: the longest importable module, then attributes."""
    parts = qualified.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(qualified)


@pytest.mark.parametrize("ident", IDENTITIES, ids=[i.name for i in IDENTITIES])
def test_every_row_names_the_functions_it_checks(ident):
    assert ident.checks, f"{ident.name}: its docstring names no linmaml.… function it checks"
    for name in ident.checks:
        assert callable(_resolve(name)), f"{ident.name}: {name} is not a function or class"


def test_smoke_rows_are_labelled_in_the_table_and_the_json():
    kinds = {i.name: i.kind for i in IDENTITIES}
    assert {k for n, k in kinds.items() if n.startswith(SMOKE_PREFIX)} == {"smoke"}
    assert {k for n, k in kinds.items() if not n.startswith(SMOKE_PREFIX)} == {"identity"}
    assert "smoke: meta KFO, Meta-SGD, Meta-Curvature at initialisation = MAML" in kinds  # true by construction
    report = run_all(only="at initialisation")
    line = next(x for x in format_table(report).splitlines() if x.startswith(SMOKE_PREFIX))
    assert line.split()[-5] == "smoke"
    assert report["identities"][0]["kind"] == "smoke"


def test_verify_prints_the_relative_error_definition(capsys):
    assert main(["verify", "--only", "k-step adapt = direct"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(_common.RELATIVE_ERROR)
    assert "‖a − b‖_F / ‖b‖_F" in out[0]
    assert main(["verify", "--json", "--only", "k-step adapt = direct"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["relative_error"] == _common.RELATIVE_ERROR
    (row,) = report["identities"]
    assert row["checks"] == ["linmaml.closedform.deep_linear.adapt"] and row["kind"] == "identity"


def test_relative_error_is_frobenius_against_the_reference_side():
    a, b = [np.array([3.0, 0.0]), np.array([[0.0]])], [np.array([0.0, 0.0]), np.array([[4.0]])]
    assert _common.relative_error(a, b) == pytest.approx(5.0 / 4.0)   # ‖(3, 0, −4)‖ / ‖(0, 0, 4)‖
    assert _common.relative_error(b, a) == pytest.approx(5.0 / 3.0)   # not symmetric: b is the reference
    assert _common.relative_error(np.ones(2), np.zeros(2)) == pytest.approx(np.sqrt(2.0))  # absolute at b = 0


# --------------------------------------------------------------------------------------------------
# The hand-written references must see a wrong transform, a wrong node count, a wrong LinNet step


def _gram_free_kron(self, z, L, R):  # KFO's map without the Gram matrices: L z R instead of (LᵀL) z (RᵀR)
    return L @ z @ R


def test_anil_and_kfo_rows_catch_a_wrong_kfo(monkeypatch):
    from linmaml.checks import meta as rows

    monkeypatch.setattr(meta.KFO, "_kron", _gram_free_kron)
    assert rows.anil_vs_hand_loop(np.random.default_rng(0), 2, "squared") > 1e-3
    assert rows.transform_vs_hand_loop(np.random.default_rng(0), "kfo", 1, conv=True) > 1e-3


def test_metacurvature_row_catches_a_transposed_factor(monkeypatch):
    import torch

    from linmaml.checks import meta as rows

    def transposed(self, g, m):  # M_in applied untransposed on the conv weight; m: one parameter's matrices
        if g.ndim < 3:
            return m["out"] @ g if g.ndim == 1 else m["out"] @ g @ m["in"]
        u = torch.einsum("oa,abc,ib,cf->oif", m["out"], g.reshape(g.shape[0], g.shape[1], -1), m["in"], m["kernel"])
        return u.reshape(g.shape)

    monkeypatch.setattr(meta.MetaCurvature, "_map", transposed)
    assert rows.transform_vs_hand_loop(np.random.default_rng(1), "metacurvature", 1, conv=True) > 1e-3


def test_node_count_row_fails_when_the_count_is_not_minimal(monkeypatch):
    from linmaml.checks import symbolic as rows
    from linmaml.closedform import scalar

    exact = scalar.quadrature_nodes
    monkeypatch.setattr(scalar, "quadrature_nodes", lambda depth, steps: exact(depth, steps) + 1)
    assert rows._node_count_minimal(np.random.default_rng(0)).max_rel_error == np.inf


def test_linnet_row_catches_a_wrong_extra_factor(monkeypatch):
    from linmaml.checks import meta as rows

    # LinNet built with a doubled second map: P = 2I, no longer the base model at initialisation.
    original = meta.LinNet.__init__

    def doubled(self, *args, **kwargs):
        original(self, *args, **kwargs)
        with __import__("torch").no_grad():
            self.linear[1].weight.mul_(2.0)

    monkeypatch.setattr(meta.LinNet, "__init__", doubled)
    assert rows.linnet_vs_extra_factor(np.random.default_rng(2), "squared") > 1e-3


def test_finite_n_deep_rows_catch_a_wishart_moment_without_its_1_over_n_terms(monkeypatch):
    from linmaml.checks import gaussian as rows
    from linmaml.closedform import gaussian_deep_finite

    exact = gaussian_deep_finite.wishart_moment_tensor
    monkeypatch.setattr(gaussian_deep_finite, "wishart_moment_tensor", lambda Sigma, n, k: exact(Sigma, 10 ** 12, k))
    assert rows._deep_finite_quadrature(np.random.default_rng(0)).max_rel_error > 1e-3
    assert rows._deep_finite_monte_carlo(np.random.default_rng(0)).max_rel_error > 3


def test_read_off_preconditioner_row_catches_a_swapped_kronecker_order(monkeypatch):
    from linmaml.checks import symbolic as rows

    module = importlib.import_module("linmaml.closedform.preconditioner")  # the package re-exports the function

    def swapped(weights, layer=None, adapt_layers=None):  # (A Aᵀ) ⊗ (BᵀB): row-major vec instead of column-major
        above, below = module._outer_factors(module.check_weights(weights))
        return sum(np.kron(above[j] @ above[j].T, below[j].T @ below[j])
                   for j in (range(len(weights)) if adapt_layers is None else adapt_layers))

    monkeypatch.setattr(module, "preconditioner", swapped)
    assert rows._kronecker_vs_preconditioner(np.random.default_rng(0)).max_rel_error > 1e-3


def test_matrix_map_bfgs_row_catches_the_population_map_at_finite_n(monkeypatch):
    from linmaml.checks import gaussian as rows
    from linmaml.closedform import gaussian_lr

    exact = gaussian_lr.optimal_one_step_map
    monkeypatch.setattr(gaussian_lr, "optimal_one_step_map", lambda family: exact(family, population=True))
    assert rows._matrix_map_optimiser(np.random.default_rng(0)).max_rel_error > 1e-3


def test_worst_of_keeps_a_nan_that_max_would_drop():
    assert max(0.0, float("nan")) == 0.0                     # why the helper exists
    assert np.isnan(_common.worst_of(0.0, float("nan")))
    assert np.isnan(_common.worst_of(float("nan"), 1e-3, 2e-3))
    assert _common.worst_of(1e-3, 2e-3, 5e-4) == 2e-3


def test_a_row_with_one_nan_instance_fails(monkeypatch):
    """A later instance's NaN error must fail the row (a running max() would have dropped it)."""
    from linmaml.checks import closedform as rows

    real, calls = rows.relative_error, []

    def nan_on_second_call(a, b):
        calls.append(1)
        return float("nan") if len(calls) == 2 else real(a, b)

    monkeypatch.setattr(rows, "relative_error", nan_on_second_call)
    (row,) = [i for i in IDENTITIES if i.name == "deep linear: k-step adapt = direct per-sample loop"]
    result = row.run(0)
    assert len(calls) > 2 and not result["passed"]


def test_a_meta_row_with_one_nan_instance_fails(monkeypatch):
    """The same for the rows that report through checks.meta.worst_case."""
    from linmaml.checks import meta as rows

    real, calls = rows.fomaml_gradient, []

    def nan_on_second_call(*args, **kwargs):
        calls.append(1)
        return float("nan") if len(calls) == 2 else real(*args, **kwargs)

    monkeypatch.setattr(rows, "fomaml_gradient", nan_on_second_call)
    (row,) = [i for i in IDENTITIES if i.name == "meta: first-order MAML meta-gradient = query gradient at the adapted weights"]
    result = row.run(0)
    assert len(calls) > 2 and not result["passed"]


def test_the_printed_table_says_its_errors_are_maxima_over_random_instances():
    from linmaml.verification import MAX_ERROR_NOTE

    report = {"identities": [{"name": "x", "kind": "identity", "instances": 3, "max_rel_error": 1.6e-16,
                              "tolerance": 1e-12, "passed": True}]}
    lines = format_table(report).splitlines()
    assert lines[-1] == MAX_ERROR_NOTE and "largest error over this seed's random instances" in lines[-1]


def test_markdown_table_escapes_pipes_and_counts_smoke_rows_apart():
    from linmaml.verification import format_markdown

    rows = [{"name": "a |x| row", "kind": "identity", "instances": 3, "max_rel_error": 1.24e-16, "tolerance": 1e-12,
             "passed": True},
            {"name": "smoke: b", "kind": "smoke", "instances": 2, "max_rel_error": 0.0, "tolerance": 1e-15,
             "passed": True},
            {"name": "c", "kind": "identity", "instances": 1, "max_rel_error": 2.0, "tolerance": 1.0, "passed": False}]
    text = format_markdown({"identities": rows, "seed": 3}, seconds=12.4)
    lines = text.splitlines()
    assert lines[2] == "| a \\|x\\| row | identity | 3 | 1.2e-16 | 1e-12 |"
    assert lines[4].endswith("**FAILS** |")
    assert "(seed 3): **1 of 2 identities hold**" in text and "**and 1 of 1 smoke checks**" in text
    assert "3 rows in 12 s" in text
