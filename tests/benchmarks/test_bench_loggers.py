"""Loggers of train(on_iteration=...): the CSV file read back with the csv module equals metrics.jsonl
record for record (also across a resume); TensorBoard scalars through a recording writer, through the
real package when it is installed, and the one-line message naming linmaml[tensorboard] when not."""
import csv
import json
import os
import subprocess
import sys

import pytest

from linmaml._extras import MissingExtraError
from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks.loggers import CSVLogger, TensorBoardLogger, combine, from_spec
from linmaml.benchmarks.train import train
from linmaml.cli import main
from linmaml.errors import ArgumentError

TINY = dict(ways=3, shots=1, query=2, test_query=3, layers=1, hidden=4, meta_batch=3, iterations=6, val_every=3,
            val_tasks=4, checkpoint_every=2, seed=5, outer_lr_schedule="cosine")


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _rows(path):
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return reader.fieldnames, list(reader)


def _assert_rows_equal_records(rows, records):
    assert len(rows) == len(records)
    for row, record in zip(rows, records):
        for key, value in row.items():
            if key not in record or record[key] is None:
                assert value == "", (key, value)
            else:  # json.loads of the cell gives the very value (floats bit for bit)
                assert json.loads(value) == record[key] and type(json.loads(value)) is type(record[key]), key
        assert set(record) <= set(row)


def test_csv_rows_equal_the_metrics_jsonl_records(tmp_path):
    seen = []
    with CSVLogger(tmp_path / "logs" / "metrics.csv") as log:
        train(TINY, tmp_path / "run", splits=synthetic_splits(), progress=False, device="cpu",
              on_iteration=combine(log, seen.append))
    records = _records(tmp_path / "run")
    header, rows = _rows(tmp_path / "logs" / "metrics.csv")
    # validation columns appear at iteration 3: the header is widened, earlier rows keep empty cells
    assert {"val_accuracy", "val_ci95", "val_loss", "outer_lr", "elapsed"} <= set(header)
    assert header[0] == "iteration"
    _assert_rows_equal_records(rows, records)
    assert seen == records  # the hook gets exactly the records written, in order, once each
    assert [r["iteration"] for r in records] == list(range(1, 7))
    assert [("val_accuracy" in r) for r in records] == [False, False, True, False, False, True]


def test_csv_continues_across_a_resume_dropping_rows_the_run_repeats(tmp_path):
    run, path = tmp_path / "run", tmp_path / "m.csv"
    with CSVLogger(path) as log:
        train({**TINY, "iterations": 4, "outer_lr_schedule": "constant"}, run, splits=synthetic_splits(), progress=False, device="cpu", on_iteration=log)
    # a row logged after the last checkpoint (a kill between the two): the resumed run repeats iteration 5
    header, rows = _rows(path)
    with open(path, "a", newline="") as file:
        csv.DictWriter(file, header, lineterminator="\n").writerow({"iteration": "5", "loss": "123.0"})
    with CSVLogger(path, append=True) as log:
        train({"iterations": 6}, run, resume=True, splits=synthetic_splits(), progress=False, device="cpu",
              on_iteration=log)
    _, rows = _rows(path)
    _assert_rows_equal_records(rows, _records(run))
    assert [row["iteration"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    # without append, an existing file is replaced
    with CSVLogger(path) as log:
        log({"iteration": 1, "loss": 0.5})
    assert path.read_text() == "iteration,loss\n1,0.5\n"


class Recorder:
    def __init__(self):
        self.calls, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))

    def close(self):
        self.closed = True


def test_tensorboard_logger_writes_every_number_of_the_record():
    writer = Recorder()
    with TensorBoardLogger("unused", writer=writer) as log:
        log({"iteration": 3, "loss": 0.25, "accuracy": None, "skipped": 0, "step_skipped": False,
             "msl_weights": [0.2, 0.8], "val_accuracy": 0.5})
    assert writer.calls == [("loss", 0.25, 3), ("skipped", 0.0, 3), ("step_skipped", 0.0, 3),
                            ("msl_weights/0", 0.2, 3), ("msl_weights/1", 0.8, 3), ("val_accuracy", 0.5, 3)]
    assert writer.closed


def test_tensorboard_logger_with_the_real_package(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed here (the extra linmaml[tensorboard]; "
                                              "make installs it with [all])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLogger(tmp_path / "tb") as log:
        train(TINY, tmp_path / "run", splits=synthetic_splits(), progress=False, device="cpu", on_iteration=log)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    records = _records(tmp_path / "run")
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [r["iteration"] for r in records]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)  # stored as float32
    assert [e.step for e in events.Scalars("val_accuracy")] == [3, 6]


def test_missing_tensorboard_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what Python does for a package not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'linmaml\[tensorboard\]'") as caught:
        TensorBoardLogger("tb")
    assert caught.value.extra == "tensorboard"


def test_cli_log_without_tensorboard_is_one_line_naming_the_extra(tmp_path):
    code = ("import sys\nsys.modules['tensorboard'] = None\nfrom linmaml.cli import main\n"
            "raise SystemExit(main(sys.argv[1:]))\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", code, "train", "--out", str(out), "--log", f"tensorboard:{tmp_path}/tb",
                           "--quiet"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "linmaml[tensorboard]" in lines[0] and "Traceback" not in done.stderr
    assert not out.exists() and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("spec", ["csv", "json:x.json", "csv:", "tensorboard"])
def test_bad_log_specs_are_refused(spec, tmp_path, capsys):
    with pytest.raises(ArgumentError, match=r"^log: expected csv:PATH or tensorboard:DIR"):
        from_spec(spec)
    assert main(["train", "--out", str(tmp_path / "run"), "--log", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--log: expected csv:PATH or tensorboard:DIR" in err
    assert not (tmp_path / "run").exists()


def test_cli_train_log_csv_equals_metrics_jsonl(tmp_path, data_root):
    out, table = tmp_path / "run", tmp_path / "metrics.csv"
    assert main(["train", "--out", str(out), "--data-root", str(data_root), "--iterations", "3", "--val-every", "2",
                 "--layers", "1", "--hidden", "4", "--meta-batch", "2", "--query", "3", "--val-tasks", "3",
                 "--threads", "1", "--quiet", "--log", f"csv:{table}"]) == 0
    _, rows = _rows(table)
    _assert_rows_equal_records(rows, _records(out))
    assert "log" not in json.loads((out / "config.json").read_text())["config"]  # not a run setting
