"""Measurement helpers of the benchmark (:mod:`linmaml.bench.harness`): interleaved timings and their
ratios, memory peaks (tracemalloc, a fresh process's resident high-water mark, CUDA), one relative
error for gradients, and the machine record. Nothing here knows the cases."""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import torch



@dataclasses.dataclass
class ProbeSettings:
    """What the fresh probe processes of a benchmark run repeat from it: torch ``threads`` and the
    ``allocator`` policy ("keep" or "system", :mod:`linmaml.benchmarks.allocator`)."""

    threads: int = 2
    allocator: str = "keep"


#: The settings of the current benchmark run, for its probes. Scope: this process; set by
#: :func:`linmaml.bench.harness.run` when it starts (they stay after it returns), read when a probe starts.
PROBES = ProbeSettings()

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


def proc_status_kib(*keys) -> dict:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0])
    return values


def relative_error(reference, candidate) -> float:
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


def cuda_peak_mib(fn) -> dict:
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "before_mib": before / 2**20,
            "method": "torch.cuda.max_memory_allocated over one iteration after a warm-up"}


def memory_probe_subprocess(case: str, variant: str, settings: dict, threads: int | None = None) -> dict:
    """Run :func:`linmaml.bench.harness.memory_probe` in a fresh interpreter; returns its JSON (or
    {"error": ...})."""
    return probe_subprocess("memory", {"case": case, "variant": variant, "settings": settings,
                                       "threads": threads or PROBES.threads, "allocator": PROBES.allocator})


def probe_subprocess(kind: str, spec: dict) -> dict:
    """Run ``python -m linmaml.bench.harness --<kind>-probe SPEC`` (the installed package, not a file
    path) in a fresh interpreter and return the JSON it prints last (or {"error": ...})."""
    command = [sys.executable, "-m", "linmaml.bench.harness", f"--{kind}-probe", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind} probe timed out"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{kind} probe failed (exit {done.returncode}): {tail[0]}"}
    return json.loads(lines[-1])


def release_free_memory() -> None:
    """Hand memory freed after the warm-up back to the system (glibc ``malloc_trim``), so that the
    resident size before the measured iteration is live memory, not the allocator's free lists."""
    try:  # only where glibc's libc.so.6 is there to load
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
