"""The full-length check of a recipe change on the validation split (:mod:`linmaml.analysis.recipe_check`)
on tiny synthetic runs, one thread: the scores against ``evaluate_checkpoint`` on validation tasks of
another task seed, the paired comparison against a direct per-task loop and the crossed interval
against the two-way mean squares written out here, the equal-time reading against the runs' own
logs, the verdict's rule, reuse of scores already recorded, and bad input (one line, exit status 2,
nothing written)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from linmaml.analysis import recipe_check as C
from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.intervals import t_quantile

ITERATIONS, VAL_EVERY, TASKS = 20, 10, 12
TINY = {"benchmark": "omniglot", "ways": 5, "shots": 1, "algo": "maml", "layers": 1, "hidden": 4, "meta_batch": 2,
        "val_tasks": 3, "iterations": ITERATIONS, "val_every": VAL_EVERY}
#: the candidate: MAML++'s inner loop (five steps of 0.1) in place of one step of 0.4
CANDIDATE = {"steps": 5, "inner_lr": 0.1, "test_steps": 5}


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    import torch

    from linmaml.benchmarks.train import train

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("recipe_check")
    splits = synthetic_splits(examples=16, classes=(12, 8, 8))
    folders = {"baseline": [], "candidate": []}
    for seed in (0, 1):
        for group, extra in (("baseline", {}), ("candidate", CANDIDATE)):
            folder = base / f"{group}-s{seed}"
            result = train({**TINY, **extra, "seed": seed}, folder, splits=splits, progress=False)
            assert result.status == "done"
            folders[group].append(folder)
    # a third baseline seed, unpaired: it enters the baseline's mean, not the pairs
    third = base / "baseline-s2"
    assert train({**TINY, "seed": 2}, third, splits=splits, progress=False).status == "done"
    folders["baseline"].append(third)
    out = base / "out"
    record = C.run(out, baseline=folders["baseline"], candidate=folders["candidate"], tasks=TASKS,
                   splits={"val": splits["val"]}, command_line="test")
    return {"base": base, "splits": splits, "folders": folders, "out": out, "record": record}


def test_scores_are_on_validation_tasks_of_another_seed(check):
    from linmaml.benchmarks.evaluate import evaluate_checkpoint

    for group in ("baseline", "candidate"):
        for r, folder in zip(check["record"][group], check["folders"][group]):
            val = evaluate_checkpoint(folder, tasks=TASKS, split="val", task_seed=1,
                                      splits={"val": check["splits"]["val"]})
            assert r["accuracy"] == pytest.approx(100 * val["accuracy"], abs=1e-9)
            assert sum(r["task_accuracies"]) / TASKS == pytest.approx(val["accuracy"], abs=1e-9)
            assert r["best_iteration"] == val["iteration"] and r["scored_now"]
            assert r["test_steps"] == (5 if group == "candidate" else 3)
            lines = _metrics(folder)
            assert r["train_seconds"] == lines[-1]["elapsed"] and r["iterations"] == ITERATIONS


def test_paired_comparison_against_a_direct_loop(check):
    record = check["record"]
    base = {r["seed"]: r["task_accuracies"] for r in record["baseline"]}
    cand = {r["seed"]: r["task_accuracies"] for r in record["candidate"]}
    d = np.array([[100 * (c - b) for c, b in zip(cand[s], base[s])] for s in (0, 1)])
    paired = record["comparison"]["paired"]
    assert paired["seeds"] == [0, 1] and paired["tasks"] == TASKS
    assert paired["mean"] == pytest.approx(sum(map(sum, d)) / d.size, abs=1e-9)
    # the crossed interval from the two-way mean squares, written out (S = 2 seeds, T tasks)
    s, t = d.shape
    grand, rows, cols = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_seed = t * sum((r - grand) ** 2 for r in rows) / (s - 1)
    ms_task = s * sum((c - grand) ** 2 for c in cols) / (t - 1)
    ms_res = sum((d[i, j] - rows[i] - cols[j] + grand) ** 2 for i in range(s) for j in range(t)) / ((s - 1) * (t - 1))
    half = t_quantile(1, 0.95) * math.sqrt(max(ms_seed, ms_res) / (s * t) + max(ms_task - ms_res, 0) / (s * t))
    assert paired["interval"]["low"] == pytest.approx(grand - half, abs=1e-9)
    assert paired["interval"]["high"] == pytest.approx(grand + half, abs=1e-9)
    assert (paired["wins"], paired["ties"], paired["losses"]) == (int((d > 0).sum()), int((d == 0).sum()),
                                                                  int((d < 0).sum()))
    for i, row in enumerate(paired["per_seed"]):
        assert row["mean"] == pytest.approx(d[i].mean(), abs=1e-9)


def test_group_means_include_the_unpaired_seed(check):
    groups = check["record"]["comparison"]["groups"]
    assert groups["baseline"]["seeds"] == [0, 1, 2] and groups["candidate"]["seeds"] == [0, 1]
    for group in ("baseline", "candidate"):
        x = [a for r in check["record"][group] for a in r["task_accuracies"]]
        assert groups[group]["mean"] == pytest.approx(100 * sum(x) / len(x), abs=1e-9)
        assert groups[group]["over"] == "seeds and tasks"


def test_equal_time_reading_from_the_runs_own_logs(check):
    record = check["record"]
    rows = record["comparison"]["at_candidates_time"]
    assert [row["seed"] for row in rows] == [0, 1]
    for row in rows:
        folders = {g: next(f for f in check["folders"][g] if f.name.endswith(f"s{row['seed']}")) for g in
                   ("baseline", "candidate")}
        seconds = _metrics(folders["candidate"])[-1]["elapsed"]
        assert row["seconds"] == seconds and row["same_validation_tasks"]
        for group in ("baseline", "candidate"):
            logged = [(r["val_accuracy"], -r["iteration"], r["iteration"]) for r in _metrics(folders[group])
                      if "val_accuracy" in r and r["elapsed"] <= seconds]
            if not logged:
                assert row[group] is None
                continue
            best = max(logged)  # the highest accuracy, earliest on ties
            assert row[group]["iteration"] == best[2]
            assert row[group]["accuracy"] == pytest.approx(100 * best[0], abs=1e-9)


@pytest.mark.parametrize("low, high, faster, verdict", [
    (0.2, 1.0, True, "candidate"), (0.2, 1.0, False, "candidate"),  # accuracy alone: a slower candidate too
    (-1.0, -0.1, True, "baseline"), (-0.5, 0.5, True, "undecided")])
def test_the_verdicts_rule(low, high, faster, verdict, monkeypatch):
    def run(seed, seconds):
        return {"seed": seed, "task_accuracies": [0.5, 0.7, 0.9], "train_seconds": seconds, "val_tasks": 3,
                "validation": [], "iterations": 20, "planned_iterations": 20, "group": "g"}

    monkeypatch.setattr(C, "paired_comparison", lambda a, b: {"crossed": {"low": low, "high": high,
                                                                          "half_width": (high - low) / 2, "dof": 1}})
    result = C.compare([run(0, 10.0), run(1, 10.0)], [run(0, 5.0 if faster else 20.0), run(1, 5.0 if faster else 20.0)])
    assert result["verdict"] == verdict
    cut_short = {**run(1, 10.0), "iterations": 19}  # whatever the interval: no verdict on a run cut short
    result = C.compare([run(0, 10.0), cut_short], [run(0, 5.0), run(1, 5.0)])
    assert result["verdict"] == "unfinished" and "g seed 1 (19 of 20)" in result["why"]


def test_no_common_seed_is_undecided_with_a_reason(check):
    record = check["record"]
    result = C.compare(record["baseline"][2:], record["candidate"][:1])
    assert result["paired"] is None and result["verdict"] == "undecided" and "nothing is paired" in result["why"]
    assert result["groups"]["baseline"]["over"] == "tasks" and result["groups"]["candidate"]["over"] == "tasks"


def test_one_seed_pair_has_an_interval_over_tasks_only(check):
    record = check["record"]
    result = C.compare(record["baseline"][:1], record["candidate"][:1])
    d = [100 * (c - b) for c, b in zip(record["candidate"][0]["task_accuracies"], record["baseline"][0]["task_accuracies"])]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    interval = result["paired"]["interval"]
    assert interval["over"].startswith("tasks only")
    assert result["verdict"] == "undecided" and "one seed pair" in result["why"]  # whatever the interval
    assert interval["high"] - mean == pytest.approx(1.96 * sd / math.sqrt(len(d)), rel=1e-3)


def test_written_record_and_recorded_scores_reused(check, monkeypatch):
    written = json.loads((check["out"] / "recipe_check.json").read_text())
    assert written["comparison"]["verdict"] == check["record"]["comparison"]["verdict"]
    assert written["settings"]["split"] == "val" and written["settings"]["task_seed"] == 1
    assert "\n".join(C.table(written)).count("baseline ") >= 3

    def refuse(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr(C, "score_tasks_of_run", refuse)
    again = C.run(check["out"], baseline=check["folders"]["baseline"], candidate=check["folders"]["candidate"],
                  tasks=TASKS, splits={"val": check["splits"]["val"]})
    assert not any(r["scored_now"] for g in ("baseline", "candidate") for r in again[g])
    assert again["comparison"]["paired"]["mean"] == pytest.approx(check["record"]["comparison"]["paired"]["mean"])
    with pytest.raises(AssertionError, match="scored again"):  # other tasks: scored anew
        C.run(check["out"], baseline=check["folders"]["baseline"], candidate=check["folders"]["candidate"],
              tasks=TASKS, task_seed=2, splits={"val": check["splits"]["val"]})


def test_a_run_recorded_before_the_class_split_existed_is_on_the_standard_split(check, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(check["folders"]["baseline"][0], old)
    recorded = json.loads((old / "config.json").read_text())
    assert recorded["config"].pop("class_split") == "standard"
    (old / "config.json").write_text(json.dumps(recorded))
    record = C.run(tmp_path / "out", baseline=[old], candidate=check["folders"]["candidate"][:1], tasks=TASKS,
                   splits={"val": check["splits"]["val"]})
    assert record["comparison"]["paired"]["seeds"] == [0]
    recorded["config"]["class_split"] = "alphabets"
    (old / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match="class_split"):
        C.run(tmp_path / "out2", baseline=check["folders"]["baseline"][:1], candidate=[old], tasks=TASKS)


def test_runs_on_other_tasks_or_twice_a_seed_are_refused(check, tmp_path):
    from linmaml.benchmarks.train import train

    other = tmp_path / "ways3"
    assert train({**TINY, "ways": 3, "seed": 0}, other, splits=check["splits"], progress=False).status == "done"
    b = check["folders"]["baseline"]
    for kwargs, word in (({"baseline": b, "candidate": [other]}, "ways"),
                         ({"baseline": b[:1], "candidate": [b[0]]}, "both groups"),
                         ({"baseline": [b[0], b[0]], "candidate": [other]}, "same training seed")):
        with pytest.raises(ValueError, match=word):
            C.run(tmp_path / "out", tasks=TASKS, **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, flag", [
    (["--tasks", "1"], "--tasks"),
    (["--task-seed", "0"], "--task-seed"),
    (["--threads", "0"], "--threads"),
    (["--name", "a/b"], "--name"),
    (["--tasks", "many"], "--tasks"),
])
def test_bad_input_one_line_exit_2(check, extra, flag, tmp_path, capsys):
    out = tmp_path / "out"
    f = check["folders"]
    argv = ["--baseline", str(f["baseline"][0]), "--candidate", str(f["candidate"][0]), "--out", str(out), *extra]
    try:
        status = C.main(argv)
    except SystemExit as exit_:  # argparse's own errors (a value that is not a number)
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("recipe_check: error:") and flag in err
    assert not out.exists()


def test_a_folder_without_a_run_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    status = C.main(["--baseline", str(tmp_path / "empty"), "--candidate", str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "--baseline" in err and "best.pt" in err
    assert not out.exists()
