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
    assert on_disk == json.loads(json.dumps(record)) and (tmp_path / "omniglot_maml.png").stat().st_size > 0
    (run,) = on_disk["runs"]
    direct = evaluate_checkpoint(tiny_run, tasks=6, data_root=data_root, device="cpu")
    assert run["accuracy"] == pytest.approx(100 * direct["accuracy"]) and run["ci95"] == pytest.approx(100 * direct["ci95"])
    metrics = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert run["train_seconds"] == metrics[-1]["elapsed"] and run["iterations"] == 4
    assert run["published"] == {"accuracy": 98.7, "ci95": 0.4, "source": "Finn et al. 2017"}
    assert len(run["validation"]["accuracy"]) == 2  # validated at iterations 2 and 4
    assert {"platform", "cpus", "torch"} <= set(run["machine"])


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
