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
