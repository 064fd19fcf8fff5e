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
from linmaml.benchmarks.train import CLOCK_FIELDS, train

#: Ends a child that hangs; never a performance claim (tests bound events, not seconds: DESIGN.md).
HANG_GUARD_S = 900

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
    # Events, not seconds: wait until the child has logged ``after_lines`` iterations, however long
    # a loaded machine takes (HANG_GUARD_S only ends a child that hangs).
    deadline = time.monotonic() + HANG_GUARD_S
    while not (metrics.exists() and metrics.read_text().count("\n") >= after_lines):
        assert proc.poll() is None, "the child ended before it was signalled"
        assert time.monotonic() < deadline, f"hang guard: no progress in {HANG_GUARD_S} s"
        time.sleep(0.01)
    proc.send_signal(sig)
    return proc.wait(timeout=HANG_GUARD_S)


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
# The child counts the chunks of iteration 2's validation pass (600 chunks of 4 tasks) and, after the
# third, sends itself SIGTERM; every chunk that finishes afterwards is printed. The claim is a count of
# events, not seconds: after a signal the pass scores no further chunk (``should_stop`` is polled before
# each one), however slow a loaded machine makes each chunk.
SIGNAL_HOOK = """
import os, signal
from linmaml.benchmarks import progress as _progress
_validation = _progress.Progress.validation
_state = {"sent": False}
def _counting(self, iteration, done, total, seconds):
    if iteration == 2 and done < total:
        if _state["sent"]:
            print("chunk after signal", done, flush=True)
        elif done >= 12:
            _state["sent"] = True
            print("signal at", done, total, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
    return _validation(self, iteration, done, total, seconds)
if sys.argv[2] == "fresh":  # --resume runs undisturbed
    _progress.Progress.validation = _counting
"""
CHILD_LONG = CHILD.replace("options = %r" % (OPTIONS,), "options = %r" % (LONG_VALIDATION,)).replace(
    'print("ready", flush=True)', SIGNAL_HOOK + 'print("ready", flush=True)')


def test_sigterm_during_a_long_validation_stops_at_the_next_chunk_and_resumes_exactly(tmp_path):
    """A validation pass of 2,400 tasks gets SIGTERM after its third chunk: no further chunk is scored,
    the run exits 143 with a last.pt of the iteration whose validation was cut short; --resume runs
    that validation first, and metrics and best.pt end as in an uninterrupted run."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", CHILD_LONG, str(out), "fresh", "2"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert proc.wait(timeout=HANG_GUARD_S) == 143
    printed = proc.stdout.read().splitlines()
    assert printed == ["signal at 12 2400"], printed  # and no "chunk after signal" line
    metrics = out / "metrics.jsonl"
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
    strip = (lambda r: {k: v for k, v in r.items() if k not in CLOCK_FIELDS})
    assert [strip(r) for r in got] == [strip(r) for r in want] and "val_accuracy" in got[1]
    a, b = checkpoint.load(tmp_path / "reference" / "best.pt"), checkpoint.load(out / "best.pt")
    assert a["iteration"] == b["iteration"] == 2
    assert all(torch.equal(a["learner"][k], b["learner"][k]) for k in a["learner"])
    assert checkpoint.load(out / "last.pt")["pending_validation"] is None
