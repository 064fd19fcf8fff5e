"""torch.distributed: 2 CPU processes (gloo) give the single-process meta-gradient, and a 2-process
training run gives the single-process weights, with rank 0 alone writing."""
import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.distributed import share
from linmaml.benchmarks.train import train
from linmaml.meta.engine import Engine

SPLITS_CODE = textwrap.dedent("""
    import numpy as np
    from linmaml.benchmarks.data import FewShotSplit
    def make_splits():
        rng = np.random.default_rng(7)
        out = {}
        for k, name in enumerate(("train", "val")):
            px = rng.random((10, 6, 1, 10, 10)).astype(np.float32)
            out[name] = FewShotSplit("omniglot", name, px, np.arange(10), np.zeros(10, np.int64),
                                     100 * k + np.arange(10), tuple(map(str, range(10))))
        return out
""")
# One meta-batch of 5 tasks and the learner it is scored with: the worker splits it over two processes,
# the test scores it whole in this one.
PROBLEM_CODE = textwrap.dedent("""
    import torch
    from linmaml.benchmarks.learners import build_learner
    def make_problem():
        torch.manual_seed(0)
        learner = build_learner(image_shape=(1, 10, 10), ways=3, layers=2, hidden=3, inner_lr=0.3, steps=2).double()
        g = torch.Generator().manual_seed(1)
        xs = torch.rand(5, 3, 1, 10, 10, generator=g, dtype=torch.float64)
        xq = torch.rand(5, 6, 1, 10, 10, generator=g, dtype=torch.float64)
        ys, yq = torch.arange(3).repeat(5, 1), torch.arange(3).repeat_interleave(2).repeat(5, 1)
        return learner, (xs, ys, xq, yq)
""")
OPTIONS = dict(ways=3, shots=1, query=2, test_query=2, layers=2, hidden=3, meta_batch=5, iterations=4, val_every=2,
               val_tasks=5, checkpoint_every=2, seed=2, dtype="float64", inner_lr=0.3, steps=2)

WORKER = SPLITS_CODE + PROBLEM_CODE + textwrap.dedent("""
    import os, sys, torch
    import torch.multiprocessing as mp

    def worker(rank, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                          LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
        from linmaml.benchmarks import distributed
        from linmaml.benchmarks.train import train
        from linmaml.meta.engine import Engine
        ctx = distributed.setup("cpu")
        # (a) one meta-gradient: 5 tasks split 3 + 2 over the two processes
        learner, batch = make_problem()
        mine = distributed.share(5, ctx.world_size, ctx.rank)
        part = tuple(t[mine.start:mine.stop] for t in batch)
        Engine(learner, strategy="loop").meta_gradient(*part, scale=1 / 5)
        distributed.all_reduce_gradients(learner.parameters(), ctx)
        if rank == 0:
            torch.save({n: p.grad for n, p in learner.named_parameters()}, os.path.join(out, "grads.pt"))
        # (b) a short training run through the same entry point torchrun uses
        result = train(OPTIONS, os.path.join(out, "run"), splits=make_splits(), progress=False, device="cpu")
        assert result.status == "done", result
        distributed.teardown(ctx)

    if __name__ == "__main__":
        mp.spawn(worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)
""")


def _run_code(code: str, function: str):
    """Call ``function`` defined by ``code`` (the same source the worker script runs)."""
    namespace = {}
    exec(code, namespace)
    return namespace[function]()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_share_partitions_the_meta_batch():
    for total in range(0, 12):
        for world in range(1, 6):
            parts = [share(total, world, r) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(total))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(f"OPTIONS = {OPTIONS!r}\n" + WORKER)
    proc = subprocess.run([sys.executable, str(script), str(_free_port()), str(tmp_path)], capture_output=True,
                          text=True, timeout=900)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]

    # (a) meta-gradient: single process, all five tasks at once
    learner, batch = _run_code(PROBLEM_CODE, "make_problem")
    Engine(learner, strategy="loop").meta_gradient(*batch, scale=1 / 5)
    grads = torch.load(tmp_path / "grads.pt")
    for name, p in learner.named_parameters():
        rel = float((grads[name] - p.grad).norm() / p.grad.norm())
        assert rel <= 1e-6, (name, rel)
        assert not torch.equal(p.grad, torch.zeros_like(p.grad))

    # (b) training: same weights as one process (float64; summation order differs only)
    train(OPTIONS, tmp_path / "single", splits=_run_code(SPLITS_CODE, "make_splits"), progress=False, device="cpu")
    a = checkpoint.load(tmp_path / "single" / "last.pt")["learner"]
    b = checkpoint.load(tmp_path / "run" / "last.pt")["learner"]
    for name in a:
        rel = float((a[name] - b[name]).norm() / a[name].norm())
        assert rel <= 1e-6, (name, rel)
    # rank 0 alone wrote: one metrics line per iteration, no stray files
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2
    # validation accuracy (tasks shared across processes) equals the single-process one
    single = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    for r, s in zip(lines, single):
        if "val_accuracy" in s:
            assert abs(r["val_accuracy"] - s["val_accuracy"]) < 1e-9
