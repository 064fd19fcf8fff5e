"""``linmaml plot``: curves of runs trained here (synthetic data, milliseconds per iteration) and of
hand-written metrics files; what is drawn is compared with the metrics through a direct loop.

The training panels draw a trailing mean over the last ``window`` *finite* values (a skipped step
leaves no hole of a whole window); the validation panel the recorded accuracy ± CI in percent.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.run import read_curves as read_run, read_runs
from linmaml.benchmarks.train import train
from linmaml.cli import main
from linmaml.plots.training import plot_runs

PNG = b"\x89PNG\r\n\x1a\n"


def synthetic_splits():
    rng = np.random.default_rng(0)
    return {name: FewShotSplit("omniglot", name, rng.random((6, 6, 1, 28, 28)).astype(np.float32), np.arange(6),
                               np.zeros(6, np.int64), 10 * k + np.arange(6), tuple(map(str, range(6))))
            for k, name in enumerate(("train", "val"))}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny runs trained here: 'alpha' (12 iterations, validated every 4) and 'beta' (8, every 8)."""
    root = tmp_path_factory.mktemp("runs")
    for name, iterations, every in (("alpha", 12, 4), ("beta", 8, 8)):
        train(dict(ways=3, shots=1, query=2, test_query=2, layers=1, hidden=2, meta_batch=1, iterations=iterations,
                   val_every=every, val_tasks=3), root / name, splits=synthetic_splits(), progress=False)
    return root / "alpha", root / "beta"


def metrics_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def trailing_mean(values, window):
    """Direct loop: mean of the finite values among the last ``window`` (NaN if none)."""
    out = []
    for i in range(len(values)):
        kept = [v for v in values[max(0, i + 1 - window):i + 1] if v is not None and math.isfinite(v)]
        out.append(sum(kept) / len(kept) if kept else math.nan)
    return out


def assert_close(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-12, atol=1e-12)


def test_drawn_curves_equal_the_metrics_of_runs_trained_here(two_runs, tmp_path):
    out = tmp_path / "curves.png"
    drawn = plot_runs(read_runs(two_runs), out, window=3)
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000
    assert list(drawn["runs"]) == ["alpha", "beta"] and drawn["window"] == 3
    for folder in two_runs:
        records, curves = metrics_of(folder), drawn["runs"][folder.name]
        assert curves["x"] == [r["iteration"] for r in records]
        assert_close(curves["loss"], trailing_mean([r["loss"] for r in records], 3))
        assert_close(curves["accuracy"], [100 * v for v in trailing_mean([r["accuracy"] for r in records], 3)])
        validated = [r for r in records if "val_accuracy" in r]
        assert curves["val_x"] == [r["iteration"] for r in validated]
        assert_close(curves["val_accuracy"], [100 * r["val_accuracy"] for r in validated])
        assert_close(curves["val_ci95"], [100 * r["val_ci95"] for r in validated])
    assert len(drawn["runs"]["alpha"]["val_x"]) == 3 and len(drawn["runs"]["beta"]["val_x"]) == 1


def test_time_axis_is_the_recorded_wall_time(two_runs, tmp_path):
    drawn = plot_runs(read_runs(two_runs), tmp_path / "t.svg", x="time", window=1)
    assert drawn["x_label"] == "wall time (s)"  # runs of well under 10 minutes are drawn in seconds
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")
    for folder in two_runs:
        records = metrics_of(folder)
        assert_close(drawn["runs"][folder.name]["x"], [r["elapsed"] for r in records])
        assert_close(drawn["runs"][folder.name]["loss"], [r["loss"] for r in records])  # window 1: the raw values
        assert_close(drawn["runs"][folder.name]["val_x"], [r["elapsed"] for r in records if "val_accuracy" in r])


def test_skipped_steps_torn_lines_and_repeated_iterations(tmp_path):
    """A hand-written metrics file: a non-finite step (null), a repeated iteration (the later record
    wins), a torn last line; and a run of hours is drawn in hours."""
    run = tmp_path / "handmade"
    run.mkdir()
    lines = [{"iteration": 1, "loss": 2.0, "accuracy": 0.2, "elapsed": 3600.0},
             {"iteration": 2, "loss": None, "accuracy": None, "elapsed": 7200.0},
             {"iteration": 3, "loss": 9.0, "accuracy": 0.9, "elapsed": 9000.0},
             {"iteration": 3, "loss": 1.0, "accuracy": 0.4, "elapsed": 10800.0, "val_accuracy": 0.5, "val_ci95": 0.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"iteration": 4, "lo')
    curves = read_run(run)
    assert curves.iteration.tolist() == [1, 2, 3]
    drawn = plot_runs([curves], tmp_path / "h.png", x="time", window=2)
    assert drawn["x_label"] == "wall time (h)"
    got = drawn["runs"]["handmade"]
    assert_close(got["x"], [1.0, 2.0, 3.0])
    assert_close(got["loss"], [2.0, 2.0, 1.0])  # trailing_mean([2, None, 1], 2)
    assert_close(got["accuracy"], [20.0, 20.0, 40.0])
    assert_close(got["val_x"], [3.0])
    assert_close(got["val_accuracy"], [50.0])
    assert_close(got["val_ci95"], [10.0])
    # the validations as the analyses record them: the later record of iteration 3, percent
    assert curves.validations() == [{"iteration": 3, "elapsed": 10800.0, "accuracy": 50.0, "ci95": 10.0}]
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 5, "loss": 1.0, "accuracy": 0.5, "elapsed": 1.5,
                                                   "val_accuracy": 0.25, "val_ci95": None}) + "\n")
    assert read_run(run).validations() == [{"iteration": 5, "elapsed": 1.5, "accuracy": 25.0, "ci95": None}]


def test_cli_writes_the_image_and_names_what_it_drew(two_runs, tmp_path, capsys):
    out = tmp_path / "sub" / "curves.pdf"
    assert main(["plot", *map(str, two_runs), "--out", str(out), "--window", "2"]) == 0
    line = capsys.readouterr().out
    assert out.read_bytes().startswith(b"%PDF")
    assert f"wrote {out} (2 runs: alpha, beta; x: iteration;" in line and "running means of 2 iterations" in line


def test_cli_tells_folders_of_one_name_apart_and_expands_tilde(two_runs, tmp_path, capsys, monkeypatch):
    import shutil

    for parent in ("a", "b"):
        shutil.copytree(two_runs[0], tmp_path / parent / "run")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "~/a/run", str(tmp_path / "b" / "run"), "--out=~/c.png"]) == 0
    assert "2 runs: a/run, b/run" in capsys.readouterr().out
    assert (tmp_path / "c.png").is_file() and not (tmp_path / "~").exists()


@pytest.mark.parametrize("argv, expected", [
    (["plot", "--out", "{tmp}/x.png"], "the following arguments are required: RUN"),
    (["plot", "{tmp}/missing", "--out", "{tmp}/x.png"], "RUN: {tmp}/missing does not exist"),
    (["plot", "{tmp}/file", "--out", "{tmp}/x.png"], "RUN: {tmp}/file is not a folder"),
    (["plot", "{tmp}/empty", "--out", "{tmp}/x.png"], "RUN: {tmp}/empty holds no metrics.jsonl"),
    (["plot", "{tmp}/blank", "--out", "{tmp}/x.png"], "records no iteration yet"),
    (["plot", "{good}", "{tmp}/empty", "--out", "{tmp}/x.png"], "RUN: {tmp}/empty holds no metrics.jsonl"),
    (["plot", "", "--out", "{tmp}/x.png"], "RUN: expected a path, got an empty string"),
    (["plot", "{good}"], "the following arguments are required: --out"),
    (["plot", "{good}", "--out", ""], "--out: expected a path, got an empty string"),
    (["plot", "{good}", "--out", "{tmp}/x.txt"], "--out: expected a file ending in one of"),
    (["plot", "{good}", "--out", "{tmp}"], "is a folder; give a file name"),
    (["plot", "{good}", "--out", "{tmp}/x.png", "--window", "0"], "--window: expected an integer >= 1"),
    (["plot", "{good}", "--out", "{tmp}/x.png", "--window", "w"], "--window: invalid int value"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, expected, two_runs, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "metrics.jsonl").write_text("")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{good}", str(two_runs[0])) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("linmaml plot: error: ") and expected.replace("{tmp}", str(tmp_path)) in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_published_references_are_drawn_beside_the_validation_curves(two_runs, tmp_path, monkeypatch):
    """omniglot_maml.png's reference lines: each published number a dashed line (± its CI band) on the
    validation panel, in its run's colour; analysis.omniglot_maml builds one per published setting."""
    from linmaml.analysis.omniglot_maml import published_references

    pub = {"accuracy": 98.7, "ci95": 0.4, "source": "Finn et al. 2017"}
    results = [{"run": "alpha", "ways": 5, "shots": 1, "published": pub},
               {"run": "beta", "ways": 5, "shots": 1, "published": pub},  # same setting: one line
               {"run": "gamma", "ways": 3, "shots": 1, "published": None}]
    references = published_references(results)
    assert [(r["run"], r["accuracy"], r["ci95"]) for r in references] == [("alpha", 98.7, 0.4)]
    assert references[0]["label"].startswith("published 5-way 1-shot: 98.7 ± 0.4 %")
    from linmaml.plots import figure

    saved = {}
    save = figure.save_figure
    monkeypatch.setattr(figure, "save_figure", lambda fig, path, **kw: (saved.setdefault("fig", fig), save(fig, path)))
    drawn = plot_runs(read_runs(two_runs), tmp_path / "c.png", references=references)
    ax_val = saved["fig"].axes[2]
    (line,) = [ln for ln in ax_val.get_lines() if ln.get_label() == references[0]["label"]]
    assert list(line.get_ydata()) == [98.7, 98.7] and line.get_color() == "C0"  # alpha's colour
    assert drawn["references"] == [{"label": references[0]["label"], "accuracy": 98.7, "ci95": 0.4, "run": "alpha"}]
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
