"""The seed-and-task intervals of the depth × width comparisons (linmaml.analysis.depth_width_stats):
the mean squares against a direct loop, the variance estimate against the crossed model's exact
variance, and the intervals' coverage by Monte Carlo (with its standard error), including a case where
leaving out the tasks' shared draw fails."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from linmaml.analysis.depth_width_stats import crossed_mean_ci, mean_squares, paired_comparison, seed_mean_ci
from linmaml.errors import ArgumentError


def test_mean_squares_match_a_direct_loop():
    x = np.random.default_rng(3).normal(size=(3, 5)) * [[1.0], [2.0], [0.5]]
    s, t = x.shape
    grand = sum(sum(row) for row in x) / (s * t)
    rows = [sum(x[i]) / t for i in range(s)]
    cols = [sum(x[i][j] for i in range(s)) / s for j in range(t)]
    seed = t * sum((r - grand) ** 2 for r in rows) / (s - 1)
    task = s * sum((c - grand) ** 2 for c in cols) / (t - 1)
    res = sum((x[i][j] - rows[i] - cols[j] + grand) ** 2 for i in range(s) for j in range(t)) / ((s - 1) * (t - 1))
    ms = mean_squares(x)
    assert ms["seed"] == pytest.approx(seed, rel=1e-12) and ms["task"] == pytest.approx(task, rel=1e-12)
    assert ms["residual"] == pytest.approx(res, rel=1e-12)
    # the sums of squares add up to the total (the two-way decomposition)
    total = sum((x[i][j] - grand) ** 2 for i in range(s) for j in range(t))
    assert seed * (s - 1) + task * (t - 1) + res * (s - 1) * (t - 1) == pytest.approx(total, rel=1e-12)
    ci = crossed_mean_ci(x)
    variance = max(seed, res) / (s * t) + max(task - res, 0) / (s * t)
    assert ci["mean"] == pytest.approx(grand, rel=1e-12)
    assert ci["half_width"] == pytest.approx(stats.t.ppf(0.975, s - 1) * math.sqrt(variance), rel=1e-10)
    # the per-seed interval: a t-interval over the three row means, written out
    sd = math.sqrt(sum((r - grand) ** 2 for r in rows) / (s - 1))
    assert seed_mean_ci(x)["half_width"] == pytest.approx(stats.t.ppf(0.975, s - 1) * sd / math.sqrt(s), rel=1e-10)


def _crossed(rng, reps, s, t, sa, sb, se, mu=0.3):
    return mu + rng.normal(size=(reps, s, 1)) * sa + rng.normal(size=(reps, 1, t)) * sb + rng.normal(size=(reps, s, t)) * se


def _coverage(samples, interval, mu=0.3):
    hits = [interval(x)["low"] <= mu <= interval(x)["high"] for x in samples]
    p = float(np.mean(hits))
    return p, math.sqrt(0.95 * 0.05 / len(samples))  # the standard error at the nominal level


# (seeds, tasks, sa, sb, se): seeds dominate / seeds alone / tasks dominate / residual alone / mixed
SETTINGS = [(3, 40, 1.0, 0.5, 2.0), (3, 40, 1.0, 0.0, 0.1), (3, 40, 0.0, 1.0, 2.0), (3, 40, 0.0, 0.0, 1.0),
            (4, 30, 0.3, 0.6, 1.5)]


@pytest.mark.parametrize("setting", SETTINGS)
def test_crossed_interval_covers_at_least_the_nominal_level(setting):
    s, t, sa, sb, se = setting
    samples = _crossed(np.random.default_rng(SETTINGS.index(setting)), 3000, s, t, sa, sb, se)
    p, err = _coverage(samples, crossed_mean_ci)
    assert p >= 0.95 - 4 * err, (setting, p)
    if sb == 0.0 and se < sa:  # seeds alone: the t_{S-1} interval is exact, not merely conservative
        assert abs(p - 0.95) <= 4 * err, (setting, p)


def test_variance_estimate_matches_the_crossed_models_exact_variance():
    s, t, sa, sb, se = 3, 40, 1.0, 0.8, 2.0
    samples = _crossed(np.random.default_rng(11), 6000, s, t, sa, sb, se)
    v = np.array([crossed_mean_ci(x)["se"] ** 2 for x in samples])
    exact = sa ** 2 / s + sb ** 2 / t + se ** 2 / (s * t)
    # the clip at 0 of the task part only adds; with sb = 0.8 it almost never binds
    assert abs(v.mean() - exact) <= 4 * v.std(ddof=1) / math.sqrt(len(v)), (v.mean(), exact)
    means = samples.mean(axis=(1, 2))
    assert abs(means.var(ddof=1) / exact - 1) < 0.1  # the model itself: ~N(0, 2/5999)^(1/2) = 1.8 % sd


def test_leaving_out_the_tasks_shared_draw_under_covers():
    """Where the tasks dominate, the interval over seeds only misses; the crossed one does not: so the
    coverage test above can fail for an interval that drops the task part."""
    samples = _crossed(np.random.default_rng(5), 3000, 3, 40, 0.0, 1.0, 0.5)
    seed_only, err = _coverage(samples, seed_mean_ci)
    crossed, _ = _coverage(samples, crossed_mean_ci)
    assert seed_only < 0.7 and crossed >= 0.95 - 4 * err


def test_paired_comparison_against_direct_counts():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 76, size=(3, 50)) / 75 * 100
    b = rng.integers(0, 76, size=(3, 50)) / 75 * 100
    out = paired_comparison(a, b)
    d = a - b
    assert out["wins"] == int(np.sum(d > 0)) and out["ties"] == int(np.sum(d == 0)) and out["losses"] == int(np.sum(d < 0))
    assert out["wins"] + out["ties"] + out["losses"] == 150
    for row, p in zip(d, out["per_seed"]):
        assert p["mean"] == pytest.approx(sum(row) / len(row), rel=1e-12)
        sd = math.sqrt(sum((v - p["mean"]) ** 2 for v in row) / (len(row) - 1))
        assert p["ci95_tasks"] == pytest.approx(1.959963984540054 * sd / math.sqrt(len(row)), rel=1e-10)
    assert out["crossed"]["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert out["crossed"]["half_width"] >= out["over_seeds"]["half_width"]
    # an MS_seed below MS_res (seed means closer than the residual allows) is replaced by MS_res
    x = np.array([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])  # equal seed means, residual 1/3 per cell
    ms = mean_squares(x)
    assert ms["seed"] == 0.0 and ms["residual"] > 0
    assert crossed_mean_ci(x)["se"] == pytest.approx(math.sqrt((ms["residual"] + max(ms["task"] - ms["residual"], 0))
                                                               / 8), rel=1e-12)


def test_bad_input_names_its_argument():
    with pytest.raises(ArgumentError) as info:
        crossed_mean_ci(np.zeros((1, 5)))
    assert info.value.argument == "values"
    with pytest.raises(ArgumentError) as info:
        paired_comparison(np.zeros((3, 5)), np.zeros((3, 4)))
    assert info.value.argument == "b"
    with pytest.raises(ArgumentError):
        crossed_mean_ci([[0.0, float("nan")], [1.0, 2.0]])


def test_satterthwaite_interval_under_covers_where_the_conservative_one_does_not():
    """Why the verdicts use t_{S-1} and the textbook Satterthwaite interval is only reported: with 3 seeds
    × 600 tasks where the seeds weigh (per-task differences as fractions: seed sd 0.007, task sd 0.03,
    residual sd 0.08) the Satterthwaite interval covers clearly less than 95 % (92.4 % with this seed)."""
    samples = _crossed(np.random.default_rng(21), 6000, 3, 600, 0.007, 0.03, 0.08)
    err = math.sqrt(0.95 * 0.05 / len(samples))

    def satterthwaite(x):
        c = crossed_mean_ci(x)
        half = c["satterthwaite"]["half_width"]
        return {"low": c["mean"] - half, "high": c["mean"] + half}

    liberal, _ = _coverage(samples, satterthwaite)
    conservative, _ = _coverage(samples, crossed_mean_ci)
    assert liberal < 0.95 - 2 * err and conservative >= 0.95 - 4 * err, (liberal, conservative)
