"""The validation-split study of MAML++'s training options (:mod:`linmaml.analysis.recipe_options`)
on tiny synthetic data, one thread: every variant's settings as its run's ``config.json`` records
them (against values written out here, and against ``linmaml train``'s own parser reading the
recorded command), the scores on validation tasks of another task seed (against
``evaluate_checkpoint``), the paired differences (against a direct per-task loop), "not run" and
"unfinished" runs, exact resumption of a stopped run, merging with an earlier record under
``--only``, and bad input (one line, exit status 2, nothing written)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from linmaml.analysis import recipe_options as R
from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks.train import CLOCK_FIELDS

ITERATIONS, VAL_EVERY, TASKS = 30, 10, 12
#: A tiny base recipe in place of configs/omniglot-5w1s.json: the same settings but the network and sizes.
TINY = {"benchmark": "omniglot", "ways": 5, "shots": 1, "algo": "maml", "outer_lr_schedule": "cosine",
        "layers": 1, "hidden": 4, "meta_batch": 2, "val_tasks": 3}
#: What each variant's config.json must hold, written out: MAML++'s inner loop is 5 steps of 0.1; at
#: 30 iterations the multi-step loss anneals over 30·10/150 = 2 and first order lasts 30·50/150 = 10.
PLAIN = {"steps": 1, "inner_lr": 0.4, "test_steps": 3, "query": 5, "msl_iterations": 0, "bn_per_step": False,
         "transform": "none", "first_order_iterations": 0}
STEPS5 = {**PLAIN, "steps": 5, "inner_lr": 0.1, "test_steps": 5}
EXPECTED = {
    "recipe": PLAIN,
    "query15": {**PLAIN, "query": 15},
    "steps5": STEPS5,
    "steps5-msl": {**STEPS5, "msl_iterations": 2},
    "steps5-bnws": {**STEPS5, "bn_per_step": True},
    "steps5-lslr": {**STEPS5, "transform": "rates"},
    "steps5-da": {**STEPS5, "first_order_iterations": 10},
    "mamlpp": {**STEPS5, "msl_iterations": 2, "bn_per_step": True, "transform": "rates", "first_order_iterations": 10},
}
STOPPED = "steps5-msl"  # the variant stopped after 2 iterations and resumed by the study


def _splits():
    # 16 images per class: one support and 15 query (query15's training tasks, every validation task)
    return synthetic_splits(examples=16, classes=(12, 8, 8))


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def study(tmp_path_factory, sigterm_after):
    import torch

    from linmaml.benchmarks.train import train

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("recipe_options")
    config, runs, out = base / "tiny.json", base / "runs", base / "out"
    config.write_text(json.dumps(TINY))
    splits = _splits()
    kwargs = dict(runs=runs, config=config, iterations=ITERATIONS, val_every=VAL_EVERY, tasks=TASKS, splits=splits)
    # one variant stopped (SIGTERM, as a stopped background lane) after 2 iterations, before any validation
    settings = {**TINY, "iterations": ITERATIONS, "val_every": VAL_EVERY, "seed": 0, "steps": 5, "inner_lr": 0.1,
                "test_steps": 5, "msl_iterations": 2}
    part = train(settings, runs / STOPPED, splits=splits, progress=False, on_iteration=sigterm_after(2))
    assert part.status == "interrupted" and part.iteration == 2
    first_two = (runs / STOPPED / "metrics.jsonl").read_text().splitlines()
    before = R.run(base / "before", **kwargs)  # nothing trained: scores what is there
    record = R.run(out, do_train=True, command_line="test", **kwargs)
    return {"base": base, "config": config, "runs": runs, "out": out, "kwargs": kwargs, "splits": splits,
            "before": before, "record": record, "first_two": first_two}


def test_missing_runs_are_not_run_and_a_stopped_one_unfinished(study):
    before = {v["variant"]: v for v in study["before"]["variants"]}
    assert list(before) == list(EXPECTED)
    assert {n: v["status"] for n, v in before.items()} == {n: ("unfinished" if n == STOPPED else "not run")
                                                           for n in EXPECTED}
    assert not any("accuracy" in v for v in before.values())  # the stopped run has not validated: no best.pt
    assert study["before"]["paired"] is None
    lines = R.table(study["before"])
    assert sum("not run" in line for line in lines) == len(EXPECTED) - 1


def test_each_variants_settings_reach_its_config(study):
    for name, expected in EXPECTED.items():
        config = json.loads((study["runs"] / name / "config.json").read_text())["config"]
        assert {k: config[k] for k in expected} == expected, name
        assert (config["iterations"], config["val_every"], config["seed"]) == (ITERATIONS, VAL_EVERY, 0)
        assert {k: config[k] for k in TINY} == TINY  # the base recipe under every variant


def test_recorded_commands_give_the_recorded_settings(study):
    # the command each variant records, read by linmaml train's own parser and --config reader
    import shlex

    from linmaml.benchmarks.settings import declared
    from linmaml.cli import build_parser
    from linmaml.cli.train import read_config

    fields = set(declared())
    for v in study["record"]["variants"]:
        words = shlex.split(v["command"])
        assert words[:2] == ["linmaml", "train"]
        args = build_parser().parse_args(words[1:])
        given = {k: getattr(args, k) for k in fields if getattr(args, k, None) is not None}
        settings = {**read_config(args.config, fields), **given}
        config = json.loads((study["runs"] / v["variant"] / "config.json").read_text())["config"]
        assert {k: config[k] for k in settings} == settings, v["variant"]
        assert args.out == str(study["runs"] / v["variant"]) and args.threads == 1


def test_scores_are_on_validation_tasks_of_another_seed(study):
    from linmaml.benchmarks.evaluate import evaluate_checkpoint

    splits = study["splits"]
    for v in study["record"]["variants"][:3]:
        assert v["status"] == "done" and v["iterations"] == ITERATIONS
        run_dir = study["runs"] / v["variant"]
        val = evaluate_checkpoint(run_dir, tasks=TASKS, split="val", task_seed=1, splits={"val": splits["val"]})
        assert sum(v["task_accuracies"]) / TASKS == pytest.approx(val["accuracy"], abs=1e-9)
        assert v["accuracy"] == pytest.approx(100 * val["accuracy"], abs=1e-9) and v["best_iteration"] == val["iteration"]
        # each task scores 5 ways × 15 query images: whole counts of 75
        assert all(abs(75 * a - round(75 * a)) < 1e-6 for a in v["task_accuracies"])
        # the best checkpoint is the best of the run's own validations (ties: the earliest)
        curve = [(r["iteration"], r["val_accuracy"]) for r in _metrics(run_dir) if "val_accuracy" in r]
        assert [p["iteration"] for p in v["validation"]] == [10, 20, 30]
        assert v["best_iteration"] == max(curve, key=lambda p: p[1])[0]


def _check_pair(pair, accuracies, reference):
    diffs = [100 * (a - b) for a, b in zip(accuracies, reference)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    assert n == TASKS and pair["tasks"] == n
    assert pair["mean"] == pytest.approx(mean, abs=1e-9)
    assert pair["ci95"] == pytest.approx(1.96 * sd / math.sqrt(n), abs=1e-9)
    assert (pair["wins"], pair["ties"], pair["losses"]) == (sum(d > 0 for d in diffs), sum(d == 0 for d in diffs),
                                                            sum(d < 0 for d in diffs))


def test_paired_differences_against_a_direct_loop(study):
    """Every variant against recipe; each MAML++ option (steps5-*, mamlpp) also against steps5."""
    variants = {v["variant"]: v for v in study["record"]["variants"]}
    for name, v in variants.items():
        if name == "recipe":
            assert "paired" not in v
        else:
            _check_pair(v["paired"], v["task_accuracies"], variants["recipe"]["task_accuracies"])
        if name.startswith("steps5-") or name == "mamlpp":
            _check_pair(v["paired_to_steps5"], v["task_accuracies"], variants["steps5"]["task_accuracies"])
        else:
            assert "paired_to_steps5" not in v
    # mamlpp against each one-option variant it contains; no other variant contains another's options
    singles = ["steps5-msl", "steps5-bnws", "steps5-lslr", "steps5-da"]
    rows = variants["mamlpp"]["paired_to_options"]
    assert [row["reference"] for row in rows] == singles
    for row, single in zip(rows, singles):
        _check_pair(row, variants["mamlpp"]["task_accuracies"], variants[single]["task_accuracies"])
    assert all("paired_to_options" not in v for n, v in variants.items() if n != "mamlpp")


def test_costs_from_the_runs_own_logs(study):
    for v in study["record"]["variants"]:
        lines = _metrics(study["runs"] / v["variant"])
        assert v["train_seconds"] == lines[-1]["elapsed"] and v["iterations"] == lines[-1]["iteration"]
        steps, previous = [], 0.0
        for r in lines:
            if "val_accuracy" not in r:
                steps.append(r["elapsed"] - previous)
            previous = r["elapsed"]
        steps.sort()
        assert v["median_step_seconds"] == pytest.approx((steps[len(steps) // 2 - 1] + steps[len(steps) // 2]) / 2
                                                         if len(steps) % 2 == 0 else steps[len(steps) // 2])
        assert [(p["iteration"], p["elapsed"]) for p in v["validation"]] == [
            (r["iteration"], r["elapsed"]) for r in lines if "val_accuracy" in r]
        # with derivative-order annealing, the steps split by the order each record logs
        first, second, previous = [], [], 0.0
        for r in lines:
            if "val_accuracy" not in r:
                (first if r.get("first_order") else second).append(r["elapsed"] - previous)
            previous = r["elapsed"]
        if v["variant"] in ("steps5-da", "mamlpp"):
            assert len(first) == 10 - 1 and v["median_step_seconds_by_order"] == {  # iteration 10 validates
                "first": pytest.approx(float(np.median(first))), "second": pytest.approx(float(np.median(second)))}
        else:
            assert not first and v["median_step_seconds_by_order"] is None


def test_written_record_and_figure(study):
    out = study["out"]
    assert sorted(p.name for p in out.iterdir()) == ["recipe_options.json", "recipe_options.png"]
    saved = json.loads((out / "recipe_options.json").read_text())
    assert saved["command"] == "test" and saved["settings"]["task_seed"] == 1 and saved["settings"]["split"] == "val"
    assert saved["settings"]["iterations"] == ITERATIONS and saved["settings"]["base"] == TINY
    assert [v["variant"] for v in saved["variants"]] == list(EXPECTED)


def test_stopped_run_resumed_exactly(study, tmp_path):
    from linmaml.benchmarks.train import train

    run_dir = study["runs"] / STOPPED
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines[:2] == study["first_two"] and len(lines) == ITERATIONS  # resumed, not restarted
    # the uninterrupted run of the same settings takes the same steps
    config = json.loads((run_dir / "config.json").read_text())["config"]
    train(config, tmp_path / "whole", splits=study["splits"], progress=False)
    drop = CLOCK_FIELDS
    resumed = [{k: r[k] for k in r if k not in drop} for r in _metrics(run_dir)]
    whole = [{k: r[k] for k in r if k not in drop} for r in _metrics(tmp_path / "whole")]
    assert resumed == whole


def test_done_runs_not_retrained_and_only_merges_the_earlier_record(study):
    runs, out = study["runs"], study["out"]
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")}
    again = R.run(out, only=["query15"], do_train=True, **study["kwargs"])
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")} == stamps
    first = {v["variant"]: v for v in study["record"]["variants"]}
    for v in again["variants"]:
        assert v["accuracy"] == first[v["variant"]]["accuracy"], v["variant"]
        assert v.get("paired") == first[v["variant"]].get("paired")


def test_only_without_an_earlier_record_reports_the_others_unscored(study, tmp_path):
    record = R.run(tmp_path, only=["recipe"], **study["kwargs"])
    status = {v["variant"]: v["status"] for v in record["variants"]}
    assert status["recipe"] == "done" and all(status[n] == "done (not scored now)" for n in EXPECTED if n != "recipe")


def test_folder_with_other_settings_is_refused_before_any_training(study, tmp_path):
    from linmaml.benchmarks.train import train

    runs = tmp_path / "runs"
    # the budget, validation and query of query15, but another inner rate (a setting neither the base
    # recipe nor the variant names)
    train({**TINY, "iterations": 1, "val_every": VAL_EVERY, "query": 15, "inner_lr": 0.2}, runs / "query15", splits=study["splits"],
          progress=False)
    kwargs = {**study["kwargs"], "runs": runs}
    with pytest.raises(ValueError) as caught:
        R.run(tmp_path / "out", do_train=True, **kwargs)
    assert caught.value.argument == "inner_lr"
    assert sorted(p.name for p in runs.iterdir()) == ["query15"] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, flag", [
    (["--only", "nope"], "--only"),
    (["--iterations", "0"], "--iterations"),
    (["--val-every", "-1"], "--val-every"),
    (["--tasks", "1"], "--tasks"),
    (["--task-seed", "0"], "--task-seed"),
    (["--threads", "0"], "--threads"),
    (["--config", "/nonexistent/recipe.json"], "--config"),
    (["--iterations", "many"], "--iterations"),
])
def test_bad_input_one_line_exit_2(argv, flag, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        status = R.main([*argv, "--out", str(out), "--runs", str(tmp_path / "runs")])
    except SystemExit as exit_:  # argparse's own errors (a value that is not a number)
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("recipe_options: error:") and flag in err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_the_fractions_of_the_budget():
    # MAML++: 10 of 150 epochs of multi-step loss, 50 of 150 first order; at least one iteration each
    assert [R.msl_iterations(t) for t in (2000, 16000, 1)] == [133, 1067, 1]
    assert [R.first_order_iterations(t) for t in (2000, 16000, 1)] == [667, 5333, 1]


def test_the_default_base_recipe_outside_a_checkout_is_the_shipped_one(monkeypatch):
    """In a source checkout the default is configs/omniglot-5w1s.json; from an installed package (no
    checkout) the shipped recipe of that name, which holds the same settings."""
    named, where = R._config_path(None)
    assert named == "configs/omniglot-5w1s.json" and where.is_file()
    monkeypatch.setattr(R, "source_checkout", lambda: None)
    named, installed = R._config_path(None)
    assert named == "omniglot-5w1s" and installed.is_file()
    assert json.loads(installed.read_text()) == json.loads(where.read_text())
