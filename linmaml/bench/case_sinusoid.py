"""Benchmark case ``sinusoid`` (:mod:`linmaml.bench.harness`): the per-task MAML loop a new user writes.

The classic regression benchmark of Finn et al. (2017) — :class:`linmaml.tasks.SinusoidFamily`, a
1-40-40-1 ReLU MLP, K support and Q query points, one meta-batch of tasks, mean squared error — and
one meta-gradient (each task's query loss / M backpropagated before the next task) per call, in
three configurations: second order with 1 inner step, first order with 1 step, second order with
5 steps. Variants:

``linmaml``            the README's loop: ``fast = learner.adapt(xs, ys, F.mse_loss)``, then
                       ``F.mse_loss(learner(xq, params=fast), yq).backward()`` per task.
``learn2learn_style``  the reference, written here as learn2learn 0.2.0 works (the package itself is
                       not used): clone the module for each task (every parameter ``clone()``d onto
                       the graph, the module's dicts copied), ``torch.autograd.grad(create_graph=
                       second order)`` of the support loss, the update written into the clone's
                       parameter slots (θ + (−α g), no in-place change of a leaf), the query loss on
                       the clone. It leaves out learn2learn's ``module._apply(lambda x: x)`` after
                       each clone and update (which refreshes RNN weight caches), so it is, if
                       anything, faster than learn2learn itself.
``higher_style``       as the ``higher`` library works (not used either): the parameters as a flat
                       list through a functional forward of the same MLP (``F.linear``, ``relu``),
                       ``autograd.grad``, new list θ − α g: no module machinery at all.
``vmapped``            :class:`linmaml.meta.engine.Engine` with ``strategy="vmap"`` and the whole
                       meta-batch as one chunk: every task's inner loop and query in one vmapped
                       computation (the fast path).

All start from the same weights and tasks; their float64 meta-gradients are compared with the
reference's (max over tensors of ‖Δ‖/‖g‖, floored as in :func:`~linmaml.bench.timing.relative_error`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from linmaml import meta
from linmaml.bench.sizes import TARGETS
from linmaml.bench.timing import interleaved, ratios, relative_error
from linmaml.meta.engine import Engine
from linmaml.tasks import SinusoidFamily

#: name -> (inner steps, first order)
CONFIGS = {"second_order_1_step": (1, False), "first_order_1_step": (1, True), "second_order_5_steps": (5, False)}
VARIANTS = ("learn2learn_style", "linmaml", "higher_style", "vmapped")


def setup(s: dict, dtype=torch.float32):
    """The seeded MLP (1-h-h-1, ReLU) and one meta-batch of sinusoid tasks as tensors of ``dtype``."""
    torch.manual_seed(0)
    h = s["hidden"]
    model = nn.Sequential(nn.Linear(1, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1)).to(dtype)
    tasks = SinusoidFamily(n_support=s["n_support"], n_query=s["n_query"]).sample(s["tasks"], seed=1).torch(dtype)
    return model, (tasks.Xs, tasks.Ys, tasks.Xq, tasks.Yq)


def _clone(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose parameters are ``clone()``s on the graph (learn2learn's way)."""
    copy = module.__new__(type(module))
    copy.__dict__ = module.__dict__.copy()
    copy._parameters = {k: (p.clone() if p is not None else None) for k, p in module._parameters.items()}
    copy._buffers = module._buffers.copy()
    copy._modules = {k: _clone(m) if m is not None else None for k, m in module._modules.items()}
    return copy


def _write_update(module: nn.Module, updates: list) -> None:
    """Replace each parameter slot p of ``module`` (``parameters()`` order) by p + update."""
    queue = iter(updates)

    def visit(m):
        for k, p in m._parameters.items():
            if p is not None:
                m._parameters[k] = p + next(queue)
        for child in m._modules.values():
            if child is not None:
                visit(child)

    visit(module)


def learn2learn_style(model, steps: int, first_order: bool, lr: float):
    def step(batch, scale):
        xs, ys, xq, yq = batch
        for t in range(xs.shape[0]):
            clone = _clone(model)
            for _ in range(steps):
                params = list(clone.parameters())
                loss = F.mse_loss(clone(xs[t]), ys[t])
                grads = torch.autograd.grad(loss, params, create_graph=not first_order, retain_graph=not first_order)
                _write_update(clone, [-lr * g for g in grads])
            (F.mse_loss(clone(xq[t]), yq[t]) * scale).backward()
    return step


def _mlp(params, x):
    w1, b1, w2, b2, w3, b3 = params
    return F.linear(torch.relu(F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2)), w3, b3)


def higher_style(model, steps: int, first_order: bool, lr: float):
    def step(batch, scale):
        xs, ys, xq, yq = batch
        for t in range(xs.shape[0]):
            params = list(model.parameters())
            for _ in range(steps):
                grads = torch.autograd.grad(F.mse_loss(_mlp(params, xs[t]), ys[t]), params,
                                            create_graph=not first_order)
                params = [p - lr * g for p, g in zip(params, grads)]
            (F.mse_loss(_mlp(params, xq[t]), yq[t]) * scale).backward()
    return step


def linmaml_loop(learner):
    def step(batch, scale):
        xs, ys, xq, yq = batch
        for t in range(xs.shape[0]):
            fast = learner.adapt(xs[t], ys[t], F.mse_loss)
            (F.mse_loss(learner(xq[t], params=fast), yq[t]) * scale).backward()
    return step


def vmapped(learner):
    engine = Engine(learner, F.mse_loss, strategy="vmap", tasks_per_chunk=None)
    return lambda batch, scale: engine.meta_gradient(*batch, scale=scale)


def variants(model, steps: int, first_order: bool, lr: float) -> dict:
    learner = meta.MAML(model, lr=lr, steps=steps, first_order=first_order)
    return {"learn2learn_style": learn2learn_style(model, steps, first_order, lr),
            "linmaml": linmaml_loop(learner),
            "higher_style": higher_style(model, steps, first_order, lr),
            "vmapped": vmapped(learner)}


def _meta_gradients(model, functions, batch) -> dict:
    out = {}
    for name, step in functions.items():
        model.zero_grad(set_to_none=True)
        step(batch, 1.0 / batch[0].shape[0])
        out[name] = [p.grad.detach().clone() for p in model.parameters()]
    return out


def bench_sinusoid(s: dict, log) -> dict:
    """Time every variant of every configuration (interleaved, ``s["reps"]`` rounds) and compare
    their float64 meta-gradients with the learn2learn-style reference."""
    model, batch = setup(s)
    model64, batch64 = setup(s, torch.float64)
    result = {"what": f"one meta-gradient of MAML on {s['tasks']} sinusoid tasks (Finn et al. 2017: K={s['n_support']}"
                      f" support, Q={s['n_query']} query points), MLP 1-{s['hidden']}-{s['hidden']}-1 ReLU, MSE, "
                      f"inner lr {s['lr']}, float32; per-task loops backpropagate each task before the next",
              "configs": {}}
    for config, (steps, first_order) in CONFIGS.items():
        functions = variants(model, steps, first_order, s["lr"])
        M = batch[0].shape[0]

        def timed(step):
            def call():
                model.zero_grad(set_to_none=True)
                step(batch, 1.0 / M)
            return call

        timings = interleaved({name: timed(step) for name, step in functions.items()}, s["reps"])
        ratios(timings, "learn2learn_style")
        grads = _meta_gradients(model64, variants(model64, steps, first_order, s["lr"]), batch64)
        agreement = {name: relative_error([g.numpy() for g in grads["learn2learn_style"]], [g.numpy() for g in v])
                     for name, v in grads.items() if name != "learn2learn_style"}
        result["configs"][config] = {"steps": steps, "first_order": first_order, "variants": timings,
                                     "agreement_float64_max_relative": agreement}
        log(f"sinusoid {config}: " + ", ".join(f"{n} {t['median'] * 1e3:.1f} ms ({t['ratio']:.2f}x)"
                                               for n, t in timings.items())
            + f"; float64 agreement {max(agreement.values()):.1e}")
    configs = result["configs"].values()
    result["targets"] = {
        "linmaml_ratio_at_least": TARGETS["sinusoid_ratio"], "linmaml_ratio_goal": TARGETS["sinusoid_goal"],
        "met_ratio": all(c["variants"]["linmaml"]["ratio"] >= TARGETS["sinusoid_ratio"] for c in configs),
        "met_goal": all(c["variants"]["linmaml"]["ratio"] >= TARGETS["sinusoid_goal"] for c in configs),
        "met_agreement": all(v <= TARGETS["meta_agreement_float64"]
                             for c in configs for v in c["agreement_float64_max_relative"].values()),
    }
    return result
