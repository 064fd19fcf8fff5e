"""Performance benchmark: every case timed against its reference in the same process.

Cases
-----
``surface``      the exact depth-2 population MAML objective of the scalar chain on a 400×400 grid
                 with 1, 3 and 5 inner steps: ``closedform.scalar.surface_grid`` against the torch
                 simulator (``simulator.adapt``, autograd inner loop) evaluating the same objective at
                 the same Gauss–Hermite task nodes. The reference is timed on a random subsample of
                 the grid points and scaled per point (its cost is linear in the points).
``deep_linear``  meta-gradient of a deep linear network (d_in 100, depth 4, width 100, output 1, 5
                 inner steps, 100 tasks of 20 support + 20 query points): ``closedform.maml_grad``
                 against ``simulator.maml_grad`` (torch autograd through linmaml.meta), float64.
``maml``         one meta-iteration of second-order MAML on Omniglot-sized episodes (28×28, 5-way
                 1-shot, 15 queries per class, meta-batch 32, 1 inner step, the 4-block 64-filter
                 CNN), float32, against a plain reference written here: a Python loop over the tasks,
                 each adapted with ``torch.func.functional_call`` + ``torch.autograd.grad(create_graph=
                 True)`` and backpropagated (query loss / M) before the next.
``kfo``, ``anil``
                 the same meta-iteration with the KFO meta-optimizer, and with ANIL.
``allocator``    the ``maml`` case's ``linmaml train`` step and reference in fresh processes under
                 glibc's own malloc settings and under ``--allocator keep`` (memory freed by a step
                 kept for the next), alternated (:mod:`linmaml.bench.case_allocator`).
``transforms``   ``linmaml train``'s step with each learned transform (``--transform kfo``,
                 ``metacurvature``, ``metasgd``, ``rates``) against plain MAML's, interleaved, at the
                 sizes of ``configs/omniglot-5w1s.json`` (5-way 1-shot, 5 queries per class,
                 meta-batch 16, 1 inner step, strided 4-block 64-filter CNN): ``over_maml``, the
                 median per-round time ratio transform/MAML, is what a transform costs
                 (:mod:`linmaml.bench.case_transforms`).
``sinusoid``     the per-task MAML loop (``learner.adapt`` per task) on Finn et al.'s sinusoid MLP
                 against learn2learn-style and higher-style loops written in the benchmark, and the
                 vmapped engine, at 1 step second/first order and 5 steps (see
                 :mod:`linmaml.bench.case_sinusoid`).

Meta-iteration variants: ``reference`` (above, on the textbook CNN — conv, BatchNorm, ReLU, max-pool
— with the episodes in torch's default layout); ``reference_convnet`` (the same loop on linmaml's
ConvNet, which pools before its ReLU and folds its first BatchNorm into the convolution: the model's
own gain); ``reference_channels_last`` (that loop on channels-last episodes: the layout's gain);
``train_step`` (``benchmarks.config.make_engine`` with the defaults: what ``linmaml train`` runs
per iteration — inner loops of 4 tasks vmapped, queries one task at a time); ``loop`` (``linmaml
train --batching loop``: one task at a time); ``batched`` (``meta.engine.Engine(strategy="vmap",
tasks_per_chunk=None)``: the whole meta-batch in one vmapped computation) and ``compiled`` (``linmaml train --compile``; full
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
* Threads: ``torch.set_num_threads(threads)`` (default 1, as every linmaml command; the committed CNN cases used 2); numpy's surface kernel uses its own
  thread pool of at most the available cores.
* Allocator: every case but ``allocator`` runs under the policy ``linmaml train`` uses by default,
  ``keep`` (glibc keeps freed memory for reuse; :mod:`linmaml.benchmarks.allocator`), or under
  ``--allocator system``; the record's machine entry says which, and the memory probes use the same.

Modules: :mod:`~linmaml.bench.sizes` (sizes, targets), :mod:`~linmaml.bench.timing`
(timing and memory helpers), :mod:`~linmaml.bench.case_closedform` (surface, deep_linear),
:mod:`~linmaml.bench.case_sinusoid` (sinusoid), :mod:`~linmaml.bench.case_meta` (maml, kfo,
anil), :mod:`~linmaml.bench.case_allocator` (allocator); this module runs them and writes the
record.

Run: ``linmaml bench [--quick] [--only CASE ...] [--out DIR] [--device cpu|cuda] [--threads N]
[--allocator keep|system]`` (or
``python -m linmaml.bench``); prints the table and
writes ``DIR/bench.json``.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

from linmaml import _io
from linmaml._io import atomic_write_json
from linmaml.bench.case_allocator import allocator_probe, bench_allocator
from linmaml.bench.case_closedform import bench_deep_linear, bench_surface, deep_linear_functions
from linmaml.bench.case_meta import bench_meta, meta_setup, meta_variants, run_variant
from linmaml.bench.case_sinusoid import bench_sinusoid
from linmaml.bench.case_transforms import bench_transforms
from linmaml.bench.sizes import CASES, FULL, NAME, QUICK, TARGETS  # noqa: F401
from linmaml.bench.timing import (PROBES, interleaved, machine, memory_probe_subprocess,  # noqa: F401
                                            proc_status_kib, ratios, relative_error, release_free_memory,
                                            tracemalloc_peak_mib)
from linmaml.benchmarks import allocator as malloc_policy
from linmaml.benchmarks.allocator import apply_for_command, default_policy, use_allocator
from linmaml.errors import ArgumentError


def memory_probe(case: str, variant: str, settings: dict, threads: int, allocator: str = "keep") -> dict:
    """In this (fresh) process: set up ``case``, run ``variant`` once (warm-up, compilation), reset
    the resident high-water mark, run it once more and report the peak (MiB)."""
    use_allocator(allocator)
    torch.set_num_threads(threads)
    # Load the code torch.func brings in on first use (tens of MiB of modules) in every probe alike,
    # so that the peaks compare the memory of the computations rather than which libraries ran.
    torch.func.vmap(torch.func.grad(lambda v: (v * v).sum()))(torch.ones(2, 3))
    baseline = proc_status_kib("VmRSS")["VmRSS"]
    if case == "deep_linear":
        functions, _, _ = deep_linear_functions(settings)
        run = functions[variant]
    else:
        learner, batch = meta_setup(settings, case)
        step = meta_variants(learner, case, settings, variant == "compiled", "cpu", only=variant)[variant]
        M = batch[0].shape[0]

        def run():
            run_variant(learner, step, batch, 1.0 / M)
    run()
    gc.collect()
    release_free_memory()
    exact = True
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
    except OSError:
        exact = False  # the high-water mark then includes the warm-up (same computation) and setup
    before = proc_status_kib("VmRSS")["VmRSS"]
    run()
    peak = proc_status_kib("VmHWM")["VmHWM"]
    return {"peak_mib": peak / 1024, "resident_before_step_mib": before / 1024, "after_imports_mib": baseline / 1024,
            "method": "VmHWM of a fresh process during one iteration after a warm-up iteration (torch.func "
                      "loaded and freed memory trimmed before it)"
                      + ("" if exact else " (high-water mark not resettable here: includes the warm-up)")}


# --------------------------------------------------------------------------------------------------
# Driver, table, CLI

def run(out_dir: pathlib.Path, quick: bool = False, only=None, device: str = "cpu", threads: int = 1,
        log=None, allocator: str | None = None) -> dict:
    """Run the cases (``only``: a subset of :data:`CASES`), print progress with ``log``, write
    ``<out_dir>/bench.json`` atomically and return its dict. ``allocator`` ("keep" or "system"), if
    given, is applied to this process first (:func:`linmaml.benchmarks.allocator.use_allocator`);
    None leaves the process's malloc as it is (the command line applies its policy itself). The
    record says which settings were in effect."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    cases = list(CASES) if not only else list(only)
    for case in cases:
        if case not in CASES:
            raise ArgumentError("only", f"expected case names among {', '.join(CASES)}, got {case!r}")
    if device not in ("cpu", "cuda"):
        raise ArgumentError("device", f"expected cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("device", "cuda requested but torch sees no GPU")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ArgumentError("threads", f"expected a positive integer, got {threads!r}")
    settings = QUICK if quick else FULL
    out_dir = pathlib.Path(out_dir)
    applied_allocator = malloc_policy.current() if allocator is None else malloc_policy.use_allocator(allocator)
    torch.set_num_threads(threads)
    # the probes' fresh processes take the same settings
    PROBES.threads, PROBES.allocator = threads, "keep" if applied_allocator.in_effect == "keep" else "system"
    if device == "cuda":
        # TF32 for the benchmark's timings only (the exactness checks run in float64, untouched by it).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    began = time.perf_counter()
    info = machine()
    info.update(torch=torch.__version__, torch_threads=threads, device=device, allocator=str(applied_allocator))
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
        case_began, load_before = time.perf_counter(), _load_average()
        if case == "surface":
            if device == "cuda":
                continue  # numpy closed form: nothing for the GPU to do
            record["cases"]["surface"] = bench_surface(settings["surface"], settings["reps"], log)
        elif case == "deep_linear":
            if device == "cuda":
                continue
            record["cases"]["deep_linear"] = bench_deep_linear(settings["deep_linear"], settings["reps"], memory, log)
        elif case == "sinusoid":
            if device == "cuda":
                continue  # the per-task loop's Python overheads: a CPU question
            record["cases"]["sinusoid"] = bench_sinusoid(settings["sinusoid"], log)
        elif case == "allocator":
            if device == "cuda":
                continue  # the host allocator: a CPU question
            record["cases"]["allocator"] = bench_allocator(settings["meta"], settings["allocator"]["rounds"],
                                                           settings["allocator"]["reps"], log)
        elif case == "transforms":
            record["cases"]["transforms"] = bench_transforms(settings["transforms"], device, log)
        else:
            record["cases"][case] = bench_meta(case, settings["meta"], settings["reps"], device,
                                               settings["meta"]["memory"], log)
        if case in record["cases"]:
            # Each case carries how it was measured, so that it stays true when later --only runs
            # keep it beside cases measured otherwise (other threads, allocator, day).
            record["cases"][case]["measured_with"] = {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu_model": info.get("cpu_model"),
                "torch_threads": threads, "device": device, "allocator": str(applied_allocator),
                "load_average_at_start": load_before, "load_average_at_end": _load_average(),
                "seconds": round(time.perf_counter() - case_began, 1)}
    if hasattr(os, "getloadavg"):
        record["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    record["seconds"] = round(time.perf_counter() - began, 1)
    if previous:
        # --only: the other cases stay as the previous run measured them, and the record says so.
        earlier_machine = previous.pop("_machine")
        measured = record["cases"]
        for case, entry in previous.items():
            # a case from before cases carried their own record: only the file's machine record is known
            entry.setdefault("measured_with", {"unknown": "measured before cases recorded their own settings; the "
                                                          "file it was kept from describes its last run as",
                                               "file_machine": earlier_machine})
        record["cases"] = {case: measured.get(case, previous.get(case)) for case in CASES
                           if case in measured or case in previous}
        record["cases_kept_from_previous_run"] = {
            "cases": sorted(previous), "machine": earlier_machine,
            "note": "each case's own measured_with says how it was measured"}
    record["numbers"] = summary_numbers(record)
    atomic_write_json(out_dir / f"{name}.json", _finite(record))
    return record


def _load_average():
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _previous_cases(path: pathlib.Path, quick: bool, running) -> dict:
    """The cases of an earlier ``bench.json`` at ``path`` that this run does not redo (same mode),
    plus ``"_machine"``: that run's machine record; {} when there is none or it does not match."""
    try:
        earlier = _io.load_json(path)  # a regular file of bounded size and depth (never a FIFO that blocks)
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
        elif case == "sinusoid":
            for config, c in entry["configs"].items():
                for name, v in c["variants"].items():
                    numbers[f"sinusoid_{config}_{name}_seconds"] = v["median"]
                    numbers[f"sinusoid_{config}_{name}_ratio"] = v["ratio"]
        elif case == "allocator":
            for name, v in entry["speedup"].items():
                numbers[f"allocator_keep_{name}_speedup"] = v
        elif case == "transforms":
            for name, v in entry["variants"].items():
                numbers[f"transforms_{name}_seconds"] = v["median"]
                numbers[f"transforms_{name}_over_maml"] = v["over_maml"]
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
        elif case == "sinusoid":
            for config, c in entry["configs"].items():
                for i, (name, t) in enumerate(c["variants"].items()):
                    agree = c["agreement_float64_max_relative"].get(name)
                    rows.append((f"sinusoid {config}" if i == 0 else "", name, fmt(t["median"], ".4f"),
                                 f"{t['q1']:.4f}–{t['q3']:.4f}", f"{t['ratio']:.2f}×", f"{t['cpu_ratio']:.2f}×", "—",
                                 f"{agree:.0e}" if agree is not None else ""))
        elif case == "allocator":
            keep = entry["rounds"]
            for i, name in enumerate(entry["speedup"]):
                rows.append(("allocator" if i == 0 else "", f"{name}: system → keep",
                             fmt(statistics.median(r["keep"][name] for r in keep), ".3f"), "",
                             f"{entry['speedup'][name]:.2f}×", "—", "—", ""))
        elif case == "transforms":  # the ratio column: the step's time over plain MAML's (1.00× costs nothing)
            for i, (name, t) in enumerate(entry["variants"].items()):
                agree = entry["agreement_float64_max_relative"].get(name)
                rows.append(("transforms" if i == 0 else "", name if name == "maml" else f"{name} (time / MAML)",
                             fmt(t["median"], ".3f"), f"{t['q1']:.3f}–{t['q3']:.3f}", f"{t['over_maml']:.2f}×",
                             f"{t['cpu_over_maml']:.2f}×", "—", f"{agree:.0e}" if agree is not None else ""))
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


def main(argv=None, default_out: pathlib.Path | None = None) -> int:
    """The script form (``python -m linmaml.bench``); ``--out``
    defaults to ``default_out``, else ``figures/`` of the current folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: figures/; with --quick ./figures-quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs and agrees")
    parser.add_argument("--only", action="append", choices=CASES, help="run only this case (repeatable)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 1, as every linmaml command; make bench passes 2)")
    parser.add_argument("--allocator", default=None, choices=("keep", "system"),
                        help="malloc policy of this process (default keep, as linmaml train, or $LINMAML_ALLOCATOR)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--allocator-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        spec = json.loads(args.memory_probe)
        print(json.dumps(memory_probe(spec["case"], spec["variant"], spec["settings"], spec["threads"],
                                      spec.get("allocator", "keep"))))
        return 0
    if args.allocator_probe:
        print(json.dumps(allocator_probe(json.loads(args.allocator_probe))))
        return 0
    if args.out is None:  # a quick run never replaces the committed figures/bench.json
        args.out = pathlib.Path.cwd() / "figures-quick" if args.quick else (default_out or pathlib.Path("figures"))
    threads = args.threads if args.threads is not None else 1  # one policy for every command (run_settings)

    apply_for_command(args.allocator or default_policy(), "bench")
    record = run(args.out, quick=args.quick, only=args.only, device=args.device, threads=threads)
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
