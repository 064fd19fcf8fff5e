"""Benchmark case ``allocator`` (:mod:`linmaml.analysis.bench`): the MAML meta-iteration under glibc's
own malloc settings and under ``--allocator keep`` (:mod:`linmaml.benchmarks.allocator`).

The allocator is a setting of the whole process, and once changed it cannot be put back, so the two
policies cannot share one process as the other cases' variants do. Each round therefore starts two
fresh processes, one per policy, one after the other; each builds the ``maml`` case's learner and
meta-batch, warms up, and times ``linmaml train``'s step and the plain reference loop interleaved.
The ratio of a round is the ``system`` process's median time over the ``keep`` process's; we report
the median over rounds (rounds alternate which policy runs first, so a drifting load favours
neither).
"""
from __future__ import annotations

import statistics
import time

from linmaml.analysis.bench_measure import PROBES, interleaved, probe_subprocess

#: What each probe times: the meta cases' variants of these names.
TIMED = ("reference", "train_step")


def allocator_probe(spec: dict) -> dict:
    """In this (fresh) process: apply ``spec["allocator"]``, set up the maml case with
    ``spec["settings"]`` and time :data:`TIMED` interleaved, ``spec["reps"]`` times."""
    import torch

    from linmaml.analysis.bench_meta import meta_setup, meta_variants, run_variant
    from linmaml.benchmarks.allocator import use_allocator

    applied = use_allocator(spec["allocator"])
    torch.set_num_threads(spec["threads"])
    settings = spec["settings"]
    learner, batch = meta_setup(settings, "maml")
    M = batch[0].shape[0]
    variants = meta_variants(learner, "maml", settings, False, "cpu")
    functions = {name: (lambda step=variants[name]: run_variant(learner, step, batch, 1.0 / M)) for name in TIMED}
    timings = interleaved(functions, spec["reps"])
    return {"allocator": str(applied), **{name: {"median": t["median"], "samples": t["samples"]}
                                     for name, t in timings.items()}}


def bench_allocator(s: dict, rounds: int, reps: int, log) -> dict:
    """``rounds`` rounds of one fresh process per policy (module docstring), ``reps`` timed calls of
    each variant per process, on the meta cases' settings ``s``."""
    began = time.perf_counter()
    per_round = []
    for r in range(rounds):
        order = ("system", "keep") if r % 2 == 0 else ("keep", "system")
        results = {}
        for policy in order:
            results[policy] = probe_subprocess("allocator", {"allocator": policy, "settings": s, "reps": reps,
                                                             "threads": PROBES.threads})
            if "error" in results[policy]:
                raise RuntimeError(f"allocator case: the {policy!r} process failed: {results[policy]['error']}")
        per_round.append(results)
        log(f"allocator round {r + 1}/{rounds}: " + ", ".join(
            f"{policy} {name} {results[policy][name]['median']:.3f} s" for policy in ("system", "keep") for name in TIMED))
    speedups = {name: [rnd["system"][name]["median"] / rnd["keep"][name]["median"] for rnd in per_round]
                for name in TIMED}
    result = {
        "what": "the maml case's meta-iteration (`linmaml train`'s step, and the plain reference loop) in fresh "
                "processes under glibc's own malloc settings ('system') and under --allocator keep; speed-up = "
                "system time / keep time, median over rounds",
        "policies": {policy: per_round[0][policy]["allocator"] for policy in ("system", "keep")},
        "rounds": [{policy: {name: rnd[policy][name]["median"] for name in TIMED} for policy in ("system", "keep")}
                   for rnd in per_round],
        "speedup": {name: statistics.median(values) for name, values in speedups.items()},
        "speedup_per_round": speedups,
        "ratio_train_step_vs_reference": {
            policy: statistics.median(rnd[policy]["reference"]["median"] / rnd[policy]["train_step"]["median"]
                                      for rnd in per_round) for policy in ("system", "keep")},
        "seconds": time.perf_counter() - began,
    }
    log("allocator: --allocator keep speeds up " + ", ".join(f"{name} {v:.2f}x" for name, v in result["speedup"].items())
        + "; train_step / reference: " + ", ".join(f"{p} {v:.2f}x" for p, v in result["ratio_train_step_vs_reference"].items()))
    return result
