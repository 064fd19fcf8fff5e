"""``linmaml analyze`` end to end: a 60-iteration run trained here on the real Omniglot, --json, --out,
the "all layers adapt" accuracy against ``linmaml evaluate`` on the same tasks, and bad run folders
(exit 2, one line)."""
from __future__ import annotations

import json

import pytest

from linmaml.cli import main


@pytest.fixture(scope="module")
def run60(tmp_path_factory, data_root):
    """A 60-iteration MAML run (2 blocks of 8 filters) on the real Omniglot."""
    from linmaml.benchmarks.train import train

    out = tmp_path_factory.mktemp("analyze") / "run"
    result = train({"layers": 2, "hidden": 8, "iterations": 60, "val_every": 30, "val_tasks": 10,
                    "meta_batch": 8}, out, data_root=data_root, progress=False, threads=1)
    assert result.status == "done"
    return out, data_root


def test_analyze_json_end_to_end(run60, capsys, tmp_path):
    run, root = run60
    figures = tmp_path / "fig"
    status = main(["analyze", str(run), "--tasks", "20", "--json", "--threads", "1", "--data-root", str(root),
                   "--spectrum-tasks", "3", "--out", str(figures)])
    captured = capsys.readouterr()
    assert status == 0
    result = json.loads(captured.out)  # exactly one JSON object on stdout
    assert "analyze: 20/20 tasks" in captured.err  # progress on stderr (an ETA only once measured)
    names = [row["name"] for row in result["layers"]]
    assert names[0] == "features.block0.conv.weight" and names[-1] == "head.bias"
    for row in result["layers"]:
        assert {"name", "relative_update", "cka"} <= set(row)
        assert row["cka"] is None or 0.0 <= row["cka"] <= 1.0 + 1e-9
    head = next(row for row in result["layers"] if row["name"] == "head.weight")
    assert head["relative_update"] > 0
    labels = [row["label"] for row in result["ablation"]]
    assert labels == ["all", "head", "all but head", "features.block0", "features.block1", "none"]
    for row in result["ablation"]:
        assert {"adapted", "accuracy", "ci95"} <= set(row) and 0 <= row["accuracy"] <= 100 and row["ci95"] >= 0
    assert len(result["preconditioner"]["eigenvalues"]) == 25 and result["preconditioner"]["tasks"] == 3
    assert sorted(p.name for p in figures.iterdir()) == ["analyze.json", "analyze.png"]
    assert json.loads((figures / "analyze.json").read_text())["ablation"] == result["ablation"]

    # "all layers adapt" is what linmaml evaluate scores (its own loop), on the same 20 tasks.
    from linmaml.benchmarks.evaluate import evaluate_checkpoint

    reference = evaluate_checkpoint(run, tasks=20, data_root=root)
    assert result["ablation"][0]["accuracy"] == pytest.approx(100 * reference["accuracy"], abs=1e-6)
    assert result["ablation"][0]["ci95"] == pytest.approx(100 * reference["ci95"], abs=1e-6)


def test_analyze_table(run60, capsys):
    run, root = run60
    assert main(["analyze", str(run / "best.pt"), "--tasks", "4", "--steps", "1", "--spectrum-tasks", "0",
                 "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "head.weight" in out and "all but head" in out and "preconditioner" not in out


def _expect_one_line_error(argv, capsys, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("linmaml analyze: error:")
    for word in words:
        assert word in err
    return err


def test_bad_run_folders_exit_2_with_one_line(tmp_path, capsys):
    _expect_one_line_error(["analyze", str(tmp_path / "missing")], capsys, "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_one_line_error(["analyze", str(empty)], capsys, "no checkpoint")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "best.pt").write_bytes(b"LINMAML-CHECKPOINT 1 sha256=00 bytes=3\nabc")
    _expect_one_line_error(["analyze", str(corrupt)], capsys, "best.pt")
    other = tmp_path / "other.pt"
    other.write_text("not a checkpoint")
    _expect_one_line_error(["analyze", str(other)], capsys, "other.pt")


def test_bad_arguments_exit_2_naming_them(run60, capsys, tmp_path):
    run, _ = run60
    _expect_one_line_error(["analyze", str(run), "--tasks", "1"], capsys, "--tasks")
    _expect_one_line_error(["analyze", str(run), "--steps", "0"], capsys, "--steps")
    blocker = tmp_path / "file"
    blocker.write_text("")
    _expect_one_line_error(["analyze", str(run), "--out", str(blocker)], capsys, "--out")


def test_analyze_feature_reuse_against_evaluate_and_a_nearest_mean_by_hand(run60, capsys):
    """--feature-reuse: its own-adaptation accuracy is linmaml evaluate's on the same tasks (an
    independent loop); the all-but-head freezing row equals the analysis's "head" ablation; NIL's
    cosine accuracy of task 0 equals nearest class means computed here in numpy from the features."""
    import numpy as np
    import torch

    from linmaml.benchmarks.evaluate import evaluate_checkpoint
    from linmaml.benchmarks.feature_reuse import network_of, penultimate_features
    from linmaml.benchmarks.run import Run

    run, root = run60
    assert main(["analyze", str(run), "--tasks", "12", "--json", "--feature-reuse", "--threads", "1",
                 "--data-root", str(root)]) == 0
    report = json.loads(capsys.readouterr().out)
    reference = evaluate_checkpoint(run, tasks=12, data_root=root)
    assert report["own"]["mean"] == pytest.approx(100 * reference["accuracy"], abs=1e-6)
    assert [row["frozen"] for row in report["freezing"]][:2] == [[], ["features.block0"]]
    assert set(report["cka_before_after"]) >= {"features.block0", "head"}
    assert all(0 <= v <= 1 + 1e-9 for v in report["cka_before_after"].values())
    # NIL by hand on the first task
    opened = Run.open(run)
    x_s, y_s, x_q, y_q = opened.tasks("test", count=12, data_root=root)[0].to_torch("cpu", torch.float32)
    network = network_of(opened.learner)
    params = {n: p.detach() for n, p in network.named_parameters()}
    with torch.no_grad():
        f_s = penultimate_features(network, params, x_s).double().numpy()
        f_q = penultimate_features(network, params, x_q).double().numpy()
    means = np.stack([f_s[y_s.numpy() == c].mean(0) for c in range(5)])
    cos = (f_q / np.linalg.norm(f_q, axis=1, keepdims=True)) @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T
    by_hand = float(np.mean(cos.argmax(1) == y_q.numpy()))
    from linmaml.benchmarks.feature_reuse import nil_accuracies

    assert nil_accuracies(opened.learner, [(x_s, y_s, x_q, y_q)], ways=5)["cosine"][0] == by_hand
    assert 0 <= report["nil"]["cosine"]["accuracy"]["mean"] <= 100
    from linmaml.cli.analyze import format_feature_reuse

    text = format_feature_reuse(report)
    assert "layers frozen at test time" in text and "NIL" in text and "features.block0" in text
