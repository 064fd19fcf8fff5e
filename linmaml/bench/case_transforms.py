"""Benchmark case ``transforms`` (:mod:`linmaml.bench.harness`): what a learned inner-loop transform
costs beside plain MAML — ``linmaml train``'s step with ``--transform kfo``, ``metacurvature``,
``metasgd`` and ``rates`` against the same step without one, on the same episodes, interleaved in one
process, at the Omniglot recipe's sizes (``configs/omniglot-5w1s.json``: 5-way 1-shot, 5 queries per
class, meta-batch 16, one inner step, the 4-block 64-filter CNN with strided convolutions).

The number to read is ``over_maml``: the median over rounds of (transform step time / MAML step
time) in the same round, 1.0 for a transform that costs nothing (the harness's ``ratio``, MAML's
time over the variant's, is its inverse). Each step's float64 meta-gradient is checked against the
benchmark's plain per-task loop (:func:`linmaml.bench.case_meta.reference_meta_gradient`) with the
same transform, moved off its identity initialisation so that a transposed factor would show: this
checks the engine's batching of the transform, not the transform's formula, which
tests/meta/test_meta_transform_products.py checks against explicit Kronecker products."""
from __future__ import annotations

import time

import numpy as np
import torch

from linmaml.bench.case_meta import _grads, reference_meta_gradient, run_variant, synthetic_meta_batch
from linmaml.bench.timing import interleaved, ratios, relative_error
from linmaml.benchmarks.config import TrainConfig, make_engine
from linmaml.benchmarks.learners import build_learner
from linmaml.benchmarks.scoring import model_layout

#: The transforms timed beside plain MAML (``linmaml train --transform NAME``).
TRANSFORM_VARIANTS = ("kfo", "metacurvature", "metasgd", "rates")


def transform_setup(s: dict, transform: str, dtype_name: str = "float32", device: str = "cpu",
                    tasks: int | None = None):
    """A MAML learner with ``transform`` ("none" or one of :data:`TRANSFORM_VARIANTS`): the same
    seeded CNN weights for every transform, the transform's parameters moved off the identity by a
    seeded perturbation (scale ``s["perturb"]``), and a meta-batch of synthetic episodes (pixels in
    [0, 1), labels grouped by class), the same for every transform."""
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    learner = build_learner(image_shape=(1, s["image"], s["image"]), ways=s["ways"], transform=transform,
                            layers=s["layers"], hidden=s["hidden"], pool=s["pool"], inner_lr=s["inner_lr"],
                            steps=s["steps"])
    learner = learner.to(device=device, dtype=dtype).train()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in learner.transform.parameters():
            p.add_(s["perturb"] * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))
    return learner, synthetic_meta_batch(s, s["meta_batch"] if tasks is None else tasks, device, dtype)


def train_step(learner):
    """``linmaml train``'s step with its defaults (channels-last episodes, ``--batching split``)."""
    engine = make_engine(learner, TrainConfig())
    return lambda batch, scale: engine.meta_gradient(*model_layout(batch), scale=scale)


def transform_agreement(s: dict, device: str) -> dict:
    """Per transform: the float64 meta-gradient of the train step against the plain per-task loop, on
    the first ``agreement_tasks`` tasks (max relative error over tensors)."""
    out = {}
    for name in ("maml",) + tuple(s["transforms"]):
        learner, batch = transform_setup(s, "none" if name == "maml" else name, "float64", device,
                                         tasks=s["agreement_tasks"])
        scale = 1.0 / batch[0].shape[0]
        run_variant(learner, lambda b, c: reference_meta_gradient(learner, b, c), batch, scale)
        reference = _grads(learner)
        run_variant(learner, train_step(learner), batch, scale)
        out[name] = relative_error(reference, _grads(learner))
    return out


def bench_transforms(s: dict, device: str, log) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else None
    setups = {name: transform_setup(s, "none" if name == "maml" else name, device=device)
              for name in ("maml",) + tuple(s["transforms"])}
    M = setups["maml"][1][0].shape[0]
    functions = {}
    for name, (learner, batch) in setups.items():
        step = train_step(learner)
        functions[name] = (lambda learner=learner, step=step, batch=batch: run_variant(learner, step, batch, 1.0 / M))
    log(f"transforms: warming up {', '.join(functions)}")
    began = time.perf_counter()
    timings = interleaved(functions, s["reps"], sync=sync)
    ratios(timings, "maml")
    maml = np.asarray(timings["maml"]["samples"])
    for name, t in timings.items():
        t["over_maml"] = float(np.median(np.asarray(t["samples"]) / maml))
        t["cpu_over_maml"] = float(np.median(np.asarray(t["cpu_samples"]) / np.asarray(timings["maml"]["cpu_samples"])))
    agreement = transform_agreement(s, device)
    result = {
        "what": f"linmaml train's step (--batching split, channels-last) of second-order MAML with each learned "
                f"transform against plain MAML's, interleaved: {s['image']}x{s['image']} images, {s['ways']}-way "
                f"{s['shots']}-shot, {s['query']} queries per class, meta-batch {M}, {s['steps']} inner step(s) of "
                f"{s['inner_lr']}, {s['layers']}-block {s['hidden']}-filter CNN ({s['pool']} down-sampling), float32, "
                f"synthetic pixels; over_maml = median over rounds of (transform time / MAML time)",
        "variants": {name: {"what": "plain MAML (the reference)" if name == "maml" else f"--transform {name}",
                            **timings[name], "iterations_per_second": 1.0 / timings[name]["median"]}
                     for name in functions},
        "agreement_float64_max_relative": agreement,
        "agreement_tasks": s["agreement_tasks"],
        "seconds_including_warmup": time.perf_counter() - began,
    }
    for name, t in timings.items():
        log(f"transforms {name}: {t['median']:.3f} s (IQR {t['q1']:.3f}-{t['q3']:.3f}), {t['over_maml']:.2f}x "
            f"MAML's time (CPU {t['cpu_over_maml']:.2f}x), float64 agreement with the plain loop {agreement[name]:.1e}")
    return result
