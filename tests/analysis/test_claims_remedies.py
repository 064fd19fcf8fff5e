"""The issue-4 figure at its DEFAULT settings: MAML+KFO and MAML+LinNet on the Shallow model reach
the Deep model's one-step query loss (≤ 1.5×) while plain MAML on Shallow stays far above (≥ 3×),
each bound holding for the whole 95% interval."""
import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402


@pytest.mark.slow
def test_default_settings_show_both_remedies(tmp_path):
    from linmaml.analysis import fig_remedies as module

    crit = module.run(tmp_path, quick=False)["numbers"]["criteria"]
    for remedy in ("kfo_over_deep", "linnet_over_deep"):
        assert crit[remedy]["value"] + crit[remedy]["ci95"] <= 1.5
    assert crit["plain_over_deep"]["value"] - crit["plain_over_deep"]["ci95"] >= 3.0
