"""kill -9 at random moments — and deliberately while a checkpoint is being written and between its
two renames — then --resume: the final weights equal an uninterrupted run's, bit for bit (CPU)."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.train import CLOCK_FIELDS

# The child: tiny synthetic splits through the data package's API, then the library's train().
# TRAIN_HOOK (optional) slows one file operation down and announces it through a marker file, so
# the parent can SIGKILL the child exactly inside it.
CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    from linmaml.benchmarks.data import FewShotSplit
    from linmaml.benchmarks.train import train

    def splits(size=12, examples=8):
        rng = np.random.default_rng(0)
        out, offset = {}, 0
        for name, count in (("train", 12), ("val", 8)):
            proto = rng.random((count, 1, 1, size, size)).astype(np.float32)
            pixels = np.clip(proto + 0.3 * rng.standard_normal((count, examples, 1, size, size)), 0, 1)
            out[name] = FewShotSplit("omniglot", name, pixels.astype(np.float32), np.arange(count),
                                     np.zeros(count, np.int64), offset + np.arange(count),
                                     tuple(str(offset + i) for i in range(count)))
            offset += count
        return out

    out, resume, hook = sys.argv[1], sys.argv[2] == "resume", sys.argv[3]
    if hook != "none":
        import linmaml._io as io_module
        marker = os.path.join(os.path.dirname(out), "inside")
        real_fsync, real_replace = os.fsync, os.replace
        calls = {"n": 0}
        def announce():
            calls["n"] += 1
            if calls["n"] == 5:            # a few checkpoints in, not the first
                open(marker, "w").close()
                time.sleep(30)             # the parent kills us here
        if hook == "fsync":                # the temporary file is written but not yet renamed
            def fsync(fd):
                if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".last.pt."):
                    announce()
                return real_fsync(fd)
            io_module.os.fsync = fsync
        elif hook == "rename":             # last.pt already moved to last.prev.pt, new one not yet in place
            def replace(src, dst):
                result = real_replace(src, dst)
                if str(dst).endswith("last.prev.pt"):
                    announce()
                return result
            os.replace = replace
    options = dict(ways=3, shots=1, query=2, test_query=3, layers=1, hidden=4, meta_batch=3, iterations=40,
                   val_every=7, val_tasks=4, checkpoint_every=2, seed=11)
    print("ready", flush=True)
    result = train(options, out, resume=resume, splits=splits(), progress=False, device="cpu")
    sys.exit(result.exit_code)
""")


def _start(out, mode, hook="none"):
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out), mode, hook], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kill_when(proc, condition, timeout=900.0):
    """SIGKILL ``proc`` once ``condition()`` holds; ``timeout`` is a hang guard, not a speed claim
    (DESIGN.md: tests bound events, not seconds)."""
    start = time.monotonic()
    while not condition():
        assert proc.poll() is None, "the child ended before it could be killed"
        assert time.monotonic() - start < timeout, f"hang guard: condition not met in {timeout} s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _iterations_logged(out):
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


@pytest.mark.slow
def test_kill9_anywhere_then_resume_gives_the_uninterrupted_weights(tmp_path):
    reference = tmp_path / "reference" / "run"
    proc = _start(reference, "fresh")
    assert proc.wait(timeout=900) == 0

    out = tmp_path / "killed" / "run"
    rng = random.Random(2024)
    # 1) at random moments during training (measured in logged iterations, so that every kill
    #    lands inside the run whatever the machine's speed).
    kills = []
    for k in range(2):
        target = _iterations_logged(out) + rng.randint(2, 12)
        proc = _start(out, "fresh" if k == 0 else "resume")
        _kill_when(proc, lambda: _iterations_logged(out) >= target)
        kills.append(_iterations_logged(out))
    # 2) while a checkpoint's temporary file is written but not renamed into place.
    marker = out.parent / "inside"
    for hook in ("fsync", "rename"):
        marker.unlink(missing_ok=True)
        proc = _start(out, "resume", hook)
        _kill_when(proc, marker.exists)
        names = {p.name for p in out.iterdir()}
        if hook == "fsync":
            assert any(n.startswith(".last.pt.") for n in names), names  # a half-finished temporary file
        else:
            assert "last.pt" not in names and "last.prev.pt" in names, names
        kills.append(hook)
    # 3) resume to the end.
    proc = _start(out, "resume")
    assert proc.wait(timeout=900) == 0
    assert kills[0] < kills[1] < 40

    a, b = checkpoint.load(reference / "last.pt"), checkpoint.load(out / "last.pt")
    assert a["iteration"] == b["iteration"] == 40
    for name in a["learner"]:
        assert torch.equal(a["learner"][name], b["learner"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for field, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][field]), (key, field)
    best_a, best_b = checkpoint.load(reference / "best.pt"), checkpoint.load(out / "best.pt")
    assert best_a["iteration"] == best_b["iteration"]
    assert all(torch.equal(best_a["learner"][k], best_b["learner"][k]) for k in best_a["learner"])
    # metrics.jsonl: one line per iteration 1..60 (re-run iterations replaced, torn lines dropped).
    import json
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == list(range(1, 41))
    ref = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    drop = lambda rows: [{k: v for k, v in r.items() if k not in CLOCK_FIELDS} for r in rows]
    assert drop(lines) == drop(ref)
    # No temporary files survive the final run, and the lock is gone.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
