"""Benchmark cases of the closed forms (:mod:`linmaml.bench.harness`): ``surface`` (the exact scalar-chain
MAML objective on a grid against the torch simulator) and ``deep_linear`` (the deep linear
meta-gradient against the simulator's autograd)."""
from __future__ import annotations

import math

import numpy as np
import torch

from linmaml import simulator
from linmaml.bench.sizes import TARGETS
from linmaml.bench.timing import (interleaved, memory_probe_subprocess, ratios, relative_error,
                                            tracemalloc_peak_mib)
from linmaml.closedform import deep_linear, scalar
from linmaml.tasks import RegressionFamily

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
    family = RegressionFamily(d_in=s["d_in"], d_out=s["d_out"], task_cov=s["task_std"] ** 2,
                              noise_std=s["noise_std"], n_support=s["n_support"], n_query=s["n_query"])
    tasks = family.sample(s["tasks"], 0)
    chain = simulator.deep(s["d_in"], s["d_out"], widths=(s["width"],) * (s["depth"] - 1))
    weights = [w.numpy() for w in chain.init(0)]
    return tasks, weights


def deep_linear_functions(s: dict):
    tasks, weights = _deep_linear_setup(s)
    torch_weights = [torch.as_tensor(w) for w in weights]
    torch_tasks = tasks.torch()
    return {
        "closed_form": lambda: deep_linear.maml_grad(weights, tasks, s["lr"], s["steps"]),
        "reference": lambda: simulator.maml_grad(torch_weights, torch_tasks, s["lr"], s["steps"]),
    }, tasks, weights


def bench_deep_linear(s: dict, reps: int, memory: bool, log) -> dict:
    functions, tasks, weights = deep_linear_functions(s)
    timings = interleaved(functions, reps)
    ratios(timings, "reference")
    cf_grads = functions["closed_form"]()
    ref_grads = [g.numpy() for g in functions["reference"]()]
    agreement = relative_error(ref_grads, cf_grads)
    # Stability of the inner rate: the support loss after the inner steps, against before.
    before = [deep_linear.task_loss(weights, tasks.Xs[t], tasks.Ys[t]) for t in range(tasks.Xs.shape[0])]
    after = [deep_linear.task_loss(deep_linear.adapt(weights, tasks.Xs[t], tasks.Ys[t], s["lr"], s["steps"]),
                                   tasks.Xs[t], tasks.Ys[t]) for t in range(tasks.Xs.shape[0])]
    result = {
        "what": f"MAML meta-gradient, deep linear net d_in {s['d_in']}, depth {s['depth']}, width {s['width']}, "
                f"d_out {s['d_out']}, {s['steps']} inner steps of lr {s['lr']}, {s['tasks']} tasks of "
                f"{s['n_support']}+{s['n_query']} points, float64: closedform.maml_grad vs simulator.maml_grad",
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
