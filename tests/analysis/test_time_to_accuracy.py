"""Time to accuracy from run logs: brackets and ratio intervals against values worked out by hand."""
import json

import pytest

from linmaml.analysis import time_to_accuracy as tta
from linmaml.benchmarks.data.fewshot import noise_splits
from linmaml.benchmarks.train import train
from linmaml.errors import ArgumentError


def write_run(folder, validations, val_every=100):
    """A metrics.jsonl with a training record per iteration and validations at the given
    ``(iteration, elapsed, accuracy)`` points (elapsed rising 1 s per iteration otherwise)."""
    folder.mkdir()
    at = {t: (e, a) for t, e, a in validations}
    last = max(at)
    lines = []
    for t in range(1, last + 1):
        record = {"iteration": t, "loss": 1.0, "accuracy": 0.5, "elapsed": float(t)}
        if t in at:
            record.update(elapsed=at[t][0], val_accuracy=at[t][1], val_ci95=0.01)
        lines.append(json.dumps(record))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_brackets_and_ratio_interval_by_hand(tmp_path):
    slow = write_run(tmp_path / "slow", [(100, 100.0, 0.90), (200, 210.0, 0.96), (300, 330.0, 0.975),
                                         (400, 450.0, 0.981)])
    fast = write_run(tmp_path / "fast", [(100, 50.0, 0.95), (200, 100.0, 0.972), (300, 150.0, 0.985)])
    result = tta.compare(slow, fast, thresholds=(0.97, 0.98))
    row97, row98 = result["thresholds"]
    # 0.97: slow reached it between 210 s and 330 s, fast between 50 s and 100 s
    assert row97["seconds"] == {"textbook": (210.0, 330.0), "recipe": (50.0, 100.0)}
    assert row97["ratio_textbook_over_recipe"] == pytest.approx({"ratio": 3.3, "low": 2.1, "high": 6.6})
    # 0.98: slow between 330 s and 450 s, fast between 100 s and 150 s
    assert row98["ratio_textbook_over_recipe"] == pytest.approx({"ratio": 3.0, "low": 2.2, "high": 4.5})
    assert [p["iteration"] for p in result["curves"]["recipe"]] == [100, 200, 300]


def test_a_run_that_never_reaches_the_accuracy_has_no_ratio(tmp_path):
    slow = write_run(tmp_path / "slow", [(100, 100.0, 0.90), (200, 200.0, 0.95)])
    fast = write_run(tmp_path / "fast", [(100, 50.0, 0.99)])
    (row,) = tta.compare(slow, fast, thresholds=(0.97,))["thresholds"]
    assert row["seconds"]["textbook"] is None and row["ratio_textbook_over_recipe"] is None
    assert row["seconds"]["recipe"] == (0.0, 50.0)  # reached by the first validation


def test_bad_input_names_the_argument(tmp_path):
    with pytest.raises(ArgumentError) as caught:
        tta.compare(tmp_path, tmp_path, thresholds=(0.97,))
    assert caught.value.argument == "run"
    run = write_run(tmp_path / "r", [(100, 1.0, 0.5)])
    with pytest.raises(ArgumentError) as caught:
        tta.compare(run, run, thresholds=(97,))
    assert caught.value.argument == "thresholds"


def test_the_command_writes_the_json_and_prints_the_ratio(tmp_path, capsys):
    slow = write_run(tmp_path / "slow", [(100, 100.0, 0.90), (200, 200.0, 0.975)])
    fast = write_run(tmp_path / "fast", [(100, 50.0, 0.975)])
    tta.main([str(slow), str(fast), "--thresholds", "0.97", "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "time_to_accuracy.json").read_text())
    assert saved["thresholds"][0]["ratio_textbook_over_recipe"]["ratio"] == pytest.approx(4.0)
    assert "textbook / recipe 4.00x" in capsys.readouterr().out


def test_the_curve_of_a_real_tiny_run_is_its_logged_validations(tmp_path):
    # validation_curve reads the log through linmaml.benchmarks.run.read_curves; the numbers must be the
    # validations the trainer wrote, read here line by line with json
    out = tmp_path / "run"
    train(dict(ways=3, shots=1, query=2, test_query=2, layers=1, hidden=2, meta_batch=1, iterations=5, val_every=2,
               val_tasks=2), out, splits=noise_splits(("train", "val")), progress=False, threads=1)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    expected = [(r["iteration"], r["elapsed"], r["val_accuracy"]) for r in logged if "val_accuracy" in r]
    assert [t for t, _, _ in expected] == [2, 4, 5]  # every val_every iterations and at the end
    assert tta.validation_curve(out) == expected
