"""Benchmark cases of the meta-training iteration on Omniglot-sized episodes (:mod:`linmaml.bench.harness`):
``maml``, ``kfo`` and ``anil``, every variant against a plain per-task loop written here."""
from __future__ import annotations

import time
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from linmaml.bench.sizes import META_CASES, TARGETS
from linmaml.bench.timing import cuda_peak_mib, interleaved, memory_probe_subprocess, ratios, relative_error
from linmaml.benchmarks.config import TrainConfig, make_engine
from linmaml.benchmarks.learners import build_learner
from linmaml.benchmarks.models import ConvNet, to_channels_last
from linmaml.benchmarks.scoring import model_layout
from linmaml.meta import ANIL
from linmaml.meta.engine import Engine

# --------------------------------------------------------------------------------------------------
# Cases 3-4: meta-training iterations


def meta_setup(s: dict, case: str, dtype_name: str = "float32", device: str = "cpu", tasks: int | None = None):
    """A learner (seeded weights) and a meta-batch of synthetic Omniglot-sized episodes (pixels in
    [0, 1), labels grouped by class) for ``case`` (maml, kfo, anil)."""
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    learner = build_learner(image_shape=(1, s["image"], s["image"]), ways=s["ways"], inner_lr=s["inner_lr"],
                            steps=s["steps"], layers=s["layers"], hidden=s["hidden"], **META_CASES[case])
    learner = learner.to(device=device, dtype=dtype).train()
    return learner, synthetic_meta_batch(s, s["meta_batch"] if tasks is None else tasks, device, dtype)


def synthetic_meta_batch(s: dict, tasks: int, device: str, dtype: torch.dtype) -> tuple:
    """``tasks`` synthetic Omniglot-sized episodes of sizes ``s`` (ways, shots, query, image), seeded
    (the same for every caller): pixels in [0, 1) drawn in float64, then cast; labels grouped by class.
    Returns (x_support (tasks, ways·shots, 1, image, image), y_support, x_query, y_query)."""
    g = torch.Generator().manual_seed(1)
    n_s, n_q = s["ways"] * s["shots"], s["ways"] * s["query"]
    xs = torch.rand(tasks, n_s, 1, s["image"], s["image"], generator=g, dtype=torch.float64)
    xq = torch.rand(tasks, n_q, 1, s["image"], s["image"], generator=g, dtype=torch.float64)
    ys = torch.arange(s["ways"]).repeat_interleave(s["shots"]).repeat(tasks, 1)
    yq = torch.arange(s["ways"]).repeat_interleave(s["query"]).repeat(tasks, 1)
    return xs.to(device, dtype), ys.to(device), xq.to(device, dtype), yq.to(device)


def textbook_twin(learner, s: dict):
    """The bench's CNN (settings ``s``) written the textbook way — conv → BatchNorm → ReLU → 2×2
    max-pool per block, as the standard MAML backbone is usually coded — with the same parameter
    names, for the plain reference. Its own parameters are never used: the reference calls it through
    ``functional_call`` with the learner's tensors, so the gradients reach the learner. (linmaml's
    :class:`~linmaml.benchmarks.models.ConvNet` pools before its ReLU: the same function.)"""
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
    anil = isinstance(learner, ANIL)
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
    def step_of(engine, layout=True):
        """The engine's meta-gradient as a step(batch, scale); ``layout``: channels-last episodes
        (converted inside the timing), as ``linmaml train`` runs it."""
        return lambda batch, scale: engine.meta_gradient(*(model_layout(batch) if layout else batch), scale=scale)

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
        variants["train_step"] = step_of(make_engine(learner, TrainConfig()))
    if wanted("loop"):
        variants["loop"] = step_of(make_engine(learner, TrainConfig(batching="loop")))
    if case in s["batched_cases"] and wanted("batched"):
        variants["batched"] = step_of(Engine(learner, F.cross_entropy, strategy="vmap", tasks_per_chunk=None),
                                      layout=False)
    if compiled and wanted("compiled"):
        variants["compiled"] = step_of(make_engine(learner, TrainConfig(compile=True)))
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
    "batched": "meta.engine.Engine(strategy='vmap', tasks_per_chunk=None): the whole meta-batch in one vmapped "
               "computation (default layout)",
    "compiled": "the step of `linmaml train --compile` (the same, through torch.compile)",
}


def _grads(learner):
    return [(p.grad.detach().double().cpu().numpy() if p.grad is not None else np.zeros(tuple(p.shape)))
            for p in learner.parameters()]


def run_variant(learner, step, batch, scale):
    for p in learner.parameters():
        p.grad = None
    step(batch, scale)


def _gradients_of(learner, variants, batch) -> dict:
    out = {}
    for name, step in variants.items():
        run_variant(learner, step, batch, 1.0 / batch[0].shape[0])
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
    agreement64 = {name: relative_error(exact["reference"], g) for name, g in exact.items() if name != "reference"}
    learner32, batch32 = meta_setup(s, case, "float32", device, tasks=small)
    float32 = _gradients_of(learner32, meta_variants(learner32, case, s, s["compiled"], device), batch32)
    error32 = {name: relative_error(exact["reference"], g) for name, g in float32.items()}
    note = None
    if s["compiled"]:
        shallow = {**s, "layers": s["compiled_check_layers"]}
        learner64, batch64 = meta_setup(shallow, case, "float64", device, tasks=small)
        pair = _gradients_of(learner64, {**meta_variants(learner64, case, shallow, False, device, only="reference"),
                                         **meta_variants(learner64, case, shallow, True, device, only="compiled")},
                             batch64)
        agreement64["compiled"] = relative_error(pair["reference"], pair["compiled"])
        note = f"compiled: float64 check on a {shallow['layers']}-block CNN (same code path, faster to compile)"
    return {"agreement_float64_max_relative": agreement64, "agreement_tasks": small,
            "float32_error_vs_float64_max_relative": error32, "note": note}


def bench_meta(case: str, s: dict, reps: int, device: str, memory: bool, log) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else None
    if s["compiled"]:
        # torch.compile caches by code object, which every Engine shares: without a reset, the cases
        # run before this one use up dynamo's recompile limit (8) and the compiled variant silently
        # falls back to eager (it did for anil, the third case, before this reset).
        torch._dynamo.reset()
    learner, batch = meta_setup(s, case, "float32", device)
    variants = meta_variants(learner, case, s, s["compiled"], device)
    M = batch[0].shape[0]
    log(f"{case}: warming up {', '.join(variants)}" + (" (compiling: minutes)" if s["compiled"] else ""))
    began = time.perf_counter()
    functions = {name: (lambda step=step: run_variant(learner, step, batch, 1.0 / M)) for name, step in variants.items()}
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
