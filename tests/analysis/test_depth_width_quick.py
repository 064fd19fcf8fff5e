"""The depth × width sweep in quick mode on the real Omniglot: the JSON's cells, the accuracy before
adaptation against a direct forward pass, no retraining of complete cells, exact resumption of an
interrupted one, refusal of folders with other settings, and the parallel path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from linmaml.analysis import depth_width as D

KEYS = {"algo", "blocks", "filters", "accuracy", "ci95", "accuracy_before_adaptation", "meta_parameters",
        "train_seconds"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_root):
    base = tmp_path_factory.mktemp("depth_width")
    runs, out = base / "runs", base / "out"
    # One cell "interrupted" after 2 of its 4 iterations: the sweep must resume it, not restart it.
    from linmaml.benchmarks.train import train

    partial = runs / D.cell_name("maml", 2, 8)
    train({**D.options(D.QUICK, "maml", 2, 8), "iterations": 2}, partial, data_root=data_root, progress=False)
    first_two = (partial / "metrics.jsonl").read_text().splitlines()
    record = D.run(out, quick=True, runs=runs, data_root=data_root, command="test")
    return record, runs, out, data_root, first_two


def test_quick_sweep_writes_every_cell(quick):
    record, runs, out, _, _ = quick
    assert sorted(p.name for p in out.iterdir()) == ["depth_width.json", "depth_width.png"]
    saved = json.loads((out / "depth_width.json").read_text())
    assert saved["cells"] == record["cells"] and saved["command"] == "test" and saved["machine"]["cpus"] >= 1
    grid = [(c["algo"], c["blocks"], c["filters"]) for c in saved["cells"]]
    assert grid == [(a, b, f) for a in ("maml", "anil") for b in (1, 2) for f in (4, 8)]
    for cell in saved["cells"]:
        assert KEYS <= set(cell)
        assert 0 <= cell["accuracy"] <= 100 and 0 <= cell["accuracy_before_adaptation"] <= 100
        assert cell["iterations"] == D.QUICK["train"]["iterations"] and cell["train_seconds"] > 0
    # Same architecture, same meta-parameter count for MAML and ANIL; the count is the CNN's own.
    counts = {(c["blocks"], c["filters"]): c["meta_parameters"] for c in saved["cells"]}
    assert all(c["meta_parameters"] == counts[(c["blocks"], c["filters"])] for c in saved["cells"])
    f = 8  # 1 block of 8 filters, stride 2: conv 1·8·9 + 8, norm 2·8, head (8·14·14)·5 + 5
    assert counts[(1, f)] == (9 * f + f) + 2 * f + (f * 14 * 14) * 5 + 5


def test_accuracy_before_adaptation_matches_a_direct_forward_pass(quick):
    record, runs, _, root, _ = quick
    from linmaml.benchmarks import checkpoint, episodes
    from linmaml.benchmarks.data import load_splits
    from linmaml.benchmarks.config import TrainConfig, build_from_config

    cell = next(c for c in record["cells"] if (c["algo"], c["blocks"], c["filters"]) == ("anil", 2, 8))
    payload = checkpoint.load(Path(cell["run"]) / "best.pt")
    config = TrainConfig.from_dict(payload["config"])
    learner = build_from_config(config, tuple(payload["image_shape"]))
    learner.load_state_dict(payload["learner"])
    tasks = episodes.evaluation_tasks(load_splits("omniglot", ("test",), root)["test"], 5, 1, 15,
                                      count=D.QUICK["test_tasks"], seed=0)
    accuracies = []
    with torch.no_grad():
        for task in tasks:
            _, _, xq, yq = task.to_torch()
            accuracies.append(float((learner(xq).argmax(1) == yq).double().mean()))  # ANIL's own forward
    values = 100 * np.asarray(accuracies)
    assert cell["accuracy_before_adaptation"] == pytest.approx(values.mean(), abs=1e-9)
    assert cell["ci95_before_adaptation"] == pytest.approx(1.959963984540054 * values.std(ddof=1) / np.sqrt(10),
                                                           abs=1e-9)


def test_interrupted_cell_resumed_not_restarted(quick):
    _, runs, _, _, first_two = quick
    lines = (runs / D.cell_name("maml", 2, 8) / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == D.QUICK["train"]["iterations"] and lines[:2] == first_two


def test_complete_cells_are_not_retrained_and_jobs_agree(quick, tmp_path):
    record, runs, _, root, _ = quick
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")}
    again = D.run(tmp_path, quick=True, runs=runs, data_root=root, jobs=2)
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")} == stamps
    assert again["cells"] == record["cells"]


def test_folders_with_other_settings_or_more_iterations_are_refused(quick, tmp_path, capsys):
    _, runs, _, root, _ = quick
    assert D.main(["--quick", "--runs", str(runs), "--out", str(tmp_path), "--iterations", "2",
                   "--data-root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "more than the sweep's 2" in err and err.startswith("fig_depth_width: error:")
    from linmaml.benchmarks.train import train

    other = tmp_path / "runs"
    train({**D.options(D.QUICK, "maml", 1, 4), "iterations": 1, "inner_lr": 0.1}, other / D.cell_name("maml", 1, 4),
          data_root=root, progress=False)
    assert D.main(["--quick", "--runs", str(other), "--out", str(tmp_path / "o"), "--data-root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fig_depth_width: error: inner_lr:") and len(err.splitlines()) == 1
