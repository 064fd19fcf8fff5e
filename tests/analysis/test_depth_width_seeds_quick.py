"""The multi-seed depth × width pipeline in quick mode on pure-noise data: the JSON's runs and
comparisons against direct computations from the stored per-task accuracies and from
``evaluate_checkpoint``, no retraining of complete runs, exact resumption of an interrupted one,
refusal of a folder with other settings, the plateau measures on a written-out curve, --measure."""
from __future__ import annotations

import json

import numpy as np
import pytest

from linmaml.analysis import depth_width_seeds as D
from linmaml.benchmarks.data.fewshot import noise_splits


@pytest.fixture(scope="module")
def quick(tmp_path_factory, sigterm_after):
    base = tmp_path_factory.mktemp("depth_width_seeds")
    runs, out = base / "runs", base / "out"
    from linmaml.benchmarks.train import train

    # one run interrupted (SIGTERM, as a stopped lane) after 2 of its 4 iterations: the plan must resume
    # it, not restart it (a cosine run cannot be extended, so it is stopped, not shortened)

    partial = runs / D.run_name("maml", 1, 4, 1)
    part = train(D.options(D.QUICK, "maml", 1, 4, 1), partial, splits=noise_splits(), progress=False,
                 on_iteration=sigterm_after(2))
    assert part.status == "interrupted" and part.iteration == 2
    first_two = (partial / "metrics.jsonl").read_text().splitlines()
    record = D.run(out, quick=True, runs=runs, command="test")
    return record, runs, out, first_two


def test_every_run_and_comparison_is_written(quick):
    record, runs, out, _ = quick
    assert sorted(p.name for p in out.iterdir()) == ["depth_width_seeds.json", "depth_width_seeds.png"]
    saved = json.loads((out / "depth_width_seeds.json").read_text())
    assert saved["command"] == "test" and saved["comparisons"].keys() == set(D.QUICK["comparisons"])
    arms = {("anil", 1, 4), ("maml", 1, 4), ("maml", 1, 8)}
    assert {(r["algo"], r["blocks"], r["filters"], r["seed"]) for r in saved["runs"]} == {
        (*arm, s) for arm in arms for s in range(D.QUICK["seeds"])}
    for r in saved["runs"]:
        assert r["iterations"] == D.QUICK["train"]["iterations"] and r["train_seconds"] > 0
        assert [p["iteration"] for p in r["validation"]] == [2, 4]  # every val_every = 2
        lines = [json.loads(x) for x in (runs / r["name"] / "metrics.jsonl").read_text().splitlines()]
        assert [100 * x["val_accuracy"] for x in lines if "val_accuracy" in x] == pytest.approx(
            [p["accuracy"] for p in r["validation"]])
        assert r["best_iteration"] in (2, 4) and r["command"].startswith("linmaml train ")
        assert "--outer-lr-schedule cosine" in r["command"] and "--on-nonfinite skip" in r["command"]
        assert (f"--seed {r['seed']}" in r["command"]) == (r["seed"] != 0)  # seed 0 is the default, left out
        counts = np.asarray(r["task_accuracies"]) * 75 / 100  # 5 ways × 15 query images per task
        assert len(counts) == D.QUICK["test_tasks"] and np.allclose(counts, np.round(counts), atol=1e-4)


def test_test_accuracy_matches_evaluate_checkpoint(quick):
    record, runs, _, _ = quick
    from linmaml.benchmarks.evaluate import evaluate_checkpoint

    for r in record["runs"][:3]:
        scored = evaluate_checkpoint(r["run"], tasks=D.QUICK["test_tasks"], splits={"test": noise_splits()["test"]})
        assert np.mean(r["task_accuracies"]) == pytest.approx(100 * scored["accuracy"], abs=1e-4)
        assert scored["iteration"] == r["best_iteration"]


def test_comparisons_from_the_stored_per_task_accuracies(quick):
    record, _, _, _ = quick
    for name, c in record["comparisons"].items():
        def matrix(arm):
            by_seed = {r["seed"]: r["task_accuracies"] for r in record["runs"]
                       if [r["algo"], r["blocks"], r["filters"]] == list(arm)}
            return np.array([by_seed[s] for s in range(D.QUICK["seeds"])])
        a, b = matrix(c["a"]), matrix(c["b"])
        assert c["mean"] == pytest.approx(a.mean() - b.mean(), abs=1e-9)
        assert [p["mean"] for p in c["per_seed"]] == pytest.approx(list(a.mean(1) - b.mean(1)), abs=1e-9)
        assert c["crossed"]["low"] <= c["mean"] <= c["crossed"]["high"]
        for key, half in (("verdict", c["crossed"]["half_width"]),
                          ("verdict_satterthwaite", c["crossed"]["satterthwaite"]["half_width"])):
            low, high = c["mean"] - half, c["mean"] + half
            assert c[key] == ("a above b" if low > 0 else "a below b" if high < 0 else "not distinguishable")
        # the validation gap: seed s of a minus seed s of b at each validation, written out
        runs_b = {r["seed"]: r for r in record["runs"] if [r["algo"], r["blocks"], r["filters"]] == list(c["b"])}
        for r in (r for r in record["runs"] if [r["algo"], r["blocks"], r["filters"]] == list(c["a"])):
            direct = [p["accuracy"] - q["accuracy"] for p, q in zip(r["validation"], runs_b[r["seed"]]["validation"])]
            assert c["validation_gap"]["per_seed"][r["seed"]] == pytest.approx(direct)
        # the seed-averaged curve at each validation is the mean of the seeds' own curves
        runs_a = [r for r in record["runs"] if [r["algo"], r["blocks"], r["filters"]] == list(c["a"])]
        assert c["curves"]["a"]["accuracy"][-1] == pytest.approx(np.mean([r["validation"][-1]["accuracy"]
                                                                          for r in runs_a]))


def test_interrupted_run_resumed_and_complete_runs_not_retrained(quick, tmp_path):
    record, runs, _, first_two = quick
    lines = (runs / D.run_name("maml", 1, 4, 1) / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == D.QUICK["train"]["iterations"] and lines[:2] == first_two
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")}
    again = D.run(tmp_path, quick=True, runs=runs)
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")} == stamps
    assert again["runs"] == record["runs"] and again["comparisons"] == record["comparisons"]


@pytest.mark.slow  # two spawned processes each import torch: about 20 s on a loaded 2-core machine
def test_jobs_path_gives_the_same_record(quick, tmp_path):
    record, runs, _, _ = quick
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")}
    parallel = D.run(tmp_path, quick=True, runs=runs, jobs=2)
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")} == stamps
    assert parallel["runs"] == record["runs"] and parallel["comparisons"] == record["comparisons"]


def test_folder_with_other_settings_is_refused(tmp_path, capsys):
    from linmaml.benchmarks.train import train

    runs = tmp_path / "runs"
    train({**D.options(D.QUICK, "anil", 1, 4, 0), "iterations": 1, "inner_lr": 0.1},
          runs / D.run_name("anil", 1, 4, 0), splits=noise_splits(), progress=False)
    assert D.main(["--quick", "--runs", str(runs), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("depth_width_seeds: error: inner_lr:") and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert D.main(["--quick", "--comparisons", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "comparisons" in capsys.readouterr().err


def test_plateau_on_a_written_out_curve():
    curve = [{"iteration": t, "elapsed": t / 10, "accuracy": a, "ci95": 1.5}
             for t, a in [(200, 50.0), (400, 60.0), (600, 70.0), (800, 69.0), (1000, 72.0)]]
    p = D.plateau(curve, 1000)
    # last quarter: 72 − (the last validation at or before 750: 600, 70); second half (after 500):
    # max(70, 69, 72) − max(50, 60)
    assert p == {"last_quarter_gain": 2.0, "second_half_gain": 12.0, "best_iteration": 1000, "plateaued": False}
    flat = [dict(c, accuracy=71.0) if c["iteration"] == 1000 else c for c in curve]
    assert D.plateau(flat, 1000)["plateaued"] is True  # a gain of 1.0 < the half-width 1.5
    tied = [dict(c, accuracy=70.0) for c in curve]
    assert D.plateau(tied, 1000)["best_iteration"] == 200  # ties: the earliest, as best.pt keeps


def test_measure_times_every_configuration():
    size = {**D.QUICK, "train": dict(D.QUICK["train"])}
    result = D.measure(size, D._comparisons(size, True), quick=True)
    assert [(r["algo"], r["blocks"], r["filters"]) for r in result["configurations"]] == [
        ("anil", 1, 4), ("maml", 1, 4), ("maml", 1, 8)]
    for r in result["configurations"]:
        assert len(r["timed_iterations"]) == D.MEASURE_ITERATIONS - 3 and r["seconds_per_iteration"] > 0
        assert len(r["timed_cpu"]) == D.MEASURE_ITERATIONS - 3 and r["cpu_seconds_per_iteration"] > 0
    per_iteration = sum(r["seconds_per_iteration"] for r in result["configurations"])
    assert result["training_seconds"] == pytest.approx(D.QUICK["seeds"] * D.QUICK["train"]["iterations"] * per_iteration)
    # scoring: 2 validations of 3 tasks and 10 test tasks per run, at each configuration's seconds per task
    per_task = sum(r["cpu_seconds_per_task_scored"] for r in result["configurations"])
    assert result["validation_and_test_cpu_seconds"] == pytest.approx(D.QUICK["seeds"] * (2 * 3 + 10) * per_task)


def test_recorded_command_parses_to_the_runs_settings(quick):
    """Each run's recorded ``linmaml train`` command, parsed by the command line's own parser, gives
    the run's saved settings (config.json) for every setting that changes the weights."""
    import argparse
    import shlex

    from linmaml.benchmarks.config import TrainConfig
    from linmaml.benchmarks.settings import IDENTITY
    from linmaml.cli import train as train_command

    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    record, runs, _, _ = quick
    for r in record["runs"]:
        args = parser.parse_args(shlex.split(r["command"])[1:])
        given = {name: getattr(args, name) for name in TrainConfig().to_dict() if getattr(args, name, None) is not None}
        rebuilt = TrainConfig.from_dict(given).to_dict()
        saved = json.loads((runs / r["name"] / "config.json").read_text())["config"]
        for name in (*IDENTITY, "iterations", "on_nonfinite", "val_every", "val_tasks"):
            assert rebuilt[name] == saved[name], (r["name"], name)
        assert args.out == r["run"] and args.threads == 1
