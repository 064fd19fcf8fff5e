"""``linmaml train --benchmark synthetic``: a run in seconds without any dataset (a tiny set made in
memory), that ``linmaml evaluate`` scores, and that the published-number code never mistakes for an
Omniglot run."""
from __future__ import annotations

import json

import numpy as np

from linmaml.analysis.omniglot_maml import published_for
from linmaml.benchmarks.data import load_splits
from linmaml.cli import main


def test_train_and_evaluate_on_synthetic_need_no_data(tmp_path, monkeypatch, capsys):
    # no dataset anywhere: the data root points at a folder that does not exist
    monkeypatch.setenv("LINMAML_DATA", str(tmp_path / "no-data-here"))
    out = tmp_path / "run"
    assert main(["train", "--benchmark", "synthetic", "--iterations", "3", "--meta-batch", "2", "--val-every", "3",
                 "--val-tasks", "5", "--out", str(out), "--threads", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "finished 3 iterations" in printed and str(out) in printed
    assert {"config.json", "metrics.jsonl", "last.pt", "best.pt"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3] and "val_accuracy" in records[-1]
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["config"]["benchmark"] == "synthetic"
    assert recorded["image_shape"] == [1, 12, 12]
    assert not (tmp_path / "no-data-here").exists()  # nothing read from, or written to, a data root

    assert main(["evaluate", str(out), "--tasks", "6", "--json", "--threads", "1", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tasks"] == 6 and 0 <= result["accuracy"] <= 1
    assert result["settings"]["split"] == "test" and result["checkpoint"].endswith("best.pt")

    # the published-number code (README's Omniglot table) has no number for such a run, though it has
    # one for the same settings on Omniglot
    assert published_for(recorded["config"]) is None
    assert published_for({**recorded["config"], "benchmark": "omniglot"}) is not None


def test_synthetic_splits_are_named_and_sized_for_the_usual_tasks():
    splits = load_splits("synthetic")
    assert list(splits) == ["train", "val", "test"]
    assert {name: (s.num_classes, s.examples_per_class, s.image_shape) for name, s in splits.items()} == {
        "train": (20, 20, (1, 12, 12)), "val": (10, 20, (1, 12, 12)), "test": (10, 20, (1, 12, 12))}
    assert [s.name for s in splits.values()] == ["synthetic/train", "synthetic/val", "synthetic/test"]
    # every split holds its own classes, and a second call makes the same set
    ids = [set(s.source_ids.tolist()) for s in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = load_splits("synthetic", ("test",))
    assert np.array_equal(again["test"].pixels, splits["test"].pixels)
