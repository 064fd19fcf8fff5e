"""linmaml.analysis.omniglot_maml's rows of several algorithms: each run's algorithm, seconds per
iteration, published number of its own algorithm, per-task test accuracies and the paired per-task
differences to a reference run, on two tiny runs (MAML and ProtoNets) trained here on the real
Omniglot.

Checked against computations that do not go through the module: the per-task accuracies against a
plain SGD inner loop on the ConvNet written here and against ``evaluate_checkpoint``'s mean; the
timings against the runs' own ``metrics.jsonl`` read here; the paired differences against numpy on
the recorded per-task accuracies.
"""
from __future__ import annotations

import json
import math
import pathlib
import shlex
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from linmaml.analysis.omniglot_maml import (PUBLISHED_BY_ALGO, command_of, main, paired_differences, published_for,
                                            recorded_pairs)
from linmaml.benchmarks.config import TrainConfig
from linmaml.benchmarks.settings import declared
from linmaml.cli import build_parser
from linmaml.cli.train import read_config
from linmaml.errors import ArgumentError
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.train import train

TASKS = 6
TINY = {"layers": 1, "hidden": 4, "iterations": 4, "val_every": 2, "val_tasks": 4, "meta_batch": 2,
        "outer_lr_schedule": "cosine"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_root):
    base = tmp_path_factory.mktemp("omniglot-rows")
    maml, proto = base / "tiny-maml", base / "tiny-protonet"
    train(dict(TINY, algo="maml"), maml, data_root=data_root, progress=False, threads=1, device="cpu")
    train(dict(TINY, algo="protonet"), proto, data_root=data_root, progress=False, threads=1, device="cpu")
    return maml, proto


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _direct_task_accuracies(run, data_root, count):
    """A plain SGD inner loop on the run's ConvNet, one task at a time (not the engine)."""
    from torch.func import functional_call

    from linmaml.benchmarks import checkpoint, episodes
    from linmaml.benchmarks.data import load_splits
    from linmaml.benchmarks.models import ConvNet

    payload = checkpoint.load(run / "best.pt")
    config = payload["config"]
    net = ConvNet(1, 5, blocks=config["layers"], filters=config["hidden"], image_size=28, pool=config["pool"])
    net.load_state_dict({k[len("model."):]: v for k, v in payload["learner"].items() if k.startswith("model.")})
    test = load_splits("omniglot", ("test",), data_root)["test"]
    out = []
    for task in episodes.evaluation_tasks(test, 5, 1, 15, count=count, seed=0):
        xs, ys, xq, yq = task.to_torch("cpu", torch.float32)
        params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
        for _ in range(config["test_steps"]):
            loss = F.cross_entropy(functional_call(net, params, (xs,)), ys)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {n: (p - config["inner_lr"] * g).detach().requires_grad_(True)
                      for (n, p), g in zip(params.items(), grads)}
        with torch.no_grad():
            out.append(float((functional_call(net, params, (xq,)).argmax(1) == yq).double().mean()))
    return np.array(out)


@pytest.fixture(scope="module")
def recorded(two_runs, tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("omniglot-rows-out")
    maml, proto = two_runs
    record = main([str(maml), str(proto), "--out", str(out), "--tasks", str(TASKS), "--data-root", str(data_root),
                   "--figure", "rows.png", "--reference", maml.name])
    return out, record


def test_rows_carry_algorithm_timings_and_their_own_published_number(two_runs, recorded):
    out, record = recorded
    on_disk = json.loads((out / "omniglot_maml.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert (out / "rows.png").stat().st_size > 0 and not (out / "omniglot_maml.png").exists()
    rows = {r["run"]: r for r in on_disk["runs"]}
    for run, algo, source in ((two_runs[0], "maml", "Finn et al. 2017"),
                              (two_runs[1], "protonet", "Snell et al. 2017 (60-way training episodes)")):
        row = rows[run.name]
        metrics = _metrics(run)
        assert row["algo"] == algo and row["settings"]["algo"] == algo
        assert row["iterations"] == 4 and row["train_seconds"] == metrics[-1]["elapsed"]
        assert row["seconds_per_iteration"] == pytest.approx(metrics[-1]["elapsed"] / 4)
        # iterations 1 and 3 did not validate (val_every 2): their own wall times, by hand
        steps = [metrics[0]["elapsed"], metrics[2]["elapsed"] - metrics[1]["elapsed"]]
        assert row["median_step_seconds"] == pytest.approx(statistics.median(steps))
        assert row["published"]["source"] == source
        assert row["published"]["accuracy"] == PUBLISHED_BY_ALGO[(algo, 5, 1)]["accuracy"]
        assert f"--algo {algo}" in row["command"]
    assert rows[two_runs[1].name]["published"]["ci95"] is None  # Snell et al. give no interval
    assert rows[two_runs[1].name]["ci_reaches_published_interval"] == (
        rows[two_runs[1].name]["accuracy"] + rows[two_runs[1].name]["ci95"] >= 98.8)


def test_task_accuracies_are_a_direct_inner_loop_and_evaluates_mean(two_runs, recorded, data_root):
    _, record = recorded
    rows = {r["run"]: r for r in record["runs"]}
    maml, proto = two_runs
    mine = np.array(rows[maml.name]["task_accuracies"])
    direct = _direct_task_accuracies(maml, data_root, TASKS)
    assert mine.shape == (TASKS,)
    # float32 sums in another order may flip one near-tied prediction of a task's 75 queries
    assert np.max(np.abs(mine - direct)) <= 1 / 75 + 1e-12
    for run in two_runs:
        row = rows[run.name]
        scored = evaluate_checkpoint(run, tasks=TASKS, data_root=data_root, device="cpu")
        assert 100 * np.mean(row["task_accuracies"]) == pytest.approx(row["accuracy"])
        assert row["accuracy"] == pytest.approx(100 * scored["accuracy"])
        assert row["ci95"] == pytest.approx(100 * scored["ci95"])
        assert row["tasks"] == TASKS and row["task_seed"] == 0 and row["test_query"] == 15


def test_paired_differences_are_the_per_task_differences(two_runs, recorded, data_root):
    out, record = recorded
    maml, proto = two_runs
    rows = {r["run"]: r for r in record["runs"]}
    diff = 100 * (np.array(rows[proto.name]["task_accuracies"]) - np.array(rows[maml.name]["task_accuracies"]))
    paired = record["paired"]
    assert paired["reference"] == maml.name
    (row,) = paired["runs"]
    assert row["run"] == proto.name and row["algo"] == "protonet" and row["tasks"] == TASKS
    assert row["mean"] == pytest.approx(diff.mean(), abs=1e-12)
    assert row["ci95"] == pytest.approx(1.96 * diff.std(ddof=1) / math.sqrt(TASKS), abs=1e-12)
    assert (row["wins"], row["ties"], row["losses"]) == (
        int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum()))

    # A later call without --reference keeps the reference; an old record without per-task
    # accuracies stays in the record and out of the pairing.
    on_disk = json.loads((out / "omniglot_maml.json").read_text())
    old = dict(on_disk["runs"][1], run="old-run-without-tasks")
    del old["task_accuracies"]
    on_disk["runs"].append(old)
    (out / "omniglot_maml.json").write_text(json.dumps(on_disk))
    again = main([str(proto), "--out", str(out), "--tasks", str(TASKS), "--data-root", str(data_root),
                  "--figure", "rows.png"])
    assert [r["run"] for r in again["runs"]] == [maml.name, proto.name, "old-run-without-tasks"]
    assert again["paired"]["reference"] == maml.name
    assert [r["run"] for r in again["paired"]["runs"]] == [proto.name]
    assert again["paired"]["runs"][0]["mean"] == pytest.approx(row["mean"], abs=1e-12)


def test_pair_records_one_comparison_and_re_pairing_alone_scores_and_draws_nothing(two_runs, tmp_path,
                                                                                   data_root, capsys):
    maml, proto = two_runs
    out = tmp_path / "out"
    main([str(maml), str(proto), "--out", str(out), "--tasks", str(TASKS), "--data-root", str(data_root),
          "--figure", "rows.png"])
    figure = (out / "rows.png").read_bytes()
    # Re-pairing the record alone: no run folder, nothing scored, the figure untouched.
    record = main(["--pair", maml.name, proto.name, "--out", str(out)])
    rows = {r["run"]: r for r in record["runs"]}
    diff = 100 * (np.array(rows[maml.name]["task_accuracies"]) - np.array(rows[proto.name]["task_accuracies"]))
    (pair,) = record["pairs"]
    assert (pair["run"], pair["reference"], pair["tasks"]) == (maml.name, proto.name, TASKS)
    assert pair["mean"] == pytest.approx(diff.mean(), abs=1e-12)
    assert pair["ci95"] == pytest.approx(1.96 * diff.std(ddof=1) / math.sqrt(TASKS), abs=1e-12)
    assert (pair["wins"], pair["ties"], pair["losses"]) == (
        int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum()))
    assert (out / "rows.png").read_bytes() == figure
    assert json.loads((out / "omniglot_maml.json").read_text())["pairs"] == record["pairs"]
    # A later call keeps the pair (recomputed from the record), and a pair naming no recorded run
    # exits 2 with the record unchanged.
    again = main([str(proto), "--out", str(out), "--tasks", str(TASKS), "--data-root", str(data_root),
                  "--figure", "rows.png"])
    assert again["pairs"][0]["mean"] == pytest.approx(pair["mean"], abs=1e-12)
    before = (out / "omniglot_maml.json").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--pair", "no-such-run", maml.name, "--out", str(out)])
    assert exit_.value.code == 2 and "argument --pair" in capsys.readouterr().err
    assert (out / "omniglot_maml.json").read_bytes() == before
    # A recorded pair whose reference was since scored on other tasks (here: another query size) is
    # dropped with a line saying so, not a reason to refuse every later call.
    on_disk = json.loads(before)
    for run in on_disk["runs"]:
        if run["run"] == proto.name:
            run["test_query"] = 5
    (out / "omniglot_maml.json").write_text(json.dumps(on_disk))
    capsys.readouterr()
    record = main([str(maml), "--out", str(out), "--tasks", str(TASKS), "--data-root", str(data_root),
                   "--figure", "rows.png"])
    assert record["pairs"] == []
    assert f"dropped the recorded pair {maml.name} - {proto.name}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["--figure", "../x.png"], "argument --figure"),
    (["--figure", "x.pdf"], "argument --figure"),
    (["--reference", "no-such-run"], "argument --reference"),
])
def test_bad_figure_or_reference_exits_2_before_scoring(two_runs, tmp_path, data_root, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main([str(two_runs[0]), "--out", str(tmp_path / "out"), "--data-root", str(data_root), *argv])
    assert exit_.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_published_numbers_and_commands_of_the_estimators():
    assert published_for({"ways": 5, "shots": 1, "algo": "reptile"})["accuracy"] == 97.68
    assert published_for({"ways": 5, "shots": 1, "algo": "imaml"})["accuracy"] == 99.16
    assert published_for({"ways": 5, "shots": 1, "algo": "r2d2"})["accuracy"] == 98.6
    assert published_for({"ways": 5, "shots": 1, "algo": "maml", "transform": "kfo"}) is None
    assert published_for({"ways": 20, "shots": 1, "algo": "maml"})["accuracy"] == 95.8  # Finn et al.'s Table 1
    assert published_for({"ways": 20, "shots": 5, "algo": "maml"})["accuracy"] == 98.9
    assert published_for({"ways": 20, "shots": 1, "algo": "anil"}) is None
    # the cells found later: Nichol et al.'s first-order MAML at 20-way, Reptile at 5-way 5-shot, iMAML's
    # gradient-descent row (Rajeswaran et al.'s Table 2) and ProtoNets (no ± printed) at every setting
    assert published_for({"ways": 20, "shots": 1, "algo": "fomaml"})["accuracy"] == 89.4
    assert published_for({"ways": 20, "shots": 5, "algo": "fomaml"})["ci95"] == 0.1
    assert published_for({"ways": 5, "shots": 5, "algo": "reptile"})["accuracy"] == 99.48
    for shape, accuracy in {(5, 1): 99.16, (5, 5): 99.67, (20, 1): 94.46, (20, 5): 98.69}.items():
        imaml = published_for({"ways": shape[0], "shots": shape[1], "algo": "imaml"})
        assert imaml["accuracy"] == accuracy and "GD" in imaml["source"]  # not the Hessian-free row
    protonet = published_for({"ways": 20, "shots": 1, "algo": "protonet"})
    assert protonet["accuracy"] == 96.0 and protonet["ci95"] is None
    assert published_for({"ways": 20, "shots": 5, "algo": "protonet"})["accuracy"] == 98.9
    assert published_for({"ways": 5, "shots": 5, "algo": "r2d2"}) is None  # not confirmed from a source
    # the published numbers are on the random character split, not Lake et al.'s alphabet split
    assert published_for({"ways": 5, "shots": 1, "algo": "maml", "class_split": "alphabets"}) is None
    # Omniglot's numbers only: a CIFAR-FS or mini-ImageNet run of the same shape has none here
    assert published_for({"ways": 5, "shots": 1, "algo": "maml", "benchmark": "omniglot"})["accuracy"] == 98.7
    for benchmark in ("cifar-fs", "mini-imagenet", "folder"):
        assert published_for({"ways": 5, "shots": 1, "algo": "maml", "benchmark": benchmark}) is None
    from linmaml.benchmarks.config import TrainConfig

    config = dict(TrainConfig().to_dict(), algo="imaml", steps=5, test_steps=5, imaml_lambda=0.5)
    words = command_of(config, "runs/i", threads=1).split()
    assert words[words.index("--imaml-lambda") + 1] == "0.5" and "--cg-steps" not in words  # default 5
    assert words[words.index("--algo") + 1] == "imaml" and words[words.index("--steps") + 1] == "5"


def test_the_command_of_a_run_recorded_before_a_setting_existed_leaves_the_setting_out():
    from linmaml.analysis.omniglot_maml import command_of
    from linmaml.benchmarks.settings import TrainConfig

    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("truncate", "cg_steps")}
    old["inner_lr"] = 0.3
    command = command_of(old, "runs/x", 1)
    assert command.startswith("linmaml train --benchmark omniglot --ways 5 --shots 1 --algo maml")
    assert "--inner-lr 0.3" in command and "--truncate" not in command and command.endswith("--threads 1")


def test_recorded_pairs_against_a_direct_loop_and_a_run_paired_with_itself_refused():
    """recorded_pairs on hand-made records: the mean difference, its 1.96·s/√n and the counts written
    out here; a pair repeated is kept once; a run paired with itself, or with a run scored on other
    tasks, is refused naming --pair."""
    common = {"ways": 5, "shots": 1, "tasks": 4, "task_seed": 0, "test_query": 15}
    runs = [{**common, "run": "a", "task_accuracies": [0.9, 0.8, 1.0, 0.7]},
            {**common, "run": "b", "task_accuracies": [0.8, 0.8, 0.9, 0.9]},
            {**common, "run": "c", "task_seed": 1, "task_accuracies": [0.5, 0.5, 0.5, 0.5]}]
    (row,) = recorded_pairs(runs, [("a", "b"), ("a", "b")])
    diff = [10.0, 0.0, 10.0, -20.0]  # points, a − b per task
    mean = sum(diff) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diff) / 3)
    assert (row["run"], row["reference"], row["tasks"]) == ("a", "b", 4)
    assert row["mean"] == pytest.approx(mean, abs=1e-12) and row["ci95"] == pytest.approx(1.96 * sd / 2, abs=1e-12)
    assert (row["wins"], row["ties"], row["losses"]) == (2, 1, 1)
    for pair in (("a", "a"), ("c", "a")):
        with pytest.raises(ArgumentError) as caught:
            recorded_pairs(runs, [pair])
        assert caught.value.argument == "pair"
    with pytest.raises(ArgumentError, match="itself"):
        recorded_pairs(runs, [("a", "a")])


def test_runs_on_other_test_characters_are_not_paired():
    """Runs trained on Lake et al.'s alphabet split are scored on the evaluation alphabets' characters,
    other tasks than the standard split's even with the same task seed and count; a CIFAR-FS run is
    scored on other images. Neither is paired with a standard Omniglot run; two alphabet-split runs
    are, and a record without ``settings`` (older than the split) counts as the standard split."""
    common = {"ways": 5, "shots": 1, "tasks": 3, "task_seed": 0, "test_query": 15}
    runs = [{**common, "run": "standard", "task_accuracies": [0.9, 0.8, 1.0]},
            {**common, "run": "old", "task_accuracies": [0.8, 0.8, 1.0]},
            {**common, "run": "alpha", "settings": {"class_split": "alphabets"}, "task_accuracies": [0.7, 0.6, 0.8]},
            {**common, "run": "alpha2", "settings": {"benchmark": "omniglot", "class_split": "alphabets"},
             "task_accuracies": [0.6, 0.6, 0.8]},
            {**common, "run": "cifar", "settings": {"benchmark": "cifar-fs"}, "task_accuracies": [0.5, 0.5, 0.5]}]
    runs[0]["settings"] = {"benchmark": "omniglot", "class_split": "standard"}
    assert [r["run"] for r in paired_differences(runs, "standard")["runs"]] == ["old"]
    assert [r["run"] for r in paired_differences(runs, "alpha")["runs"]] == ["alpha2"]
    assert paired_differences(runs, "cifar")["runs"] == []
    with pytest.raises(ArgumentError, match="same tasks"):
        recorded_pairs(runs, [("alpha", "standard")])


@pytest.mark.parametrize("file", sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.json")),
                         ids=lambda f: f.name)
def test_the_command_of_every_shipped_recipe_gives_back_its_settings_through_the_train_parser(file):
    """A recorded command is what a user reruns: parsed by ``linmaml train``'s own parser, it must give
    every setting of the run, the recipe options (train shots, inner batches, outer SGD, the iMAML
    solver, the class split, MAML++'s options) included — not only a list of common ones."""
    settings = read_config(str(file), set(declared()))
    settings["class_split"] = "alphabets"
    if settings.get("algo", "maml") == "maml":  # MAML++'s options apply to MAML's inner loop
        settings.update(msl_iterations=7, first_order_iterations=3, bn_per_step=True,
                        steps=max(2, settings.get("steps", 1)))
    config = TrainConfig.from_dict(settings).to_dict()
    words = shlex.split(command_of(config, "runs/x y", threads=1))
    assert words[:2] == ["linmaml", "train"]
    args = build_parser().parse_args(words[1:])
    given = {name: getattr(args, name) for name in declared() if getattr(args, name, None) is not None}
    rebuilt = TrainConfig.from_dict(given).to_dict()
    assert rebuilt == config
    assert args.out == "runs/x y" and args.threads == 1


def test_a_false_boolean_and_an_unset_optional_are_left_out_of_the_command():
    config = TrainConfig().to_dict()
    words = command_of(config, "runs/x", threads=None).split()
    assert "--bn-per-step" not in words and "--train-shots" not in words and "--threads" not in words
    assert words == ["linmaml", "train", "--benchmark", "omniglot", "--ways", "5", "--shots", "1", "--algo", "maml",
                     "--out", "runs/x"]


@pytest.mark.parametrize("given", [
    dict(benchmark="cifar-fs", hidden=64, pool="stride"),      # Omniglot's ConvNet on CIFAR-FS
    dict(benchmark="mini-imagenet", layers=4, hidden=64),       # 64 filters, max-pooling (mini-ImageNet's own)
    dict(benchmark="cifar-fs"),                                 # CIFAR-FS's own 32 filters and max-pooling
    dict(transform="kfo", steps=1, test_steps=3),               # 3 test steps, not a transform run's default of 1
    dict(transform="rates", steps=5, inner_lr=0.1, test_steps=5),
])
def test_the_command_gives_back_settings_whose_default_depends_on_the_run(given):
    """Leaving out a setting equal to Omniglot's plain-MAML default is wrong where the run's own default
    differs (the ConvNet's width and down-sampling follow the benchmark; a learned transform's test steps
    are its training steps): the command, parsed by ``linmaml train``'s parser, gives back every setting."""
    config = TrainConfig.from_dict(given).to_dict()
    words = shlex.split(command_of(config, "runs/x", threads=None))
    args = build_parser().parse_args(words[1:])
    rebuilt = TrainConfig.from_dict({name: getattr(args, name) for name in declared()
                                     if getattr(args, name, None) is not None}).to_dict()
    assert rebuilt == config
