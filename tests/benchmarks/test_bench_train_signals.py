"""SIGINT / SIGTERM during training: a checkpoint of the last finished iteration is written, the
process exits with 130 / 143, and --resume continues to the uninterrupted run's weights."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.train import train

OPTIONS = dict(ways=3, shots=1, query=2, test_query=3, layers=1, hidden=4, meta_batch=3, iterations=400,
               val_every=50, val_tasks=4, checkpoint_every=1000, seed=3)

CHILD = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.train import train
rng = np.random.default_rng(0)
splits = {}
for k, name in enumerate(("train", "val")):
    px = rng.random((8, 6, 1, 10, 10)).astype(np.float32)
    splits[name] = FewShotSplit("omniglot", name, px, np.arange(8), np.zeros(8, np.int64), 100 * k + np.arange(8),
                                tuple(map(str, range(8))))
options = %r
options["iterations"] = int(sys.argv[3])
print("ready", flush=True)
sys.exit(train(options, sys.argv[1], resume=sys.argv[2] == "resume", splits=splits, progress=False).exit_code)
""" % (OPTIONS,)


def _splits():
    rng = np.random.default_rng(0)
    out = {}
    for k, name in enumerate(("train", "val")):
        px = rng.random((8, 6, 1, 10, 10)).astype(np.float32)
        out[name] = FewShotSplit("omniglot", name, px, np.arange(8), np.zeros(8, np.int64), 100 * k + np.arange(8),
                                 tuple(map(str, range(8))))
    return out


def _interrupt(out, mode, sig, after_lines):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out), mode, "400"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= after_lines):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    return proc.wait(timeout=60)


def test_sigint_and_sigterm_write_a_checkpoint_and_exit_130_143(tmp_path):
    out = tmp_path / "run"
    assert _interrupt(out, "fresh", signal.SIGINT, 3) == 130
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # checkpoint_every is 1000: this checkpoint exists only because of the signal.
    saved = checkpoint.load(out / "last.pt")
    assert saved["iteration"] == lines[-1]["iteration"] >= 3
    assert not (out / "run.lock").exists()
    first_stop = saved["iteration"]
    assert _interrupt(out, "resume", signal.SIGTERM, first_stop + 3) == 143
    assert checkpoint.load(out / "last.pt")["iteration"] >= first_stop + 3
    # Finish a short run: resume to iteration n, compare with an uninterrupted in-process run to n.
    n = checkpoint.load(out / "last.pt")["iteration"] + 4
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), "resume", str(n)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train({**OPTIONS, "iterations": n}, tmp_path / "reference", splits=_splits(), progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = checkpoint.load(tmp_path / "reference" / "last.pt"), checkpoint.load(out / "last.pt")
    assert a["iteration"] == b["iteration"] == n
    assert all(torch.equal(a["learner"][k], b["learner"][k]) for k in a["learner"])


LONG_VALIDATION = {**OPTIONS, "val_every": 2, "val_tasks": 2400}
CHILD_LONG = CHILD.replace("options = %r" % (OPTIONS,), "options = %r" % (LONG_VALIDATION,))


def test_sigterm_during_a_long_validation_is_answered_in_seconds_and_resumes_exactly(tmp_path):
    """A validation pass of 2,400 tasks (about 10 s here) gets SIGTERM: the run exits 143 within a
    few seconds with a last.pt of the iteration whose validation was cut short; --resume runs that
    validation first, and metrics and best.pt end as in an uninterrupted run."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", CHILD_LONG, str(out), "fresh", "2"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(1.5)  # iteration 2 takes milliseconds: the run is now inside iteration 2's validation
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert proc.wait(timeout=60) == 143
    assert time.monotonic() - sent < 3.0
    assert metrics.read_text().count("\n") == 1  # iteration 2 is logged only with its validation
    saved = checkpoint.load(out / "last.pt")
    assert saved["iteration"] == 2 and saved["pending_validation"]["iteration"] == 2
    assert not (out / "best.pt").exists()

    resumed = subprocess.run([sys.executable, "-c", CHILD_LONG, str(out), "resume", "2"], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train({**LONG_VALIDATION, "iterations": 2}, tmp_path / "reference", splits=_splits(), progress=False)
    finally:
        torch.set_num_threads(threads)
    got = [json.loads(x) for x in metrics.read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    strip = (lambda r: {k: v for k, v in r.items() if k != "elapsed"})
    assert [strip(r) for r in got] == [strip(r) for r in want] and "val_accuracy" in got[1]
    a, b = checkpoint.load(tmp_path / "reference" / "best.pt"), checkpoint.load(out / "best.pt")
    assert a["iteration"] == b["iteration"] == 2
    assert all(torch.equal(a["learner"][k], b["learner"][k]) for k in a["learner"])
    assert checkpoint.load(out / "last.pt")["pending_validation"] is None
