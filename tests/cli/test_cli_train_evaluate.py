"""``linmaml train`` / ``linmaml evaluate``: a real Omniglot run end to end (SIGTERM, resume, evaluate
--json), the run lock, and a table of bad arguments — each one line on stderr, exit status 2."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.train import train
from linmaml.cli import main

TINY = ["--layers", "1", "--hidden", "4", "--meta-batch", "2", "--query", "3", "--val-tasks", "5", "--threads", "1",
        "--quiet"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished tiny run on synthetic 28x28 data (for the argument checks that never read data)."""
    rng = np.random.default_rng(0)
    splits = {name: FewShotSplit("omniglot", name, rng.random((6, 4, 1, 28, 28)).astype(np.float32), np.arange(6),
                                 np.zeros(6, np.int64), 10 * k + np.arange(6), tuple(map(str, range(6))))
              for k, name in enumerate(("train", "val"))}
    out = tmp_path_factory.mktemp("small")
    train(dict(ways=3, shots=1, query=2, test_query=2, layers=1, hidden=2, meta_batch=1, iterations=2, val_every=2,
               val_tasks=2), out, splits=splits, progress=False)
    return out


def _one_line_error(capsys, argv):
    """Run the CLI in-process; return (status, stderr) after checking stderr is one line, no traceback."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse errors exit through parser.exit
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.strip(), err
    return status, err


def test_train_bad_arguments(tmp_path, capsys, small_run):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "out")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    configs = {name: tmp_path / f"{name}.json" for name in ("unknown", "list", "broken", "user", "badvalue", "wrapped")}
    configs["unknown"].write_text(json.dumps({"ways": 3, "wyas": 4}))
    configs["list"].write_text("[1, 2]")
    configs["broken"].write_text("{")
    configs["user"].write_text(json.dumps({"config": {"model": "my.Net", "model_fingerprint": "0" * 16}}))
    configs["badvalue"].write_text(json.dumps({"ways": 1}))
    configs["wrapped"].write_text(json.dumps({"config": {"meta_batch": 0}, "image_shape": [1, 28, 28]}))
    (corrupt / "last.pt").write_bytes(b"LINMAML-CHECKPOINT 1 sha256=00 bytes=3\nabc")
    cases = [
        (["train"], "--out"),
        (["train", "--out", out, "--ways", "x"], "--ways: invalid int value"),
        (["train", "--out", out, "--ways", "1"], "--ways: expected an integer >= 2"),
        (["train", "--out", out, "--shots", "0"], "--shots: "),
        (["train", "--out", out, "--algo", "sgd"], "--algo: invalid choice"),
        (["train", "--out", out, "--transform", "lbfgs"], "--transform: invalid choice"),
        (["train", "--out", out, "--benchmark", "mnist"], "--benchmark: invalid choice"),
        (["train", "--out", out, "--bogus", "1"], "unrecognized arguments: --bogus"),
        (["train", "--out", out, "--meta-batch", "0"], "--meta-batch: expected an integer >= 1"),
        (["train", "--out", out, "--iterations", "-5"], "--iterations: "),
        (["train", "--out", out, "--inner-lr", "nan"], "--inner-lr: expected a finite number"),
        (["train", "--out", out, "--outer-lr", "0"], "--outer-lr: expected a positive number"),
        (["train", "--out", out, "--outer-lr", "inf"], "--outer-lr: expected a finite number"),
        (["train", "--out", out, "--val-tasks", "1"], "--val-tasks: "),
        (["train", "--out", out, "--linnet", "-1"], "--linnet: "),
        (["train", "--out", out, "--linnet", "2", "--linnet-width", "3"], "--linnet-width: "),
        (["train", "--out", out, "--hidden", "0"], "--hidden: "),
        (["train", "--out", out, "--threads", "0"], "--threads: "),
        (["train", "--out", out, "--on-nonfinite", "ignore"], "--on-nonfinite: invalid choice"),
        (["train", "--out", str(a_file)], "is not a folder"),
        (["train", "--out", str(a_file / "sub")], "sub"),
        (["train", "--out", out, "--resume", "--overwrite"], "--resume: cannot be combined with --overwrite"),
        (["train", "--out", out, "--data-root", str(empty)], "lacks the background set"),
        (["train", "--out", out, "--data-root", str(a_file)], "is not a folder"),
        (["train", "--out", str(small_run)], f"error: --out: {small_run} already holds a run"),
        (["train", "--out", str(small_run), "--resume", "--inner-lr", "0.1"], "--inner-lr: the run being resumed used"),
        (["train", "--out", str(small_run), "--resume", "--ways", "4"], "--ways: the run being resumed used 3"),
        (["train", "--out", str(corrupt), "--resume"], "corrupt/last.pt"),
        (["train", "--out", out, "--config", str(tmp_path / "none.json")], "--config: cannot read "),
        (["train", "--out", out, "--config", str(configs["unknown"])], "unknown.json: 'wyas' is not a training setting"),
        (["train", "--out", out, "--config", str(configs["list"])], "list.json must hold a JSON object"),
        (["train", "--out", out, "--config", str(configs["broken"])], "broken.json is not valid JSON"),
        (["train", "--out", out, "--config", str(configs["user"])], "a run on your own model (my.Net)"),
        (["train", "--out", out, "--config", str(configs["badvalue"])], "badvalue.json: ways: expected an integer >= 2"),
        (["train", "--out", out, "--config", str(configs["wrapped"])], "wrapped.json: meta_batch: expected"),
        # the command line overrides the file, and its errors name the flag
        (["train", "--out", out, "--config", str(configs["badvalue"]), "--ways", "0"], "--ways: expected an integer"),
    ]
    if not torch.cuda.is_available():
        cases.append((["train", "--out", out, "--device", "cuda"], "--device: cuda was asked for"))
    for argv, expected in cases:
        status, err = _one_line_error(capsys, argv + ["--quiet"] if argv != ["train"] else argv)
        assert status == 2, (argv, err)
        assert expected in err, (argv, err)
    assert not (tmp_path / "out" / "run.lock").exists()


def test_evaluate_bad_arguments(tmp_path, capsys, small_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt.pt"
    raw = bytearray((small_run / "best.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x10
    corrupt.write_bytes(bytes(raw))
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    good = str(small_run / "best.pt")
    cases = [
        (["evaluate"], "CHECKPOINT"),
        (["evaluate", str(tmp_path / "missing.pt")], "missing.pt does not exist"),
        (["evaluate", str(empty)], "holds no checkpoint (best.pt, last.pt or last.prev.pt)"),
        (["evaluate", str(corrupt)], "corrupt.pt is corrupt (sha256"),
        (["evaluate", str(text)], "notes.txt is not a linmaml checkpoint"),
        (["evaluate", good, "--tasks", "1"], "--tasks: expected an integer >= 2"),
        (["evaluate", good, "--tasks", "many"], "--tasks: invalid int value"),
        (["evaluate", good, "--steps", "-1"], "--steps: "),  # 0 is allowed: before adaptation
        (["evaluate", good, "--query", "0"], "--query: "),
        (["evaluate", good, "--split", "holdout"], "--split: invalid choice"),
        (["evaluate", good, "--data-root", str(empty)], "lacks the background set"),
        (["evaluate", good, "--threads", "-1"], "--threads: "),
        (["evaluate", good, "--verbose"], "unrecognized arguments: --verbose"),
    ]
    for argv, expected in cases:
        status, err = _one_line_error(capsys, argv)
        assert status == 2, (argv, err)
        assert expected in err, (argv, err)


def test_a_bad_argument_in_a_real_process_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "linmaml", "train", "--out", str(tmp_path), "--meta-batch", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "linmaml train: error: --meta-batch: expected an integer >= 1, got 0\n"


_HOLD = """
import sys, time
from linmaml.benchmarks.checkpoint import RunLock
lock = RunLock(sys.argv[1]).acquire()  # keep a reference: the lock lives as long as its object
print("locked", flush=True)
time.sleep(60)
"""


def test_second_run_on_a_locked_folder_refuses_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, err = _one_line_error(capsys, ["train", "--out", str(out), "--quiet"])
        assert status == 2 and f"is in use by another run (pid {holder.pid}" in err and "--overwrite" in err
        # --overwrite takes the lock over; the run then goes on to read the data (here: missing).
        status, err = _one_line_error(capsys, ["train", "--out", str(out), "--overwrite", "--quiet", "--data-root",
                                               str(tmp_path / "nowhere")])
        assert status == 2 and "lacks the background set" in err
    finally:
        holder.kill()
        holder.wait()


def test_real_omniglot_train_sigterm_resume_and_evaluate(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    env = dict(os.environ, LINMAML_DATA=str(data_root))
    proc = subprocess.Popen([sys.executable, "-m", "linmaml", "train", "--out", str(out), "--iterations", "400",
                             "--val-every", "1000", "--checkpoint-every", "1000", *TINY], env=env,
                            stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    # Events, not seconds: wait for two logged iterations however slow a loaded machine is; the
    # guard only ends a child that hangs (DESIGN.md: tests bound events, not seconds).
    deadline = time.monotonic() + 900
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "hang guard: no iteration logged in 900 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=900) == 143
    assert "stopped by SIGTERM" in proc.stderr.read()
    stopped = checkpoint.load(out / "last.pt")["iteration"]
    assert stopped >= 2

    status = main(["train", "--out", str(out), "--resume", "--iterations", str(stopped + 3), "--val-every", "2",
                   "--data-root", str(data_root), "--threads", "1", "--quiet"])
    assert status == 0
    printed = capsys.readouterr().out
    assert f"finished {stopped + 3} iterations" in printed
    assert re.search(r"best validation accuracy \d+\.\d\d % ± \d+\.\d\d % at iteration", printed), printed
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in lines] == list(range(1, stopped + 4))

    status = main(["evaluate", str(out), "--tasks", "12", "--json", "--data-root", str(data_root), "--threads", "1"])
    assert status == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["tasks"] == 12 and 0 <= result["accuracy"] <= 1 and result["ci95"] > 0
    assert result["settings"]["split"] == "test" and result["settings"]["query"] == 15
    assert result["checkpoint"].endswith("best.pt") and {"loss", "settings", "iteration"} <= set(result)
    assert "evaluate test: 12/12 tasks" in captured.err and "eta" in captured.err  # the progress line, on stderr
    # Text output in percent, equal to the JSON's fraction.
    assert main(["evaluate", str(out), "--tasks", "12", "--data-root", str(data_root), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"accuracy {100 * result['accuracy']:.2f} % ± {100 * result['ci95']:.2f} % ")
    assert captured.err == ""
    # --config with the run's config.json repeats it: the same weights, bit for bit (one thread both).
    repeat = tmp_path / "repeat"
    assert main(["train", "--config", str(out / "config.json"), "--out", str(repeat), "--data-root", str(data_root),
                 "--quiet"]) == 0
    capsys.readouterr()
    a, b = checkpoint.load(out / "last.pt"), checkpoint.load(repeat / "last.pt")
    assert a["iteration"] == b["iteration"] == stopped + 3 and a["config"] == b["config"]
    assert all(torch.equal(a["learner"][k], b["learner"][k]) for k in a["learner"])
    # ... and flags override the file.
    assert main(["train", "--config", str(out / "config.json"), "--out", str(tmp_path / "shorter"), "--iterations",
                 "1", "--data-root", str(data_root), "--quiet"]) == 0
    assert checkpoint.load(tmp_path / "shorter" / "last.pt")["config"]["iterations"] == 1
    # more ways than the split has classes: one line, exit 2 (the data is read, then checked)
    status = main(["train", "--out", str(tmp_path / "wide"), "--ways", "5000", "--data-root", str(data_root),
                   "--quiet"])
    assert status == 2
    err = capsys.readouterr().err
    assert err == "linmaml train: error: --ways: expected at most 4400 (the classes of omniglot/train), got 5000\n"
