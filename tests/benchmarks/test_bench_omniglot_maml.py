"""analysis/omniglot_maml.py (linmaml.analysis.omniglot_maml): the published-number record of trained
runs, on a tiny run trained here on the real Omniglot. Its accuracy must be linmaml evaluate's on the
same tasks, its training time the run's own log, and its recorded command must rebuild the run's
settings."""
from __future__ import annotations

import json
import shlex

import pytest

from linmaml.analysis.omniglot_maml import command_of, main
from linmaml.benchmarks.config import TrainConfig
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.train import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("omniglot") / "tiny-1shot"
    options = {"layers": 1, "hidden": 4, "iterations": 4, "val_every": 2, "val_tasks": 4, "meta_batch": 2,
               "outer_lr_schedule": "cosine"}
    train(options, out, data_root=data_root, progress=False, threads=1, device="cpu")
    return out


def test_record_scores_the_run_as_evaluate_does(tiny_run, tmp_path, data_root):
    record = main([str(tiny_run), "--out", str(tmp_path), "--tasks", "6", "--data-root", str(data_root)])
    on_disk = json.loads((tmp_path / "omniglot_maml.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert not list(tmp_path.glob("*.png"))  # nothing drawn unless --figure names a file
    (run,) = on_disk["runs"]
    direct = evaluate_checkpoint(tiny_run, tasks=6, data_root=data_root, device="cpu")
    assert run["accuracy"] == pytest.approx(100 * direct["accuracy"]) and run["ci95"] == pytest.approx(100 * direct["ci95"])
    metrics = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert run["train_seconds"] == metrics[-1]["elapsed"] and run["iterations"] == 4
    assert run["published"] == {"accuracy": 98.7, "ci95": 0.4, "source": "Finn et al. 2017"}
    validated = [m for m in metrics if "val_accuracy" in m]  # the log read directly
    assert run["validation"] == [{"iteration": m["iteration"], "elapsed": m["elapsed"],
                                  "accuracy": pytest.approx(100 * m["val_accuracy"]),
                                  "ci95": pytest.approx(100 * m["val_ci95"])} for m in validated]
    assert [p["iteration"] for p in run["validation"]] == [2, 4]
    loads = [m["load_average"] for m in validated]  # logged by training at each validation
    assert all(isinstance(x, float) and x >= 0 for x in loads) and run["load_average_while_training"] == {
        "median": sorted(loads)[0] if len(loads) == 1 else (loads[0] + loads[1]) / 2, "max": max(loads),
        "validations": 2}
    assert {"platform", "cpus", "torch", "load_average_when_scored"} <= set(run["machine"])
    assert "load_average_at_end" not in run["machine"]


def test_figure_is_drawn_only_when_named(tiny_run, tmp_path, data_root, capsys):
    main([str(tiny_run), "--out", str(tmp_path), "--tasks", "2", "--data-root", str(data_root),
          "--figure", "tiny.png"])
    assert [p.name for p in tmp_path.glob("*.png")] == ["tiny.png"] and (tmp_path / "tiny.png").stat().st_size > 0
    for bad in (["--figure", "sub/tiny.png", str(tiny_run)], ["--figure", "tiny.svg", str(tiny_run)],
                ["--figure", "again.png", "--pair", "tiny-1shot", "tiny-1shot"]):
        with pytest.raises(SystemExit) as stopped:
            main(bad + ["--out", str(tmp_path), "--tasks", "2", "--data-root", str(data_root)])
        assert stopped.value.code == 2 and "argument --figure" in capsys.readouterr().err
    assert not (tmp_path / "again.png").exists()


def test_command_rebuilds_the_settings(tiny_run):
    saved = json.loads((tiny_run / "config.json").read_text())["config"]
    words = shlex.split(command_of(saved, "runs/x", threads=1))
    assert words[:2] == ["linmaml", "train"]
    given = {}
    for flag, value in zip(words[2::2], words[3::2]):
        given[flag[2:].replace("-", "_")] = value
    assert given.pop("out") == "runs/x" and given.pop("threads") == "1"
    rebuilt = TrainConfig.from_dict({k: type(getattr(TrainConfig(), k))(v) if getattr(TrainConfig(), k) is not None
                                     else int(v) for k, v in given.items()})
    for name in ("ways", "shots", "layers", "hidden", "iterations", "meta_batch", "outer_lr_schedule", "val_tasks"):
        assert getattr(rebuilt, name) == saved[name], name


def test_runs_are_added_to_the_record_and_seeds_of_a_recipe_are_grouped(tiny_run, tmp_path, data_root):
    """A second call adds to the record (a run of the same name replaced, others kept, --fresh starts
    anew); runs that differ only in the seed form one group whose interval over seeds is the Student-t
    interval computed here by hand."""
    import shutil

    from scipy import stats

    main([str(tiny_run), "--out", str(tmp_path), "--tasks", "6", "--data-root", str(data_root)])
    other = tmp_path / "tiny-1shot-seed7"
    shutil.copytree(tiny_run, other)
    config = json.loads((other / "config.json").read_text())
    config["config"]["seed"] = 7  # the same recipe, another seed (weights shared: the grouping is what is tested)
    (other / "config.json").write_text(json.dumps(config))
    record = main([str(other), str(tiny_run), "--out", str(tmp_path), "--tasks", "6", "--data-root", str(data_root)])
    assert [r["run"] for r in record["runs"]] == ["tiny-1shot", "tiny-1shot-seed7"]
    (group,) = record["groups"]
    assert sorted(group["seeds"]) == [0, 7] and group["runs"] == ["tiny-1shot", "tiny-1shot-seed7"]
    acc = [r["accuracy"] for r in record["runs"]]
    mean = sum(acc) / 2
    sd = (sum((a - mean) ** 2 for a in acc) / 1) ** 0.5
    assert group["mean_accuracy"] == pytest.approx(mean)
    assert group["ci95_over_seeds"] == pytest.approx(stats.t.ppf(0.975, 1) * sd / 2 ** 0.5)
    fresh = main([str(tiny_run), "--out", str(tmp_path), "--tasks", "6", "--data-root", str(data_root), "--fresh"])
    assert [r["run"] for r in fresh["runs"]] == ["tiny-1shot"] and fresh["groups"][0]["ci95_over_seeds"] is None


def test_seed_groups_interval_is_the_student_t_interval_over_seeds():
    from scipy import stats

    from linmaml.analysis.omniglot_maml import seed_groups

    def run(name, seed, acc, shots=1):
        return {"run": name, "ways": 5, "shots": shots, "accuracy": acc, "train_seconds": 60.0 * seed + 60,
                "settings": {"seed": seed, "shots": shots, "algo": "maml", "iterations": 10}, "published": None}

    kept = run("c", 2, 99.1)
    kept["settings"].update(snapshot_every=2000, val_every=500)  # bookkeeping: the same recipe
    groups = seed_groups([run("a", 0, 98.0), run("b", 1, 98.6), kept, run("d", 0, 99.5, shots=5)])
    one, five = groups
    acc = [98.0, 98.6, 99.1]
    mean = sum(acc) / 3
    sd = (sum((a - mean) ** 2 for a in acc) / 2) ** 0.5
    assert one["runs"] == ["a", "b", "c"] and one["mean_accuracy"] == pytest.approx(mean)
    assert one["ci95_over_seeds"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / 3 ** 0.5)
    assert one["mean_train_minutes"] == pytest.approx(2.0)
    assert five["runs"] == ["d"] and five["ci95_over_seeds"] is None
    longer = run("e", 3, 97.0)
    longer["settings"]["iterations"] = 20  # another length: another recipe
    assert [g["runs"] for g in seed_groups([run("a", 0, 98.0), longer])] == [["a"], ["e"]]
