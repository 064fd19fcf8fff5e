"""``linmaml surface`` and ``linmaml derive``: outputs checked against independent computations (a
plain inner loop over a wide Gauss rule, the depth-1 closed form, sympy.stats expectations, hand-written
matrix formulas), and bad input giving one line on stderr with exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
from sympy.stats import E, Normal

from linmaml.cli import main


def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def direct_objective(w1, w2, lr, steps, m, s, v, nodes=40):
    """Depth-2 population objective by a plain loop over a 40-node Gauss rule (exact up to degree 79)."""
    z, weights = np.polynomial.hermite_e.hermegauss(nodes)
    a = m + s * z
    u, x = np.full_like(a, w1), np.full_like(a, w2)
    for _ in range(steps):
        r = v * (u * x - a)
        u, x = u - lr * r * x, x - lr * r * u
    return float(np.dot(weights / weights.sum(), 0.5 * v * (u * x - a) ** 2))


# --------------------------------------------------------------------------------------------------
# surface


def test_surface_depth2_json(capsys):
    status, out, err = run_cli(capsys, "surface", "--depth", "2", "--lr", "0.25", "--steps", "3", "--task-mean", "0.8",
                               "--task-std", "0.6", "--x-var", "1.2", "--grid", "7", "--range", "1.5", "--json")
    assert status == 0 and err == ""
    data = json.loads(out)
    assert set(data) == {"w1", "w2", "loss"}
    np.testing.assert_allclose(data["w1"], np.linspace(-1.5, 1.5, 7), atol=1e-15)
    assert data["w1"] == data["w2"]
    loss = np.array(data["loss"])
    assert loss.shape == (7, 7)
    for i, w1 in enumerate(data["w1"]):
        for j, w2 in enumerate(data["w2"]):
            assert loss[i, j] == pytest.approx(direct_objective(w1, w2, 0.25, 3, 0.8, 0.6, 1.2), rel=1e-12)


def test_surface_depth1_json_is_the_closed_form(capsys):
    status, out, _ = run_cli(capsys, "surface", "--depth", "1", "--lr", "0.2", "--steps", "2", "--task-mean", "0.5",
                             "--task-std", "0.3", "--x-var", "2", "--grid", "9", "--range", "3", "--json")
    data = json.loads(out)
    assert status == 0 and set(data) == {"w", "loss"}
    w = np.array(data["w"])
    np.testing.assert_allclose(data["loss"], 0.5 * 2 * (1 - 0.4) ** 4 * ((w - 0.5) ** 2 + 0.09), rtol=1e-13)


def test_surface_summary_reports_the_minimum(capsys):
    argv = ["surface", "--lr", "0.3", "--steps", "1", "--grid", "11", "--range", "2"]
    status, out, _ = run_cli(capsys, *argv)
    assert status == 0
    data = json.loads(run_cli(capsys, *argv, "--json")[1])
    loss = np.array(data["loss"])
    i, j = np.unravel_index(np.argmin(loss), loss.shape)
    assert f"minimum {loss[i, j]:.6g} at w1 = {data['w1'][i]:.6g}, w2 = {data['w2'][j]:.6g}" in out
    assert "11×11 grid" in out


@pytest.mark.parametrize("argv,option", [
    (["--grid", "1"], "--grid"),
    (["--steps", "-1"], "--steps"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--task-std", "inf"], "--task-std"),
    (["--x-var", "-1"], "--x-var"),
    (["--range", "0"], "--range"),
    (["--depth", "3"], "--depth"),
    (["--lr", "1", "--steps", "5", "--range", "100", "--json"], "--range"),  # overflow: JSON cannot hold inf
])
def test_surface_bad_input_one_line_exit_2(capsys, argv, option):
    status, out, err = run_cli(capsys, "surface", *argv)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"linmaml surface: error: {option}")


def test_surface_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["surface", "--grid", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# derive


def test_derive_default_is_the_depth2_one_step_objective(capsys):
    status, out, err = run_cli(capsys, "derive", "--depth", "2", "--steps", "1")
    assert status == 0 and err == ""
    line = next(x for x in out.splitlines() if x.startswith("J = "))
    w1, w2, alpha, m, v = sp.symbols("w_1 w_2 alpha m v", real=True)
    s = sp.Symbol("s", nonnegative=True)
    printed = sp.sympify(line[4:], locals={"w_1": w1, "w_2": w2, "alpha": alpha, "m": m, "s": s, "v": v})
    # Independent: one explicit step and sympy.stats' expectation over a ~ N(m, s²).
    a, sp_s = sp.Symbol("a", real=True), sp.Symbol("sp_s", positive=True)
    r = v * (w1 * w2 - a)
    p1 = (w1 - alpha * r * w2) * (w2 - alpha * r * w1)
    expected = E((v / 2 * (p1 - a) ** 2).subs(a, Normal("A", m, sp_s))).subs(sp_s, s)
    assert sp.expand(printed - expected) == 0


def test_derive_gradient_and_latex(capsys):
    status, out, _ = run_cli(capsys, "derive", "--depth", "1", "--steps", "2", "--gradient")
    assert status == 0
    grad_line = next(x for x in out.splitlines() if x.startswith("dJ/dw_1 = "))
    w, alpha, m, v = sp.symbols("w_1 alpha m v", real=True)
    grad = sp.sympify(grad_line.split(" = ", 1)[1], locals={"w_1": w, "alpha": alpha, "m": m, "v": v})
    assert sp.expand(grad - v * (1 - alpha * v) ** 4 * (w - m)) == 0
    status, out, _ = run_cli(capsys, "derive", "--depth", "2", "--steps", "1", "--latex")
    assert status == 0 and "J = " in out and r"\alpha" in out and "w_{1}^{2} + w_{2}^{2}" in out


def test_derive_nested_form_when_expansion_is_out_of_reach(capsys):
    status, out, _ = run_cli(capsys, "derive", "--depth", "6", "--steps", "5")
    assert status == 0
    assert "exact nested form (degree 175692 in a; 87847 Gauss–Hermite nodes" in out
    assert "w_6^(5) = " in out and out.rstrip().splitlines()[-1].startswith("J = E_a[")


@pytest.mark.parametrize("depth, steps", [(3, 2), (2, 3)])
def test_derive_output_stays_small_where_the_expansion_is_huge(capsys, depth, steps):
    """depth 3 × 2 steps expands to 142,248 monomials (7.4 MB on one line): the default prints the
    exact nested form in a few lines, says why and how to get the expansion; --form expanded refuses
    in one line naming --depth and --steps instead of printing megabytes."""
    status, out, _ = run_cli(capsys, "derive", "--depth", str(depth), "--steps", str(steps))
    assert status == 0 and len(out) < 5_000 and max(len(line) for line in out.splitlines()) < 1_000
    assert "exact nested form" in out and "--form expanded" in out
    assert f"scalar_objective({depth}, {steps})" in out
    status, out, err = run_cli(capsys, "derive", "--depth", str(depth), "--steps", str(steps), "--form", "expanded")
    assert status == 2 and out == "" and "--depth, --steps: " in err and "--form nested" in err


def test_derive_matrix_depth2(capsys):
    status, out, _ = run_cli(capsys, "derive", "--kind", "matrix", "--depth", "2")
    assert status == 0
    lines = out.splitlines()
    assert "alpha^1: -G*W_1.T*W_1 - W_2*W_2.T*G" in lines
    assert "alpha^2: G*W_1.T*W_2.T*G" in lines
    status, out, _ = run_cli(capsys, "derive", "--kind", "matrix", "--depth", "3", "--adapt-layers", "0")
    assert "alpha^1: -W_3*W_2*W_2.T*W_3.T*G" in out.splitlines() and "alpha^2" not in out


@pytest.mark.parametrize("argv,option", [
    (["--depth", "0"], "--depth"),
    (["--depth", "7"], "--depth"),
    (["--steps", "6"], "--steps"),
    (["--kind", "tensor"], "--kind"),
    (["--form", "short"], "--form"),
    (["--kind", "matrix", "--steps", "2"], "--steps"),
    (["--kind", "matrix", "--adapt-layers", "9"], "--adapt-layers"),
    (["--kind", "matrix", "--adapt-layers", "x"], "--adapt-layers"),
    (["--depth", "2", "--steps", "5", "--form", "expanded"], "--depth, --steps"),
])
def test_derive_bad_input_one_line_exit_2(capsys, argv, option):
    status, out, err = run_cli(capsys, "derive", *argv)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"linmaml derive: error: {option}")


def test_python_dash_m_runs_the_commands():
    result = subprocess.run([sys.executable, "-m", "linmaml", "surface", "--grid", "3", "--json"],
                            capture_output=True, text=True, timeout=600)  # hang guard only
    assert result.returncode == 0 and len(json.loads(result.stdout)["loss"]) == 3
    result = subprocess.run([sys.executable, "-m", "linmaml", "derive", "--steps", "-1"],
                            capture_output=True, text=True, timeout=600)  # hang guard only
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--steps" in result.stderr


def test_surface_defaults_are_figure_1s_task_setting(capsys):
    """A bare `linmaml surface` evaluates figure 1's setting (fig_surface.SETTINGS, explore's defaults
    too): the same grid as the one given every value of that setting explicitly."""
    from linmaml.analysis.fig_surface import SETTINGS
    from linmaml.cli.explore import _DEFAULTS

    assert {k: _DEFAULTS[k] for k in ("task_mean", "task_std", "x_var", "range", "lr", "steps")} == {
        "task_mean": SETTINGS["task_mean"], "task_std": SETTINGS["task_std"], "x_var": SETTINGS["x_var"],
        "range": SETTINGS["range"], "lr": SETTINGS["inner_lr"], "steps": SETTINGS["inner_steps"]}
    bare = json.loads(run_cli(capsys, "surface", "--grid", "7", "--json")[1])
    given = json.loads(run_cli(capsys, "surface", "--grid", "7", "--json", "--lr", str(SETTINGS["inner_lr"]),
                               "--steps", str(SETTINGS["inner_steps"]), "--task-mean", str(SETTINGS["task_mean"]),
                               "--task-std", str(SETTINGS["task_std"]), "--x-var", str(SETTINGS["x_var"]),
                               "--range", str(SETTINGS["range"]))[1])
    assert bare == given
