"""Performance benchmark (issue 6): every case timed against its reference in the same process.

Cases
-----
``surface``      the exact depth-2 population MAML objective of the scalar chain on a 400×400 grid
                 with 1, 3 and 5 inner steps: ``closedform.scalar.surface_grid`` against the torch
                 simulator (``simulator.adapt``, autograd inner loop) evaluating the same objective at
                 the same Gauss–Hermite task nodes. The reference is timed on a random subsample of
                 the grid points and scaled per point (its cost is linear in the points).
``deep_linear``  meta-gradient of a deep linear network (d_in 100, depth 4, width 100, output 1, 5
                 inner steps, 100 tasks of 20 support + 20 query points): ``closedform.maml_grad``
                 against ``simulator.maml_gradient`` (batched torch autograd), float64.
``maml``         one meta-iteration of second-order MAML on Omniglot-sized episodes (28×28, 5-way
                 1-shot, 15 queries per class, meta-batch 32, 1 inner step, the 4-block 64-filter
                 CNN), float32, against a plain reference written here: a Python loop over the tasks,
                 each adapted with ``torch.func.functional_call`` + ``torch.autograd.grad(create_graph=
                 True)`` and backpropagated (query loss / M) before the next.
``kfo``, ``anil`` the same meta-iteration with the KFO meta-optimizer, and with ANIL.

Meta-iteration variants: ``reference`` (above, on the textbook CNN — conv, BatchNorm, ReLU, max-pool
— with the episodes in torch's default layout); ``reference_convnet`` (the same loop on linmaml's
ConvNet, which pools before its ReLU and folds its first BatchNorm into the convolution: the model's
own gain); ``reference_channels_last`` (that loop on channels-last episodes: the layout's gain);
``train_step`` (``benchmarks.train.make_meta_step`` with the defaults: what ``linmaml train`` runs
per iteration — inner loops of 4 tasks vmapped, queries one task at a time); ``loop`` (``linmaml
train --batching loop``: one task at a time); ``batched`` (``meta.batched.MetaGradient`` with the
whole meta-batch in one vmapped computation) and ``compiled`` (``linmaml train --compile``; full
mode only: compiling takes minutes). All start from identical weights and data. Their meta-gradients
are compared in float64 on the first ``agreement_tasks`` tasks (exact up to rounding, ~1e-13);
float32 results are compared with that float64 value too, next to the reference's own float32 error
(float32 rounding moves a second-order meta-gradient by ~1e-4 relative, so two correct float32
computations differ that much).

Method
------
* Time: after a warm-up call of each, the variants of a case run interleaved (ref, a, b, …, ref, a,
  b, …) ``reps`` ≥ 5 times; we report the median wall time, the interquartile range, min/max and
  the median process CPU time. ``ratio`` is the median over repetitions of (reference time / variant
  time) of the same round, robust to the load drifting on a shared machine; ``ratio_of_medians``
  is also given.
* Memory: numpy code: the ``tracemalloc`` peak of one call (numpy reports its buffers to
  tracemalloc). Torch on the CPU: a fresh subprocess per variant loads torch.func (whose code any
  variant may pull in on first use), builds the same setup, runs one warm-up iteration (and any
  compilation), returns freed memory to the system (``malloc_trim``), resets the resident-set
  high-water mark
  (``/proc/self/clear_refs``), runs one more iteration and reads ``VmHWM``: the peak resident
  memory of a process doing that step, in MiB, beside its resident size before the step. CUDA:
  ``torch.cuda.max_memory_allocated`` around one iteration.
* Threads: ``torch.set_num_threads(threads)`` (default 2); numpy's surface kernel uses its own
  thread pool of at most the available cores.

Run: ``python analysis/bench.py [--quick] [--only CASE ...] [--out DIR] [--device cpu|cuda]`` (or
``linmaml bench``); prints the table and writes ``DIR/bench.json`` (default ``figures/``).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

NAME = "bench"
CASES = ("surface", "deep_linear", "maml", "kfo", "anil")
META_CASES = {"maml": dict(algo="maml", transform="none"), "kfo": dict(algo="maml", transform="kfo"),
              "anil": dict(algo="anil", transform="none")}

FULL = {
    "reps": 5,
    # The reference is timed on the whole grid where that takes under a second (1 and 3 steps); at 5
    # steps (~8 s for the grid) on a subsample, scaled per point — which credits the subsample's
    # fixed overhead to the reference, so that ratio leans slightly in the closed form's favour.
    "surface": dict(grid=400, range=2.0, steps=[1, 3, 5], lr=0.1, mean=1.0, std=0.5, x_var=1.0,
                    reference_points={1: 160000, 3: 160000, 5: 400}),
    "deep_linear": dict(d_in=100, width=100, depth=4, d_out=1, steps=5, tasks=100, n_support=20, n_query=20,
                        lr=0.01, task_std=0.1, noise_std=0.1),
    "meta": dict(image=28, ways=5, shots=1, query=15, meta_batch=32, steps=1, inner_lr=0.4, layers=4, hidden=64,
                 agreement_tasks=4, compiled=True, compiled_check_layers=1, batched_cases=["maml"], memory=True),
}
QUICK = {
    "reps": 5,
    "surface": dict(grid=40, range=2.0, steps=[1, 3, 5], lr=0.1, mean=1.0, std=0.5, x_var=1.0,
                    reference_points={1: 200, 3: 100, 5: 30}),
    "deep_linear": dict(d_in=10, width=10, depth=4, d_out=1, steps=5, tasks=10, n_support=5, n_query=5,
                        lr=0.01, task_std=0.3, noise_std=0.1),
    "meta": dict(image=8, ways=3, shots=1, query=2, meta_batch=4, steps=1, inner_lr=0.4, layers=2, hidden=4,
                 agreement_tasks=2, compiled=False, compiled_check_layers=1, batched_cases=["maml", "kfo", "anil"],
                 memory=False),
}
TARGETS = {"surface_ratio": 100.0, "surface_seconds_5_steps": 0.2, "meta_ratio": 1.5,
           "deep_linear_agreement": 1e-10, "meta_agreement_float64": 1e-10}


# --------------------------------------------------------------------------------------------------
# Measurement helpers


def _quantiles(samples):
    q = np.quantile(np.asarray(samples), [0.25, 0.5, 0.75])
    return float(q[0]), float(q[1]), float(q[2])


def interleaved(functions: dict, reps: int, sync=None, warm_each: bool = False) -> dict:
    """Time each callable ``reps`` times, interleaved, after one warm-up call each.

    Returns name -> {"median", "q1", "q3", "min", "max", "cpu_median", "samples", "cpu_samples",
    "warmup_seconds"} (seconds; ``warmup_seconds`` includes any compilation);
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock read. ``warm_each`` calls
    each function once, untimed, right before each timed call (for millisecond calls, whose caches
    the previous function's call would otherwise have emptied).
    """
    sync = sync or (lambda: None)
    warmup = {}
    for name, fn in functions.items():
        t0 = time.perf_counter()
        fn()
        sync()
        warmup[name] = time.perf_counter() - t0
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    for _ in range(reps):
        for name, fn in functions.items():
            gc.collect()
            if warm_each:
                fn()
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out = {}
    for name in functions:
        q1, med, q3 = _quantiles(wall[name])
        out[name] = {"median": med, "q1": q1, "q3": q3, "min": min(wall[name]), "max": max(wall[name]),
                     "cpu_median": statistics.median(cpu[name]), "samples": [round(s, 6) for s in wall[name]],
                     "cpu_samples": [round(s, 6) for s in cpu[name]], "warmup_seconds": warmup[name]}
    return out


def ratios(timings: dict, reference: str, scale: dict | None = None) -> None:
    """Add ``ratio`` (median of per-round reference/variant wall times), ``ratio_of_medians`` and,
    where CPU times were taken, ``cpu_ratio`` (the same with process CPU time) to each entry.

    ``scale`` maps a name to a factor applied to that entry's times first (to extrapolate a
    subsampled reference)."""
    scale = scale or {}
    ref = np.asarray(timings[reference]["samples"]) * scale.get(reference, 1.0)
    for name, entry in timings.items():
        mine = np.asarray(entry["samples"]) * scale.get(name, 1.0)
        entry["ratio"] = float(np.median(ref / mine))
        entry["ratio_of_medians"] = float(np.median(ref) / np.median(mine))
        if "cpu_samples" in entry and "cpu_samples" in timings[reference]:
            ref_cpu = np.asarray(timings[reference]["cpu_samples"]) * scale.get(reference, 1.0)
            entry["cpu_ratio"] = float(np.median(ref_cpu / (np.asarray(entry["cpu_samples"]) * scale.get(name, 1.0))))


def tracemalloc_peak_mib(fn) -> float:
    """Peak of the memory traced by tracemalloc (numpy buffers included) during one call, MiB."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def _proc_status_kib(*keys) -> dict:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0])
    return values


def _relative_error(reference, candidate) -> float:
    """max over tensors/arrays of ‖Δ‖ / max(‖g_t‖, 1e-3·‖g‖): relative for each tensor that carries
    gradient, and against the whole gradient for tensors whose gradient is ~0 by structure (conv
    biases before BatchNorm)."""
    reference = [np.asarray(r, dtype=np.float64) for r in reference]
    candidate = [np.asarray(c, dtype=np.float64) for c in candidate]
    total = math.sqrt(sum(float(np.sum(r * r)) for r in reference))
    errors = [float(np.linalg.norm(r - c)) / max(float(np.linalg.norm(r)), 1e-3 * total, 1e-300)
              for r, c in zip(reference, candidate)]
    return max(errors)


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.processor(),
            "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                                     None)
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


# --------------------------------------------------------------------------------------------------
# Case 1: exact scalar-chain surface


def _gauss_hermite_tasks(mean, std, depth, steps):
    """Task weights a_n and probabilities π_n integrating (p_k − a)² exactly (degree 2L(2L−1)^{k−1})."""
    degree = 2 if steps == 0 else 2 * depth * (2 * depth - 1) ** (steps - 1)
    z, w = np.polynomial.hermite_e.hermegauss(degree // 2 + 1)
    return mean + std * z, w / w.sum()


#: (grid point, task node) pairs per simulator call: the simulator was fastest here at about this
#: size (larger batches of 1×1 problems slowed it down per task on this shared machine).
SURFACE_REFERENCE_TASKS = 16384


def surface_reference(w1, w2, lr, steps, mean, std, x_var):
    """The same objective with the torch simulator: every (grid point, task node) pair is one task
    with a single input x = √V and target a·√V, so its squared loss is ½V(p − a)²; ``simulator.adapt``
    runs the inner loop by autograd; the objective is the π-weighted sum over nodes. Points go
    through the simulator in chunks of about :data:`SURFACE_REFERENCE_TASKS` tasks."""
    import torch

    from linmaml import simulator

    a, pi = _gauss_hermite_tasks(mean, std, 2, steps)
    nodes = len(a)
    per_call = max(1, SURFACE_REFERENCE_TASKS // nodes)
    out = np.empty(len(w1))
    for start in range(0, len(w1), per_call):
        part = slice(start, start + per_call)
        points = len(w1[part])
        W1 = torch.as_tensor(np.repeat(w1[part], nodes), dtype=torch.float64).reshape(-1, 1, 1)
        W2 = torch.as_tensor(np.repeat(w2[part], nodes), dtype=torch.float64).reshape(-1, 1, 1)
        x = torch.full((points * nodes, 1, 1), math.sqrt(x_var), dtype=torch.float64)
        y = torch.as_tensor(np.tile(a, points), dtype=torch.float64).reshape(-1, 1, 1) * math.sqrt(x_var)
        adapted = simulator.adapt([W1, W2], x, y, lr, steps, create_graph=False)
        losses = simulator.task_loss(adapted, x, y, "squared").reshape(points, nodes)
        out[part] = (losses @ torch.as_tensor(pi)).numpy()
    return out


def bench_surface(s: dict, reps: int, log) -> dict:
    from linmaml.closedform import scalar

    rng = np.random.default_rng(0)
    axis = scalar.symmetric_grid(s["grid"], s["range"])
    result = {"what": f"exact depth-2 population MAML objective on a {s['grid']}x{s['grid']} grid "
                      f"(lr {s['lr']}, a ~ N({s['mean']}, {s['std']}^2), V = {s['x_var']}): "
                      "closedform.scalar.surface_grid vs simulator.adapt (autograd) at the same task nodes",
              "steps": {}}
    for k in s["steps"]:
        n_ref = min(s["reference_points"][k], s["grid"] ** 2)
        flat = rng.choice(s["grid"] ** 2, size=n_ref, replace=False)
        i, j = np.unravel_index(flat, (s["grid"], s["grid"]))
        args = (s["lr"], k, s["mean"], s["std"], s["x_var"])

        def closed_form():
            return scalar.surface_grid(2, *args, s["grid"], s["range"])

        def reference():
            return surface_reference(axis[i], axis[j], *args)

        timings = interleaved({"closed_form": closed_form, "reference": reference}, reps, warm_each=True)
        full_points = s["grid"] ** 2
        ratios(timings, "reference", scale={"reference": full_points / n_ref})
        grid = closed_form()["loss"][i, j]
        ref_values = reference()
        agreement = float(np.max(np.abs(grid - ref_values) / np.abs(ref_values)))
        cf = timings["closed_form"]
        entry = {
            "nodes": int(_gauss_hermite_tasks(s["mean"], s["std"], 2, k)[0].size),
            "closed_form": cf,
            "reference_subsample_points": int(n_ref),
            "reference": timings["reference"],
            "reference_full_grid_seconds_estimate": timings["reference"]["median"] * full_points / n_ref,
            "ratio": cf["ratio"],
            "ratio_of_medians": cf["ratio_of_medians"],
            "agreement_max_relative": agreement,
            "closed_form_peak_mib": tracemalloc_peak_mib(closed_form),
        }
        result["steps"][str(k)] = entry
        log(f"surface k={k}: closed form {cf['median']:.4f} s, reference ~{entry['reference_full_grid_seconds_estimate']:.2f} s"
            f" (from {n_ref} points), ratio {cf['ratio']:.0f}x, agreement {agreement:.1e}")
    last = result["steps"][str(max(s["steps"]))]
    result["targets"] = {
        "ratio_at_least": TARGETS["surface_ratio"],
        "seconds_at_most_for_max_steps": TARGETS["surface_seconds_5_steps"],
        "met_ratio": all(e["ratio"] >= TARGETS["surface_ratio"] for e in result["steps"].values()),
        "met_seconds": last["closed_form"]["median"] < TARGETS["surface_seconds_5_steps"],
        "met_agreement": all(e["agreement_max_relative"] < 1e-10 for e in result["steps"].values()),
    }
    return result


# --------------------------------------------------------------------------------------------------
# Case 2: deep linear meta-gradient


def _deep_linear_setup(s: dict):
    from linmaml import simulator
    from linmaml.tasks import RegressionFamily

    family = RegressionFamily(d_in=s["d_in"], d_out=s["d_out"], task_cov=s["task_std"] ** 2,
                              noise_std=s["noise_std"], n_support=s["n_support"], n_query=s["n_query"])
    tasks = family.sample(s["tasks"], 0)
    chain = simulator.deep(s["d_in"], s["d_out"], widths=(s["width"],) * (s["depth"] - 1))
    weights = [w.numpy() for w in chain.init(0)]
    return tasks, weights


def _deep_linear_functions(s: dict):
    import torch

    from linmaml import simulator
    from linmaml.closedform import deep_linear

    tasks, weights = _deep_linear_setup(s)
    torch_weights = [torch.as_tensor(w) for w in weights]
    torch_tasks = tasks.torch()
    return {
        "closed_form": lambda: deep_linear.maml_grad(weights, tasks, s["lr"], s["steps"]),
        "reference": lambda: simulator.maml_gradient(torch_weights, torch_tasks, s["lr"], s["steps"])[1],
    }, tasks, weights


def bench_deep_linear(s: dict, reps: int, memory: bool, log) -> dict:
    from linmaml.closedform import deep_linear

    functions, tasks, weights = _deep_linear_functions(s)
    timings = interleaved(functions, reps)
    ratios(timings, "reference")
    cf_grads = functions["closed_form"]()
    ref_grads = [g.numpy() for g in functions["reference"]()]
    agreement = _relative_error(ref_grads, cf_grads)
    # Stability of the inner rate: the support loss after the inner steps, against before.
    before = [deep_linear.task_loss(weights, tasks.Xs[t], tasks.Ys[t]) for t in range(tasks.Xs.shape[0])]
    after = [deep_linear.task_loss(deep_linear.adapt(weights, tasks.Xs[t], tasks.Ys[t], s["lr"], s["steps"]),
                                   tasks.Xs[t], tasks.Ys[t]) for t in range(tasks.Xs.shape[0])]
    result = {
        "what": f"MAML meta-gradient, deep linear net d_in {s['d_in']}, depth {s['depth']}, width {s['width']}, "
                f"d_out {s['d_out']}, {s['steps']} inner steps of lr {s['lr']}, {s['tasks']} tasks of "
                f"{s['n_support']}+{s['n_query']} points, float64: closedform.maml_grad vs simulator.maml_gradient",
        "closed_form": timings["closed_form"], "reference": timings["reference"],
        "ratio": timings["closed_form"]["ratio"], "ratio_of_medians": timings["closed_form"]["ratio_of_medians"],
        "agreement_max_relative": agreement,
        "support_loss_mean_before_after": [float(np.mean(before)), float(np.mean(after))],
        "closed_form_peak_mib_tracemalloc": tracemalloc_peak_mib(functions["closed_form"]),
    }
    if memory:
        result["memory"] = {name: memory_probe_subprocess("deep_linear", name, s) for name in functions}
    result["targets"] = {"agreement_at_most": TARGETS["deep_linear_agreement"],
                         "met_agreement": agreement <= TARGETS["deep_linear_agreement"],
                         "stable_inner_lr": bool(np.mean(after) < np.mean(before))}
    log(f"deep_linear: closed form {timings['closed_form']['median']:.3f} s, torch {timings['reference']['median']:.3f} s,"
        f" ratio {result['ratio']:.2f}x, agreement {agreement:.1e}")
    return result


# --------------------------------------------------------------------------------------------------
# Cases 3-4: meta-training iterations


def meta_setup(s: dict, case: str, dtype_name: str = "float32", device: str = "cpu", tasks: int | None = None):
    """A learner (seeded weights) and a meta-batch of synthetic Omniglot-sized episodes (pixels in
    [0, 1), labels grouped by class) for ``case`` (maml, kfo, anil)."""
    import torch

    from linmaml.benchmarks.learners import build_learner

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    learner = build_learner(image_shape=(1, s["image"], s["image"]), ways=s["ways"], inner_lr=s["inner_lr"],
                            steps=s["steps"], layers=s["layers"], hidden=s["hidden"], **META_CASES[case])
    learner = learner.to(device=device, dtype=dtype).train()
    M = s["meta_batch"] if tasks is None else tasks
    g = torch.Generator().manual_seed(1)
    n_s, n_q = s["ways"] * s["shots"], s["ways"] * s["query"]
    xs = torch.rand(M, n_s, 1, s["image"], s["image"], generator=g, dtype=torch.float64)
    xq = torch.rand(M, n_q, 1, s["image"], s["image"], generator=g, dtype=torch.float64)
    ys = torch.arange(s["ways"]).repeat_interleave(s["shots"]).repeat(M, 1)
    yq = torch.arange(s["ways"]).repeat_interleave(s["query"]).repeat(M, 1)
    batch = (xs.to(device, dtype), ys.to(device), xq.to(device, dtype), yq.to(device))
    return learner, batch


def textbook_twin(learner, s: dict):
    """The bench's CNN (settings ``s``) written the textbook way — conv → BatchNorm → ReLU → 2×2
    max-pool per block, as the standard MAML backbone is usually coded — with the same parameter
    names, for the plain reference. Its own parameters are never used: the reference calls it through
    ``functional_call`` with the learner's tensors, so the gradients reach the learner. (linmaml's
    :class:`~linmaml.benchmarks.models.ConvNet` pools before its ReLU: the same function.)"""
    import types

    import torch

    from linmaml.benchmarks.models import ConvNet

    def textbook_forward(block, x):
        return block.pool(torch.relu(block.norm(block.conv(x))))

    net = ConvNet(in_channels=1, ways=s["ways"], blocks=s["layers"], filters=s["hidden"], image_size=s["image"])
    for block in list(net.features)[:-1]:
        block.forward = types.MethodType(textbook_forward, block)
    return net.to(next(learner.parameters()).dtype)


def reference_meta_gradient(learner, batch, scale: float, network=None) -> None:
    """The plain reference: a Python loop over tasks; per task, the inner steps with
    ``functional_call`` and ``autograd.grad(create_graph=True)`` (the learner's transform maps the
    gradients to updates: the identity for MAML, KFO's Kronecker factors for KFO), the query loss,
    and ``(scale · loss).backward()`` before the next task. ``network``: the module evaluated with
    the learner's parameters (default the learner's own; :func:`textbook_twin` for the textbook CNN)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    anil = hasattr(learner, "features")
    own = learner.head if anil else learner.model
    names = list(learner.adapted_names)
    base = dict(own.named_parameters())
    if network is None:
        module, features = own, (learner.features if anil else None)
    else:
        module = network.head if anil else network
        feature_params = dict(learner.features.named_parameters()) if anil else {}
        features = (lambda x: functional_call(network.features, feature_params, (x,))) if anil else None
    transform_params = dict(learner.transform.named_parameters())
    xs, ys, xq, yq = batch
    for m in range(xs.shape[0]):
        support = features(xs[m]) if anil else xs[m]
        fast = {n: base[n] for n in names}
        for lr in learner.lrs:
            loss = F.cross_entropy(functional_call(module, {**base, **fast}, (support,)), ys[m])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            updates = learner.transform.update(dict(zip(names, grads)), transform_params)
            fast = {n: fast[n] - lr * updates[n] for n in names}
        query = features(xq[m]) if anil else xq[m]
        loss = F.cross_entropy(functional_call(module, {**base, **fast}, (query,)), yq[m])
        (scale * loss).backward()


def meta_variants(learner, case: str, s: dict, compiled: bool, device: str, only=None) -> dict:
    """name -> step(batch, scale) for every variant that is available (``only``: just that one)."""
    import torch.nn.functional as F

    from linmaml.benchmarks import train
    from linmaml.benchmarks.models import to_channels_last
    from linmaml.meta.batched import MetaGradient

    wanted = (lambda name: only is None or name == only)
    variants = {}
    if wanted("reference"):
        twin = textbook_twin(learner, s).to(device)
        variants["reference"] = lambda batch, scale: reference_meta_gradient(learner, batch, scale, twin)
    if wanted("reference_convnet"):
        variants["reference_convnet"] = lambda batch, scale: reference_meta_gradient(learner, batch, scale)
    if wanted("reference_channels_last"):
        # The plain loop on linmaml's ConvNet given channels-last episodes (converted inside the
        # timing, as the training step does): the memory layout's share of the gain.
        def plain_channels_last(batch, scale):
            xs, ys, xq, yq = batch
            reference_meta_gradient(learner, (to_channels_last(xs), ys, to_channels_last(xq), yq), scale)
        variants["reference_channels_last"] = plain_channels_last
    if wanted("train_step"):
        variants["train_step"] = train.make_meta_step(learner, train.TrainConfig())
    if wanted("loop"):
        variants["loop"] = train.make_meta_step(learner, train.TrainConfig(batching="loop"))
    if case in s["batched_cases"] and wanted("batched"):
        whole = MetaGradient(learner, F.cross_entropy, tasks_per_chunk=None)
        variants["batched"] = lambda batch, scale: whole(*batch, scale=scale)
    if compiled and wanted("compiled"):
        variants["compiled"] = train.make_meta_step(learner, train.TrainConfig(compile=True))
    return variants


VARIANT_WHAT = {
    "reference": "plain loop in the benchmark: functional_call + autograd.grad(create_graph=True), backward per "
                 "task, on the textbook CNN (conv, BatchNorm, ReLU, max-pool), episodes as given",
    "reference_convnet": "the same plain loop on linmaml's ConvNet (max-pool before ReLU, first BatchNorm folded "
                         "into its convolution), episodes as given",
    "reference_channels_last": "the same plain loop on linmaml's ConvNet with channels-last episodes",
    "train_step": "the step of `linmaml train` with its defaults: channels-last episodes, the inner loops of 4 "
                  "tasks vmapped together, queries one task at a time (--batching split)",
    "loop": "`linmaml train --batching loop`: channels-last episodes, one task at a time",
    "batched": "meta.batched.MetaGradient, whole meta-batch in one vmapped computation (default layout)",
    "compiled": "the step of `linmaml train --compile` (the same, through torch.compile)",
}


def _grads(learner):
    return [(p.grad.detach().double().cpu().numpy() if p.grad is not None else np.zeros(tuple(p.shape)))
            for p in learner.parameters()]


def _run_variant(learner, step, batch, scale):
    for p in learner.parameters():
        p.grad = None
    step(batch, scale)


def _gradients_of(learner, variants, batch) -> dict:
    out = {}
    for name, step in variants.items():
        _run_variant(learner, step, batch, 1.0 / batch[0].shape[0])
        out[name] = _grads(learner)
    return out


def meta_agreement(case: str, s: dict, device: str) -> dict:
    """Meta-gradients of every variant on the first ``agreement_tasks`` tasks: float64 against the
    reference loop (exact up to rounding), and float32 against that float64 value. The compiled
    variant's float64 check uses a ``compiled_check_layers``-block CNN of the same kind (compiling
    the full one once more would take minutes); its float32 error is measured on the full model."""
    small = s["agreement_tasks"]
    learner64, batch64 = meta_setup(s, case, "float64", device, tasks=small)
    exact = _gradients_of(learner64, meta_variants(learner64, case, s, False, device), batch64)
    agreement64 = {name: _relative_error(exact["reference"], g) for name, g in exact.items() if name != "reference"}
    learner32, batch32 = meta_setup(s, case, "float32", device, tasks=small)
    float32 = _gradients_of(learner32, meta_variants(learner32, case, s, s["compiled"], device), batch32)
    error32 = {name: _relative_error(exact["reference"], g) for name, g in float32.items()}
    note = None
    if s["compiled"]:
        shallow = {**s, "layers": s["compiled_check_layers"]}
        learner64, batch64 = meta_setup(shallow, case, "float64", device, tasks=small)
        pair = _gradients_of(learner64, {**meta_variants(learner64, case, shallow, False, device, only="reference"),
                                         **meta_variants(learner64, case, shallow, True, device, only="compiled")},
                             batch64)
        agreement64["compiled"] = _relative_error(pair["reference"], pair["compiled"])
        note = f"compiled: float64 check on a {shallow['layers']}-block CNN (same code path, faster to compile)"
    return {"agreement_float64_max_relative": agreement64, "agreement_tasks": small,
            "float32_error_vs_float64_max_relative": error32, "note": note}


def bench_meta(case: str, s: dict, reps: int, device: str, memory: bool, log) -> dict:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else None
    learner, batch = meta_setup(s, case, "float32", device)
    variants = meta_variants(learner, case, s, s["compiled"], device)
    M = batch[0].shape[0]
    log(f"{case}: warming up {', '.join(variants)}" + (" (compiling: minutes)" if s["compiled"] else ""))
    began = time.perf_counter()
    functions = {name: (lambda step=step: _run_variant(learner, step, batch, 1.0 / M)) for name, step in variants.items()}
    timings = interleaved(functions, reps, sync=sync)
    ratios(timings, "reference")
    agreement = meta_agreement(case, s, device)
    result = {
        "what": f"one meta-iteration: {case} ({'ANIL' if case == 'anil' else 'second-order MAML'}"
                f"{' + KFO' if case == 'kfo' else ''}), {s['image']}x{s['image']} images, {s['ways']}-way "
                f"{s['shots']}-shot, {s['query']} queries per class, meta-batch {M}, {s['steps']} inner step(s) of "
                f"{s['inner_lr']}, {s['layers']}-block {s['hidden']}-filter CNN, float32, synthetic pixels",
        "variants": {name: {"what": VARIANT_WHAT[name], **timings[name],
                            "iterations_per_second": 1.0 / timings[name]["median"]} for name in functions},
        **agreement,
        "seconds_including_warmup": time.perf_counter() - began,
    }
    if memory:
        if device == "cuda":
            result["memory"] = {name: cuda_peak_mib(functions[name]) for name in functions}
        else:
            result["memory"] = {name: memory_probe_subprocess(case, name, s) for name in functions}
    best = max((n for n in functions if n != "reference"), key=lambda n: timings[n]["ratio"])
    result["best"] = best
    result["targets"] = _meta_targets(result, best)
    for name in functions:
        t = timings[name]
        mem = result.get("memory", {}).get(name, {}).get("peak_mib")
        agree = result["agreement_float64_max_relative"].get(name)
        log(f"{case} {name}: {t['median']:.3f} s (IQR {t['q1']:.3f}-{t['q3']:.3f}), ratio {t['ratio']:.2f}x"
            f" (CPU {t.get('cpu_ratio', float('nan')):.2f}x), warm-up {t['warmup_seconds']:.1f} s"
            + (f", peak {mem:.0f} MiB" if mem else "") + (f", float64 agreement {agree:.1e}" if agree is not None else ""))
    return result


def _meta_targets(result: dict, best: str) -> dict:
    variants = result["variants"]
    memory = result.get("memory")

    def memory_ok(name):
        if not memory or name not in memory or "reference" not in memory:
            return None
        return memory[name]["peak_mib"] <= memory["reference"]["peak_mib"] * 1.02  # 2 %: allocator noise

    out = {"ratio_at_least": TARGETS["meta_ratio"], "agreement_float64_at_most": TARGETS["meta_agreement_float64"],
           "met_agreement": all(v <= TARGETS["meta_agreement_float64"]
                                for v in result["agreement_float64_max_relative"].values())}
    for name in ("train_step", best):
        if name in variants:
            out[name] = {"ratio": variants[name]["ratio"], "met_ratio": variants[name]["ratio"] >= TARGETS["meta_ratio"],
                         "memory_not_higher": memory_ok(name)}
    return out


def cuda_peak_mib(fn) -> dict:
    import torch

    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "before_mib": before / 2**20,
            "method": "torch.cuda.max_memory_allocated over one iteration after a warm-up"}


# --------------------------------------------------------------------------------------------------
# Memory probes (a fresh process per variant)


def memory_probe_subprocess(case: str, variant: str, settings: dict, threads: int | None = None) -> dict:
    """Run :func:`memory_probe` in a fresh interpreter; returns its JSON (or {"error": ...})."""
    threads = threads or _THREADS[0]
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--memory-probe",
               json.dumps({"case": case, "variant": variant, "settings": settings, "threads": threads})]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "memory probe timed out"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"memory probe failed (exit {done.returncode}): {tail[0]}"}
    return json.loads(lines[-1])


def _release_free_memory() -> None:
    """Hand memory freed after the warm-up back to the system (glibc ``malloc_trim``), so that the
    resident size before the measured iteration is live memory, not the allocator's free lists."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_probe(case: str, variant: str, settings: dict, threads: int) -> dict:
    """In this (fresh) process: set up ``case``, run ``variant`` once (warm-up, compilation), reset
    the resident high-water mark, run it once more and report the peak (MiB)."""
    import torch

    torch.set_num_threads(threads)
    # Load the code torch.func brings in on first use (tens of MiB of modules) in every probe alike,
    # so that the peaks compare the memory of the computations rather than which libraries ran.
    torch.func.vmap(torch.func.grad(lambda v: (v * v).sum()))(torch.ones(2, 3))
    baseline = _proc_status_kib("VmRSS")["VmRSS"]
    if case == "deep_linear":
        functions, _, _ = _deep_linear_functions(settings)
        run = functions[variant]
    else:
        learner, batch = meta_setup(settings, case)
        step = meta_variants(learner, case, settings, variant == "compiled", "cpu", only=variant)[variant]
        M = batch[0].shape[0]

        def run():
            _run_variant(learner, step, batch, 1.0 / M)
    run()
    gc.collect()
    _release_free_memory()
    exact = True
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
    except OSError:
        exact = False  # the high-water mark then includes the warm-up (same computation) and setup
    before = _proc_status_kib("VmRSS")["VmRSS"]
    run()
    peak = _proc_status_kib("VmHWM")["VmHWM"]
    return {"peak_mib": peak / 1024, "resident_before_step_mib": before / 1024, "after_imports_mib": baseline / 1024,
            "method": "VmHWM of a fresh process during one iteration after a warm-up iteration (torch.func "
                      "loaded and freed memory trimmed before it)"
                      + ("" if exact else " (high-water mark not resettable here: includes the warm-up)")}


# --------------------------------------------------------------------------------------------------
# Driver, table, CLI

_THREADS = [2]


def run(out_dir: pathlib.Path, quick: bool = False, only=None, device: str = "cpu", threads: int = 2,
        log=None) -> dict:
    """Run the cases (``only``: a subset of :data:`CASES`), print progress with ``log``, write
    ``<out_dir>/bench.json`` atomically and return its dict."""
    import torch

    from linmaml._io import atomic_write_json

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    cases = list(CASES) if not only else list(only)
    for case in cases:
        if case not in CASES:
            raise ValueError(f"only: expected case names among {', '.join(CASES)}, got {case!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but torch sees no GPU")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive integer, got {threads!r}")
    settings = QUICK if quick else FULL
    out_dir = pathlib.Path(out_dir)
    torch.set_num_threads(threads)
    _THREADS[0] = threads
    if device == "cuda":
        # TF32 for the benchmark's timings only (the exactness checks run in float64, untouched by it).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    began = time.perf_counter()
    info = machine()
    info.update(torch=torch.__version__, torch_threads=threads, device=device)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    record = {"figure": NAME, "quick": quick, "machine": info,
              "settings": {"reps": settings["reps"], "threads": threads, "device": device,
                           **{k: v for k, v in settings.items() if k != "reps"}},
              "method": __doc__.split("Method\n------\n", 1)[1].split("\n\nRun:", 1)[0],
              "cases": {}}
    name = NAME if device == "cpu" else f"{NAME}_{device}"
    previous = _previous_cases(out_dir / f"{name}.json", quick, cases) if only else {}
    record["settings"]["surface"] = {**settings["surface"],
                                     "reference_points": {str(k): v for k, v in
                                                          settings["surface"]["reference_points"].items()}}
    memory = settings["meta"]["memory"] and not quick
    for case in cases:
        if case == "surface":
            if device == "cuda":
                continue  # numpy closed form: nothing for the GPU to do
            record["cases"]["surface"] = bench_surface(settings["surface"], settings["reps"], log)
        elif case == "deep_linear":
            if device == "cuda":
                continue
            record["cases"]["deep_linear"] = bench_deep_linear(settings["deep_linear"], settings["reps"], memory, log)
        else:
            record["cases"][case] = bench_meta(case, settings["meta"], settings["reps"], device,
                                               settings["meta"]["memory"], log)
    if hasattr(os, "getloadavg"):
        record["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    record["seconds"] = round(time.perf_counter() - began, 1)
    if previous:
        # --only: the other cases stay as the previous run measured them, and the record says so.
        earlier_machine = previous.pop("_machine")
        measured = record["cases"]
        record["cases"] = {case: measured.get(case, previous.get(case)) for case in CASES
                           if case in measured or case in previous}
        record["cases_kept_from_previous_run"] = {"cases": sorted(previous), "machine": earlier_machine}
    record["numbers"] = summary_numbers(record)
    atomic_write_json(out_dir / f"{name}.json", _finite(record))
    return record


def _previous_cases(path: pathlib.Path, quick: bool, running) -> dict:
    """The cases of an earlier ``bench.json`` at ``path`` that this run does not redo (same mode),
    plus ``"_machine"``: that run's machine record; {} when there is none or it does not match."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict) or earlier.get("quick") != quick or not isinstance(earlier.get("cases"), dict):
        return {}
    kept = {case: value for case, value in earlier["cases"].items() if case in CASES and case not in running}
    return {**kept, "_machine": earlier.get("machine")} if kept else {}


def _finite(value):
    """JSON-safe copy: non-finite floats become None (the writer refuses NaN)."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def summary_numbers(record: dict) -> dict:
    """The headline numbers: one ratio (and time) per case/variant."""
    numbers = {}
    for case, entry in record["cases"].items():
        if case == "surface":
            for k, e in entry["steps"].items():
                numbers[f"surface_{k}_steps_seconds"] = e["closed_form"]["median"]
                numbers[f"surface_{k}_steps_ratio"] = e["ratio"]
        elif case == "deep_linear":
            numbers["deep_linear_ratio"] = entry["ratio"]
            numbers["deep_linear_agreement"] = entry["agreement_max_relative"]
        else:
            for name, v in entry["variants"].items():
                numbers[f"{case}_{name}_seconds"] = v["median"]
                numbers[f"{case}_{name}_ratio"] = v["ratio"]
    return numbers


def table(record: dict) -> str:
    """The results as a fixed-width text table (also valid Markdown)."""
    rows = [("case", "variant", "median s", "IQR s", "ratio", "CPU ratio", "peak MiB", "agreement")]

    def fmt(x, spec):
        return "—" if x is None else format(x, spec)

    for case, entry in record["cases"].items():
        if case == "surface":
            for k, e in entry["steps"].items():
                cf, _ref = e["closed_form"], e["reference"]
                rows.append((f"surface k={k}", "closed form", fmt(cf["median"], ".4f"),
                             f"{cf['q1']:.4f}–{cf['q3']:.4f}", f"{e['ratio']:.0f}×", f"{cf['cpu_ratio']:.0f}×",
                             fmt(e["closed_form_peak_mib"], ".1f"), f"{e['agreement_max_relative']:.0e}"))
                rows.append(("", f"torch (est. from {e['reference_subsample_points']} pts)",
                             fmt(e["reference_full_grid_seconds_estimate"], ".2f"), "", "1×", "1×", "—", ""))
        elif case == "deep_linear":
            mem = entry.get("memory", {})
            for name, label in (("closed_form", "closedform.maml_grad"), ("reference", "simulator (torch)")):
                t = entry[name]
                rows.append(("deep_linear" if name == "closed_form" else "", label, fmt(t["median"], ".3f"),
                             f"{t['q1']:.3f}–{t['q3']:.3f}", f"{t['ratio']:.2f}×", f"{t['cpu_ratio']:.2f}×",
                             fmt(mem.get(name, {}).get("peak_mib"), ".0f"),
                             f"{entry['agreement_max_relative']:.0e}" if name == "closed_form" else ""))
        else:
            mem = entry.get("memory", {})
            for i, (name, t) in enumerate(entry["variants"].items()):
                agree = entry["agreement_float64_max_relative"].get(name)
                rows.append((case if i == 0 else "", name, fmt(t["median"], ".3f"), f"{t['q1']:.3f}–{t['q3']:.3f}",
                             f"{t['ratio']:.2f}×", f"{t['cpu_ratio']:.2f}×", fmt(mem.get(name, {}).get("peak_mib"), ".0f"),
                             f"{agree:.0e}" if agree is not None else ""))
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    m = record["machine"]
    head = (f"{m.get('cpu_model') or m['processor']}, {m['torch_threads']} torch threads, device {m['device']}"
            + (f" ({m['gpu']})" if m.get("gpu") else "") + f", torch {m['torch']}, numpy {m['numpy']}"
            + (f", load average {m['load_average_at_start']} → {m.get('load_average_at_end')}"
               if "load_average_at_start" in m else ""))
    return head + "\n" + "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[1] / "figures")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs and agrees")
    parser.add_argument("--only", action="append", choices=CASES, help="run only this case (repeatable)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 2; 1 in quick mode, whose tiny ops only wait on each other)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        spec = json.loads(args.memory_probe)
        settings = spec["settings"]
        print(json.dumps(memory_probe(spec["case"], spec["variant"], settings, spec["threads"])))
        return 0
    threads = args.threads if args.threads is not None else (1 if args.quick else 2)
    record = run(args.out, quick=args.quick, only=args.only, device=args.device, threads=threads)
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
