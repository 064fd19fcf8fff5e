"""fig_representation (Collins et al. 2022, Figure 1) in quick mode: its numbers against independent
recomputations — the principal-angle distance by scipy.linalg.subspace_angles on the run's own weights,
the ANIL theory step against a finite-difference gradient of the exact expectation, and the summary
statistics recomputed from per-seed values."""
import json

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from linmaml.analysis import fig_representation as fig


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("representation")
    return fig.run(out, quick=True), out


def test_quick_run_writes_json_naming_its_paper_and_every_method(quick):
    record, out = quick
    on_disk = json.loads((out / "representation.json").read_text())
    assert on_disk["source"]["paper"].startswith("L. Collins, A. Mokhtari, S. Oh, S. Shakkottai")
    for regime in ("population", "finite"):
        assert set(fig.METHODS) <= set(on_disk["numbers"][regime])
    steps = on_disk["settings"]["meta_iterations"] + 1
    row = on_disk["numbers"]["population"]["ANIL"]
    assert len(row["geometric_mean"]) == steps
    finals = np.array(row["final_per_seed"], dtype=float)
    assert row["final_distance"] == pytest.approx(10 ** np.mean(np.log10(finals)), rel=1e-9)


def test_distances_follow_scipy_principal_angles_on_a_trained_run():
    cfg = {**fig.SETTINGS, **fig.QUICK}
    fam = fig.family(cfg, 10)
    W1, _ = fig.train(cfg, fam, "ANIL", seed=0, meta_iterations=5)
    ours = fig.distances(W1, fam.basis)
    theirs = [np.sin(subspace_angles(W.T, fam.basis).max()) for W in W1]
    assert np.allclose(ours, theirs, atol=1e-12)


def test_average_loss_has_zero_expected_gradient_at_the_start():
    """The exact-theory statement drawn for average-loss training: at W2 = 0 (the task mean), the expected
    gradient of ½E‖W2W1x − y‖² vanishes; checked by Monte Carlo-free algebra: the gradient of ½tr((W0 − W_τ)Σ(·)ᵀ)
    averaged over zero-mean task maps is (W0 − M)Σ(…) = 0."""
    from linmaml.closedform.gaussian import expected_post_adaptation_loss_and_grad

    cfg = {**fig.SETTINGS, **fig.QUICK}
    fam = fig.family(cfg, 10)
    _, grads = expected_post_adaptation_loss_and_grad(fig.start(cfg, 0), fam, 0.0, steps=0, population=True)
    assert all(np.abs(G).max() < 1e-14 for G in grads)


def test_anil_theory_takes_gradient_steps_of_the_exact_expectation():
    from linmaml.checks._common import central_difference
    from linmaml.closedform.lowrank import anil_expected_loss

    cfg = {**fig.SETTINGS, **fig.QUICK, "d": 6, "k": 2}
    fam = fig.family(cfg, 10)
    path = fig.anil_theory(cfg, fam, seed=1, meta_iterations=1)
    layers = fig.start(cfg, 1)
    grad = central_difference(lambda ws: anil_expected_loss(ws, fam, cfg["inner_lr"], population=True), layers, 1e-4)
    assert np.allclose(path[1], layers[0] - cfg["meta_lr"] * grad[0], atol=1e-9)


def test_summary_marks_diverged_seeds_and_keeps_nan_out_of_json():
    cfg = {**fig.SETTINGS, **fig.QUICK}
    curves = np.array([[1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6], [1.0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan]])
    row = fig.summarise(curves, cfg)
    assert row["diverged_seeds"] == 1 and row["converged_seeds"] == 1
    assert row["final_per_seed"][1] is None
    assert row["log10_rate_per_100_iterations"] == pytest.approx(-100.0)
    json.dumps(row, allow_nan=False)
