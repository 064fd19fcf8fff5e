"""Does a long meta-training run keep its memory flat? 5,000 small meta-iterations, resident memory
(RSS) at iteration 500 and at 5,000; the claim is growth under 5%.

The run is the library's own training loop (:func:`linmaml.benchmarks.train.train`: checkpoints,
metrics, validation and all) on a small synthetic few-shot split built through the data package's
API, with a 2-block CNN and second-order MAML, so that every code path of a real run is exercised
5,000 times in a couple of minutes. RSS is read from ``/proc/self/status`` (VmRSS) after each
iteration; the numbers go to ``train_memory.json``.

The process runs under ``linmaml train``'s default malloc policy, ``--allocator keep`` (freed memory
kept for reuse: :mod:`linmaml.benchmarks.allocator`), unless ``--allocator system`` is given; the
record says which.

Run: ``python analysis/train_memory.py [--out DIR] [--quick] [--allocator keep|system]`` (quick: 200
iterations, RSS at 20 and 200, a few seconds). Not a figure: ``linmaml reproduce`` does not run it.
"""
from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np

NAME = "train_memory"
SETTINGS = {"iterations": 5000, "early": 500, "ways": 5, "shots": 1, "query": 5, "test_query": 5, "layers": 2, "hidden": 4,
            "meta_batch": 2, "image_size": 12, "val_every": 1000, "val_tasks": 10, "checkpoint_every": 250,
            "threads": 1, "seed": 0}
QUICK = {"iterations": 200, "early": 20, "val_every": 100, "checkpoint_every": 50}


def resident_bytes() -> int:
    """Current resident set size of this process (VmRSS); peak RSS where /proc is missing."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def synthetic_splits(size: int, seed: int):
    from linmaml.benchmarks.data import FewShotSplit

    rng = np.random.default_rng(seed)
    splits = {}
    for k, (name, count) in enumerate((("train", 40), ("val", 10))):
        proto = rng.random((count, 1, 1, size, size)).astype(np.float32)
        pixels = np.clip(proto + 0.3 * rng.standard_normal((count, 10, 1, size, size)), 0, 1).astype(np.float32)
        splits[name] = FewShotSplit("omniglot", name, pixels, np.arange(count), np.zeros(count, np.int64),
                                    1000 * k + np.arange(count), tuple(f"{name}{i}" for i in range(count)))
    return splits


def run(out_dir: pathlib.Path, quick: bool = False, allocator: str | None = None) -> dict:
    """``allocator`` ("keep"/"system") is applied to this process first; None leaves it as it is."""
    import torch

    from linmaml import _io
    from linmaml.benchmarks import allocator as malloc_policy
    from linmaml.benchmarks.train import train

    policy = malloc_policy.current() if allocator is None else malloc_policy.use_allocator(allocator)
    settings = {**SETTINGS, **(QUICK if quick else {}), "allocator": str(policy)}
    torch.set_num_threads(settings["threads"])
    keys = ("ways", "shots", "query", "test_query", "layers", "hidden", "meta_batch", "iterations", "val_every", "val_tasks",
            "checkpoint_every", "seed")
    options = {k: settings[k] for k in keys}
    rss = {}

    def record(metrics: dict) -> None:
        rss[metrics["iteration"]] = resident_bytes()

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="linmaml-memory-") as workdir:
        result = train(options, pathlib.Path(workdir) / "run", splits=synthetic_splits(settings["image_size"], 0),
                       progress=False, device="cpu", on_iteration=record)
    seconds = time.perf_counter() - start
    early, late = rss[settings["early"]], rss[settings["iterations"]]
    growth = late / early - 1.0
    numbers = {"rss_mib_at_early": early / 2 ** 20, "rss_mib_at_end": late / 2 ** 20, "growth": growth,
               "max_rss_mib_after_early": max(v for k, v in rss.items() if k >= settings["early"]) / 2 ** 20,
               "passed": bool(growth < 0.05), "seconds": seconds, "status": result.status}
    report = {"figure": NAME, "settings": settings, "numbers": numbers,
              "rss_mib_every_100": {str(k): v / 2 ** 20 for k, v in sorted(rss.items()) if k % 100 == 0}}
    out_dir = pathlib.Path(out_dir)
    _io.atomic_write_json(out_dir / f"{NAME}.json", report)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "figures"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--allocator", choices=("keep", "system"), default="keep",
                        help="malloc policy (default keep, as linmaml train)")
    args = parser.parse_args()
    report = run(pathlib.Path(args.out), quick=args.quick, allocator=args.allocator)
    n, s = report["numbers"], report["settings"]
    print(f"RSS at iteration {s['early']}: {n['rss_mib_at_early']:.1f} MiB, at {s['iterations']}:"
          f" {n['rss_mib_at_end']:.1f} MiB (growth {100 * n['growth']:+.2f}%, limit +5%)"
          f" {'ok' if n['passed'] else 'FAILED'}; {n['seconds']:.0f} s")
    sys.exit(0 if n["passed"] else 1)
