"""The neighbouring-theory figures in quick mode (fig_bernacchia, fig_bernacchia_phase, fig_task_landscape):
their numbers recomputed from the JSON with formulas written out here (the isotropic test-task loss, the
best test rate, the easy/hard segment closed form), and their Monte Carlo checks re-derived."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from linmaml.analysis import fig_bernacchia, fig_bernacchia_phase, fig_task_landscape  # noqa: E402


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = {}
    for module in (fig_bernacchia, fig_bernacchia_phase, fig_task_landscape):
        folder = tmp_path_factory.mktemp(module.NAME)
        record = module.run(folder, quick=True)
        assert json.loads((folder / f"{module.NAME}.json").read_text()) == json.loads(json.dumps(record))
        assert "paper" in record and record["settings"]["quick"] is True
        out[module.NAME] = record
    return out


def _loss(cfg, e, a):
    """½[((1 − a)² + a²(p + 1)/n_r)(e + ν²) + a²σ²p/n_r + σ²], written out."""
    p, n_r, s2, v = cfg["p"], cfg["n_r"], cfg["sigma"] ** 2, cfg["nu"] ** 2
    return 0.5 * (((1 - a) ** 2 + a**2 * (p + 1) / n_r) * (e + v) + a**2 * s2 * p / n_r + s2)


def test_bernacchia_curves_follow_the_written_out_loss(records):
    record = records["bernacchia"]
    n, s = record["numbers"], record["settings"]
    over = s["over"]
    a = n["a_vs_lr_test"]
    for rate, loss in list(zip(a["lr_test"], a["test_loss"]))[::10]:
        assert loss == pytest.approx(_loss(over, a["meta_error"], rate), rel=1e-12)
    grid = np.linspace(-1, 2, 300001)
    assert a["best_lr_test"] == pytest.approx(grid[np.argmin(_loss(over, a["meta_error"], grid))], abs=2e-5)
    assert a["best_lr_test"] > 0
    for key, cfg in (("b_vs_lr_train", over), ("c_under_vs_lr_train", s["under"])):
        panel = n[key]
        losses = [_loss(cfg, e, s["lr_test_fixed"]) for e in panel["meta_error"]]
        np.testing.assert_allclose(panel["test_loss"], losses, rtol=1e-12)
        best = int(np.argmin(panel["meta_error"]))
        assert panel["best_lr_train"] == panel["lr_train"][best]
        zero = panel["lr_train"].index(0.0)
        assert panel["gain_over_zero"] == pytest.approx(losses[zero] - losses[best], rel=1e-9, abs=1e-12)
    z = []
    for panel, axis in ((a, "lr_test"), (n["b_vs_lr_train"], "lr_train"), (n["c_under_vs_lr_train"], "lr_train")):
        mc = panel["monte_carlo"]
        for rate, mean, se in zip(mc["rates"], mc["test_loss"], mc["se"]):
            k = panel[axis].index(rate) if rate in panel[axis] else None
            if k is not None:
                z.append(abs(mean - panel["test_loss"][k]) / np.hypot(se, panel["se"][k]))
    assert max(z) == pytest.approx(n["theory_vs_simulation_max_z"], rel=1e-12)
    assert max(z) < 4.5  # quick mode: 60 runs; the claim is in the full figure (README)


def test_bernacchia_phase_cells_are_consistent(records):
    record = records["bernacchia_phase"]
    n, s = record["numbers"], record["settings"]
    low, high, _ = s["lr_train_grid"]
    for grid in (n["a"]["cells"], n["c"]["cells"]):
        for row in grid:
            for cell in row:
                assert cell["loss_at_best"] <= cell["loss_at_zero"] + 1e-15
                assert cell["gain_relative"] == pytest.approx(
                    (cell["loss_at_zero"] - cell["loss_at_best"]) / cell["loss_at_zero"], rel=1e-12, abs=1e-15)
                assert cell["at_grid_edge"] == (cell["best_lr_train"] in (low, high))
                assert cell["best_lr_test_at_zero"] > 0
    assert n["a_cells"] == len(n["a"]["p"]) * len(n["a"]["spread_over_noise"])


def _segment_ratio(family, lr, n_support, population, spread_hard, distance, rho_hard=None):
    """E_ERM/E_MAML for the easy/hard mixture, written out for isotropic covariances."""
    d, pe, ph = family["d"], 1 - family["weight_hard"], family["weight_hard"]
    rho = {"E": family["rho_easy"], "H": family["rho_hard"] if rho_hard is None else rho_hard}
    s2 = family["noise_std"] ** 2
    if population:
        b = {k: r * (1 - lr * r) ** 2 for k, r in rho.items()}
        noise = {k: 0.0 for k in rho}
    else:
        b = {k: r - 2 * lr * r**2 + lr**2 * r**3 * (1 + (d + 1) / n_support) for k, r in rho.items()}
        noise = {k: lr**2 * s2 * d * r**2 / n_support for k, r in rho.items()}
    t_m = ph * b["H"] / (ph * b["H"] + pe * b["E"])
    t_e = ph * rho["H"] / (ph * rho["H"] + pe * rho["E"])

    def excess(t):
        return 0.5 * (ph * (b["H"] * ((1 - t) ** 2 * distance**2 + spread_hard) + noise["H"])
                      + pe * (b["E"] * (t**2 * distance**2 + family["spread_easy"]) + noise["E"]))

    return excess(t_e) / excess(t_m)


def test_task_landscape_ratios_follow_the_segment_closed_form(records):
    record = records["task_landscape"]
    n, s = record["numbers"], record["settings"]
    family = s["family"]
    for key, population in (("population", True), ("finite_n", False)):
        ratio = np.array(n[key]["excess_ratio"])
        for i, D in enumerate(n["distance"]):
            for j, R in enumerate(n["spread_hard"]):
                expected = _segment_ratio(family, n[key]["lr"], s["finite_n"], population, R, D)
                assert ratio[i, j] == pytest.approx(expected, rel=1e-9)
        for cell in n[key]["monte_carlo"]:
            assert cell["z"] == pytest.approx(abs(cell["ratio"] - cell["exact_ratio"]) / cell["ratio_se"], rel=1e-12)
            assert cell["z"] < 4.5
        assert n[key]["gain_spread_independent"] < 1e-8
    for curve in n["hardness"]["curves"]:
        regime = curve["regime"]
        population = regime == "population"
        n_support = None if population else int(regime.split("=")[1])
        for rho, value in zip(n["hardness"]["rho_hard_over_rho_easy"], curve["excess_ratio"]):
            expected = _segment_ratio(family, curve["lr"], n_support, population, s["hardness"]["spread_hard"],
                                      s["hardness"]["distance"], rho * family["rho_easy"])
            assert value == pytest.approx(expected, rel=1e-9)
