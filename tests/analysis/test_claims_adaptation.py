"""Figure 2 at its DEFAULT settings shows the paper's effect: after one inner step on
held-out tasks, Deep's mean query loss ≤ 0.25× Shallow's and LogR+LinNet's accuracy ≥ 10 points
above LogR's — with the upper end of the 95% interval inside the bound, not just the mean."""
import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402


@pytest.mark.slow
def test_default_settings_show_fast_adaptation_needs_depth(tmp_path):
    from linmaml.analysis import fig_adaptation as module

    record = module.run(tmp_path, quick=False)
    settings, crit = record["settings"], record["numbers"]["criteria"]
    assert settings["test_tasks"] >= 1000 and settings["eval_inner_steps"] == 10
    ratio = crit["deep_over_shallow_one_step_query_loss"]
    assert ratio["value"] + ratio["ci95"] <= 0.25
    gap = crit["linnet_minus_logr_one_step_accuracy_points"]
    assert gap["value"] - gap["ci95"] >= 10.0
