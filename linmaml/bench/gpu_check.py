"""A short prepared check for a machine with a GPU (a few minutes; CI never runs it).

1. **Agreement**: one meta-step of second-order MAML (4-block CNN, meta-batch 8, real Omniglot
   tasks) from the same weights: the plain per-task loop on the CPU against ``linmaml train``'s
   step on CUDA with each ``--batching`` (split: the default; vmap: the whole chunk vmapped, a GPU's
   choice): relative error of every meta-gradient (floored at 1e-3 of the whole gradient's norm, for
   the exactly-zero gradients of conv biases before BatchNorm) and of the weights after one Adam step
   (those with a non-zero gradient), in
   float64 (tolerance 1e-9) and float32 (tolerance 1e-3; TF32 switched off so that float32 means
   float32).
2. **Training**: a 200-iteration run with ``linmaml train``'s defaults (5-way 1-shot MAML) on CUDA,
   then the test accuracy (mean ± 95% CI) of its best checkpoint on the fixed test tasks; it
   "trains" when that accuracy clears 0.6 (chance is 0.2).
3. **Throughput**: median seconds per training iteration (validation iterations excluded) and
   iterations per second.
4. **Meta-iteration benchmark**: :mod:`linmaml.bench.harness`'s MAML, KFO and ANIL cases on CUDA
   at full size (28×28, 5-way 1-shot, 15 queries, meta-batch 32, 4-block 64-filter CNN): every
   variant against the plain reference on the same GPU, iterations per second, peak GPU memory, and
   float64 agreement. TF32 is allowed here (timings only) and switched off again afterwards.

Prints a compact summary and writes the numbers as JSON to ``--out``. Exit status 0 when every
check passes, 1 when one fails, 2 when there is no CUDA device (or bad arguments).

    python -m linmaml.bench.gpu_check --out gpu_check.json [--data-root DIR] [--iterations 200]
                                         [--bench-reps 5] [--no-bench]

(``python analysis/gpu_check.py …`` in a source tree is the same.) The Omniglot files are looked for
in ``--data-root``, then ``$LINMAML_DATA``, then ``data/`` and ``../shared/data`` of the current
folder (a source checkout's root). ``--device cpu`` runs the same steps on the CPU only (CPU against
CPU; the benchmark at its quick sizes), to try the script on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from linmaml import _io
from linmaml.bench import case_meta, sizes
from linmaml.benchmarks import episodes
from linmaml.benchmarks.config import TrainConfig, build_from_config, make_engine
from linmaml.benchmarks.data import load_splits
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.scoring import model_layout
from linmaml.benchmarks.run_files import METRICS
from linmaml.benchmarks.train import train
from linmaml.meta.engine import Engine

TOLERANCE = {"float64": 1e-9, "float32": 1e-3}
TRAINS_THRESHOLD = 0.6


def find_data_root(given: str | None, extra=()) -> Path:
    """The first folder holding ``omniglot/``: ``given``, ``$LINMAML_DATA``, ``extra`` (the source
    tree's own places, from the wrapper script), then ``data/`` and ``../shared/data`` here."""
    candidates = [Path(given)] if given else []
    if os.environ.get("LINMAML_DATA", "").strip():
        candidates.append(Path(os.environ["LINMAML_DATA"]))
    here = Path.cwd()
    candidates += [Path(root) for root in extra] + [here / "data", here.parent / "shared" / "data"]
    for root in candidates:
        if (root / "omniglot").is_dir():
            return root
    raise FileNotFoundError("data-root: no omniglot/ folder in " + ", ".join(map(str, candidates))
                            + " (copy the two omniglot_*.npz files into <root>/omniglot/ and pass --data-root)")


def relative_error(a, b, floor: float = 1e-30) -> float:
    """‖a − b‖ / max(‖b‖, floor), computed in float64 on the CPU. ``floor`` keeps tensors whose
    exact value is 0 (a convolution bias before BatchNorm has zero gradient) from dividing
    rounding noise by rounding noise."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / max(float(b.norm()), floor))


def agreement(splits, device, dtype_name: str) -> dict:
    """One meta-step from the same weights on CPU and on ``device``; the largest relative errors."""
    dtype = getattr(torch, dtype_name)
    config = TrainConfig(meta_batch=8)
    sampler = episodes.EpisodeSampler(splits["train"], config.ways, config.shots, config.query, seed=0)
    batch = sampler.tasks(range(8))

    def one_step(where, step_for):
        torch.manual_seed(0)
        learner = build_from_config(config, splits["train"].image_shape).to(device=where, dtype=dtype)
        optimizer = torch.optim.Adam(learner.parameters(), lr=config.outer_lr)
        loss, _ = step_for(learner)(batch.to_torch(where, dtype), 1.0 / 8)
        grads = {n: p.grad.detach().cpu().clone() for n, p in learner.named_parameters()}
        optimizer.step()
        weights = {n: p.detach().cpu().clone() for n, p in learner.named_parameters()}
        return loss / 8, grads, weights

    def loop(learner):  # one task at a time, the plain autograd path
        return lambda b, s: Engine(learner, F.cross_entropy, strategy="loop").meta_gradient(*b, scale=s)

    def engine_of(settings):
        return lambda learner: (lambda b, s: make_engine(learner, settings).meta_gradient(*model_layout(b), scale=s))

    loss_cpu, g_cpu, w_cpu = one_step("cpu", loop)
    total_norm = float(sum(float(g.double().norm()) ** 2 for g in g_cpu.values()) ** 0.5)
    out = {"meta_loss_cpu": loss_cpu, "tolerance": TOLERANCE[dtype_name], "steps": {}}
    for batching in ("split", "vmap"):
        settings = TrainConfig(meta_batch=8, batching=batching)
        loss_dev, g_dev, w_dev = one_step(device, engine_of(settings))
        grad_errors = {n: relative_error(g_dev[n], g_cpu[n], floor=1e-3 * total_norm) for n in g_cpu}
        # Weights after the Adam step, of the parameters with a real gradient: Adam divides each
        # gradient by its own scale, so the rounding noise of the exactly-zero conv-bias gradients
        # becomes a full ±lr step in either direction — harmless (BatchNorm cancels those biases)
        # but no measure of agreement.
        real = [n for n in g_cpu if float(g_cpu[n].double().norm()) > 1e-3 * total_norm]
        weight_errors = {n: relative_error(w_dev[n], w_cpu[n]) for n in real}
        worst = max(grad_errors, key=grad_errors.get)
        r = {"meta_loss_device": loss_dev, "max_rel_error_gradient": grad_errors[worst], "worst_parameter": worst,
             "max_rel_error_weights_after_step": max(weight_errors.values())}
        r["passed"] = bool(max(r["max_rel_error_gradient"], r["max_rel_error_weights_after_step"],
                               abs(loss_dev - loss_cpu) / abs(loss_cpu)) <= TOLERANCE[dtype_name])
        out["steps"][batching] = r
    out["passed"] = all(r["passed"] for r in out["steps"].values())
    return out


def meta_benchmark(device: str, reps: int) -> dict:
    """:mod:`linmaml.bench.harness`'s meta-iteration cases on ``device`` (TF32 allowed while timing)."""
    settings = dict(sizes.FULL["meta"] if device == "cuda" else sizes.QUICK["meta"])
    settings.update(compiled=False, memory=device == "cuda", batched_cases=["maml", "kfo", "anil"])
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        cases = {case: case_meta.bench_meta(case, settings, reps, device, settings["memory"], print)
                 for case in ("maml", "kfo", "anil")}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    return {"settings": settings, "tf32": True, "cases": cases,
            "agreement_ok": all(v["targets"]["met_agreement"] for v in cases.values())}


def training(splits, test_split, device: str, iterations: int, workdir: Path) -> dict:
    """A default-settings run of ``iterations`` iterations, its throughput and its test accuracy."""
    start = time.perf_counter()
    result = train({"iterations": iterations, "val_every": max(1, iterations // 2), "val_tasks": 100},
                   workdir / "run", splits=splits, device=device, progress=True)
    seconds = time.perf_counter() - start
    lines = [json.loads(x) for x in (workdir / "run" / METRICS).read_text().splitlines()]
    steps = [b["elapsed"] - a["elapsed"] for a, b in zip(lines, lines[1:]) if "val_accuracy" not in b]
    # Very short runs validate at every iteration: then time them all (validation included).
    per_iteration = statistics.median(steps or [b["elapsed"] - a["elapsed"] for a, b in zip(lines, lines[1:])]
                                      or [lines[0]["elapsed"]])
    test = evaluate_checkpoint(workdir / "run", tasks=200, splits={"test": test_split}, device=device)
    return {"status": result.status, "iterations": result.iteration, "wall_seconds": seconds,
            "train_accuracy_last_20": statistics.mean(r["accuracy"] for r in lines[-20:]),
            "best_validation": result.best,
            "test_accuracy": test["accuracy"], "test_ci95": test["ci95"], "test_tasks": test["tasks"],
            "seconds_per_iteration": per_iteration, "iterations_per_second": 1.0 / per_iteration,
            "passed": bool(result.status == "done" and test["accuracy"] >= TRAINS_THRESHOLD),
            "threshold": TRAINS_THRESHOLD, "meta_batch": TrainConfig().meta_batch, "layers": TrainConfig().layers,
            "hidden": TrainConfig().hidden}


def main(argv=None, data_roots=()) -> int:
    """The command line (module docstring); ``data_roots``: more places to look for the data."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the JSON summary")
    parser.add_argument("--data-root", default=None, help="folder holding omniglot/")
    parser.add_argument("--iterations", type=int, default=200, help="training iterations (default 200)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default); cpu runs the same steps on the CPU alone, as a dry run")
    parser.add_argument("--bench-reps", type=int, default=5, help="repetitions of each timed variant (default 5)")
    parser.add_argument("--no-bench", action="store_true", help="skip the meta-iteration benchmark (step 4)")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.exit(2, "gpu_check: error: --iterations: expected an integer >= 2\n")
    if args.bench_reps < 1:
        parser.exit(2, "gpu_check: error: --bench-reps: expected an integer >= 1\n")

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device visible to torch " + torch.__version__
              + " (a CPU build of torch, or no GPU); run it on a machine with a GPU", file=sys.stderr)
        return 2
    try:
        root = find_data_root(args.data_root, data_roots)
    except FileNotFoundError as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    started = time.perf_counter()
    splits = load_splits("omniglot", ("train", "val", "test"), root)
    report = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "cuda": torch.version.cuda, "data_root": str(root),
              "agreement": {dt: agreement(splits, args.device, dt) for dt in ("float64", "float32")}}
    with tempfile.TemporaryDirectory(prefix="linmaml-gpu-check-") as workdir:
        report["training"] = training({"train": splits["train"], "val": splits["val"]}, splits["test"], args.device,
                                      args.iterations, Path(workdir))
    if not args.no_bench:
        report["meta_benchmark"] = meta_benchmark(args.device, args.bench_reps)
    report["seconds"] = time.perf_counter() - started
    report["passed"] = bool(all(a["passed"] for a in report["agreement"].values()) and report["training"]["passed"]
                            and report.get("meta_benchmark", {}).get("agreement_ok", True))

    _io.atomic_write_json(args.out, report)
    a, t = report["agreement"], report["training"]
    print(f"gpu_check on {report['device']} (torch {report['torch']}, CUDA {report['cuda']})")
    for dt, per_step in a.items():
        for batching, r in per_step["steps"].items():
            print(f"  meta-step CPU loop vs {args.device} --batching {batching}, {dt}: gradient rel. error"
                  f" {r['max_rel_error_gradient']:.2e} ({r['worst_parameter']}), weights"
                  f" {r['max_rel_error_weights_after_step']:.2e} (tolerance {per_step['tolerance']:.0e})"
                  f" {'ok' if r['passed'] else 'FAILED'}")
    print(f"  training {t['iterations']} iterations: test accuracy {t['test_accuracy']:.4f} ± {t['test_ci95']:.4f}"
          f" ({t['test_tasks']} tasks; needs >= {t['threshold']}) {'ok' if t['passed'] else 'FAILED'}")
    print(f"  throughput: {t['seconds_per_iteration']:.3f} s/iteration = {t['iterations_per_second']:.2f} it/s"
          f" (linmaml train's defaults: meta-batch {t['meta_batch']}, {t['layers']}-block CNN, {t['hidden']} filters)")
    for case, result in report.get("meta_benchmark", {}).get("cases", {}).items():
        cells = ", ".join(f"{name} {v['median']:.3f} s ({v['ratio']:.2f}x)" for name, v in result["variants"].items())
        print(f"  meta-iteration {case} on {args.device} (TF32): {cells}")
    print(f"  {'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s; JSON: {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
