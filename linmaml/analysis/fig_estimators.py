"""The estimator atlas: how far each cheap meta-gradient estimator is from the exact MAML meta-gradient.

Deep linear networks (widths d_in, 4, …, 4, d_out) on a Gaussian regression family
(:class:`linmaml.tasks.RegressionFamily`). For each meta-batch of M sampled tasks the exact
meta-gradient of the batch's mean post-adaptation query loss comes from the closed form
:func:`linmaml.closedform.deep_linear.maml_grad` (hand-derived adjoint, numpy); each estimator of
:mod:`linmaml.meta.estimators` runs through :class:`linmaml.meta.engine.Engine` on the same batch and
weights. Over B meta-batches (the same batches for every estimator: paired) the figure reports

* relative error ‖ĝ − g‖/‖g‖ and cosine(ĝ, g), each the mean over batches (g the batch's exact gradient);
* bias ‖mean(ĝ − g)‖/‖mean g‖ (with its standard error from the B paired differences) and relative
  variance tr cov(ĝ)/‖mean g‖² (the exact gradient's own relative variance over batches beside it);

against the inner learning rate α, the inner steps k, the depth L (the other two at their defaults),
and each estimator's own knob (truncation window K, iMAML's λ and CG iterations, the ES population,
the HF-MAML difference step δ). Cost per meta-gradient at the defaults: the median wall time and the
peak bytes of tensors saved for backward (autograd's graph memory, through
``torch.autograd.graph.saved_tensors_hooks``), beside exact MAML by autograd through the engine.

Then each estimator meta-trains the same initial deep net (Adam with a half-cosine decay of its rate to 0,
the same tasks for all) on tasks whose
support set gives the population gradient exactly (:class:`linmaml.analysis._common.PopulationSupport`),
and the final weights are scored by the exact expected one-step query loss
(:func:`linmaml.closedform.gaussian.expected_post_adaptation_loss`, population level), beside exact
MAML's and the initial loss: the ratio L/L_MAML, and "fraction of MAML's gain" (L₀ − L)/(L₀ − L_MAML).

"Within 10%" means a mean relative error ≤ 0.10 at that setting.

Run: ``python -m linmaml.analysis.fig_estimators [--out DIR] [--quick]``; writes estimators.png and
estimators.json.
"""
from __future__ import annotations

import pathlib
import time
import weakref

import numpy as np
import torch

from linmaml import meta
from linmaml.analysis._common import PopulationSupport, regression_family
from linmaml.checks._common import random_weights
from linmaml.checks.meta import deep_linear_model
from linmaml.closedform import deep_linear as dl
from linmaml.closedform.gaussian import expected_post_adaptation_loss
from linmaml.meta import estimators
from linmaml.meta.engine import Engine
from linmaml.meta.losses import squared_loss
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module

from linmaml.errors import ArgumentError

NAME = "estimators"

SETTINGS = {
    "family": {"d_in": 4, "d_out": 2, "task_mean": 1.0, "task_var": 0.5, "x_var": 1.0, "noise_std": 0.1,
               "n_support": 8, "n_query": 8},
    "hidden_width": 4,
    "init_scale": 1.0,
    "init_seed": 0,
    "task_seed": 1000,
    "meta_batch": 4,
    "defaults": {"inner_lr": 0.02, "steps": 3, "depth": 2},
    "axes": {"inner_lr": [0.005, 0.01, 0.02, 0.05, 0.1, 0.2], "steps": [1, 2, 3, 5, 8], "depth": [1, 2, 3, 4]},
    # λ = lambda_factor / (k·α): iMAML's proximal step matched to k gradient steps of size α
    "estimators": {"truncated": {"window": 1},
                   "imaml": {"lambda_factor": 1.0, "cg_steps": 10, "tolerance": 1e-8, "max_inner_steps": 500},
                   "es": {"population": 32, "sigma": 1e-2},
                   "hfmaml": {"delta": 1e-3}},
    "knobs": {"truncated": [0, 1, 2, 3], "imaml_lambda_factor": [0.25, 0.5, 1.0, 2.0, 4.0],
              "imaml_cg_steps": [1, 2, 4, 8, 16], "es_population": [8, 32, 128], "hfmaml_delta": [1e-1, 1e-2, 1e-3, 1e-4]},
    # ES and iMAML are the costly ones: a smaller population and a capped solver while training
    "train": {"depth": 2, "inner_lr": 0.1, "steps": 1, "meta_lr": 0.03, "meta_batch": 4, "seed": 7,
              "es_population": 8, "imaml_max_inner_steps": 50},
    "within": 0.10,
}
FULL = {"batches": 6, "es_batches": 3, "timing_repeats": 3, "train_iterations": 200}
#: Quick mode: two values per axis and knob, two meta-batches, a small ES population.
QUICK = {"batches": 2, "es_batches": 2, "timing_repeats": 1, "train_iterations": 3,
         "axes": {"inner_lr": [0.02, 0.2], "steps": [1, 3], "depth": [1, 2]},
         "knobs": {"truncated": [0, 3], "imaml_lambda_factor": [0.5, 2.0], "imaml_cg_steps": [1, 8],
                   "es_population": [4, 8], "hfmaml_delta": [1e-1, 1e-3]}}

ESTIMATORS = ("fomaml", "reptile", "imaml", "truncated", "es", "hfmaml")
LABELS = {"fomaml": "first-order MAML", "reptile": "Reptile", "imaml": "iMAML", "truncated": "truncated MAML (K=1)",
          "es": "evolution strategies", "hfmaml": "Hessian-free MAML", "maml": "exact MAML"}
COLORS = {"fomaml": "tab:blue", "reptile": "tab:orange", "imaml": "tab:green", "truncated": "tab:red",
          "es": "tab:purple", "hfmaml": "tab:brown", "maml": "k"}


# --------------------------------------------------------------------------------------------------
# Pieces


def _family(cfg):
    return regression_family(cfg["family"])


def _widths(cfg, depth: int) -> list[int]:
    f = cfg["family"]
    return [f["d_in"]] + [cfg["hidden_width"]] * (depth - 1) + [f["d_out"]]


def _init(cfg, depth: int) -> list[np.ndarray]:
    return random_weights(np.random.default_rng(cfg["init_seed"] + depth), _widths(cfg, depth), cfg["init_scale"])


def _estimator(name: str, cfg: dict, lr: float, steps: int, **override):
    e = {k: dict(v) for k, v in cfg["estimators"].items()}
    for key, value in override.items():
        e[name][key] = value
    if name == "fomaml":
        return estimators.FirstOrderMAML()
    if name == "reptile":
        return estimators.Reptile()
    if name == "truncated":
        return estimators.TruncatedMAML(e["truncated"]["window"])
    if name == "imaml":
        i = e["imaml"]
        return estimators.iMAML(lam=i["lambda_factor"] / (steps * lr), cg_steps=i["cg_steps"], tolerance=i["tolerance"],
                                max_inner_steps=i["max_inner_steps"], inner_lr=lr)
    if name == "es":
        return estimators.EvolutionStrategies(e["es"]["population"], e["es"]["sigma"], seed=e["es"].get("seed", 0))
    if name == "hfmaml":
        return estimators.HessianFreeMAML(e["hfmaml"]["delta"])
    raise ArgumentError("name", f"no estimator {name!r}")


def _engine(weights, lr, steps, strategy="vmap"):
    learner = meta.MAML(deep_linear_model(weights), lr=lr, steps=steps)
    return Engine(learner, squared_loss, strategy=strategy, tasks_per_chunk=None)


def _batches(cfg, count: int):
    fam = _family(cfg)
    return [fam.sample(cfg["meta_batch"], cfg["task_seed"] + b) for b in range(count)]


def _flat(blocks) -> np.ndarray:
    return np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in blocks])


def _estimate_flat(estimator, engine, batch, depth: int) -> np.ndarray:
    T = batch.torch()
    est = estimator.estimate(engine, T.Xs, T.Ys, T.Xq, T.Yq)
    return _flat([est.grads[f"model.{j}.weight"].numpy() for j in range(depth)])


def _statistics(estimates: np.ndarray, exact: np.ndarray) -> dict:
    """Paired statistics over B batches: estimates, exact (B, P)."""
    diff = estimates - exact
    norms = np.linalg.norm(exact, axis=1)
    rel = np.linalg.norm(diff, axis=1) / norms
    cos = np.sum(estimates * exact, axis=1) / (np.linalg.norm(estimates, axis=1) * norms + 1e-300)
    mean_exact = np.linalg.norm(exact.mean(axis=0))
    B = len(exact)
    bias_vec = diff.mean(axis=0)
    bias_se = float(np.sqrt(np.sum(diff.var(axis=0, ddof=1)) / B) / mean_exact) if B > 1 else float("nan")
    return {"relative_error": float(rel.mean()), "relative_error_max": float(rel.max()),
            "cosine": float(cos.mean()), "cosine_min": float(cos.min()),
            "bias": float(np.linalg.norm(bias_vec) / mean_exact), "bias_se": bias_se,
            "variance": float(np.sum(estimates.var(axis=0, ddof=1)) / mean_exact ** 2) if B > 1 else float("nan"),
            "exact_variance": float(np.sum(exact.var(axis=0, ddof=1)) / mean_exact ** 2) if B > 1 else float("nan"),
            "batches": B}


_CACHE: dict = {}


def _point(cfg, run_cfg, lr, steps, depth, names, overrides=None):
    """{estimator: statistics} at one (α, k, L), over the same batches for every estimator (points
    repeated across the axes and knob sweeps are computed once per run)."""
    out, missing = {}, []
    for name in names:
        setting = {**cfg["estimators"].get(name, {}), **(overrides or {}).get(name, {})}
        key = repr((lr, steps, depth, name, sorted(setting.items())))
        if key in _CACHE:
            out[name] = _CACHE[key]
        else:
            missing.append((name, key))
    if missing:
        fresh = _point_uncached(cfg, run_cfg, lr, steps, depth, [name for name, _ in missing], overrides)
        for name, key in missing:
            out[name] = _CACHE[key] = fresh[name]
    return {name: out[name] for name in names}


def _point_uncached(cfg, run_cfg, lr, steps, depth, names, overrides=None):
    weights = _init(cfg, depth)
    engine = _engine(weights, lr, steps)
    batches = _batches(cfg, run_cfg["batches"])
    exact = np.stack([_flat(dl.maml_grad(weights, b, lr, steps)) for b in batches])
    out = {}
    for name in names:
        count = run_cfg["es_batches"] if name == "es" else run_cfg["batches"]
        estimator = _estimator(name, cfg, lr, steps, **((overrides or {}).get(name, {})))
        if name == "es":  # a different seed per batch: the variance includes the perturbations'
            estimates = []
            for b, batch in enumerate(batches[:count]):
                estimator.seed = cfg["task_seed"] + b
                estimates.append(_estimate_flat(estimator, engine, batch, depth))
            estimates = np.stack(estimates)
        else:
            estimates = np.stack([_estimate_flat(estimator, engine, b, depth) for b in batches[:count]])
        out[name] = _statistics(estimates, exact[:count])
    return out


class _SavedBytes:
    """Peak bytes of the tensors autograd saves for backward while inside (graph memory)."""

    def __init__(self):
        self.live = self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor):
        box = _Box(tensor)
        size = tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._free, size)
        return box

    def _free(self, size):
        self.live -= size

    @staticmethod
    def _unpack(box):
        return box.tensor

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


class _Box:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def _costs(cfg, run_cfg) -> dict:
    """Median seconds and peak saved bytes per meta-gradient at the defaults (one meta-batch)."""
    d = cfg["defaults"]
    weights = _init(cfg, d["depth"])
    # one task at a time for every method (saved-tensor hooks do not run under torch.func.vmap)
    engine = _engine(weights, d["inner_lr"], d["steps"], strategy="loop")
    loop = engine
    T = _batches(cfg, 1)[0].torch()
    batch = (T.Xs, T.Ys, T.Xq, T.Yq)

    def exact():
        losses, _ = loop.task_losses(*batch)
        torch.autograd.grad(losses.mean(), list(loop.learner.parameters()))

    runs = {"maml": exact}
    for name in ESTIMATORS:
        estimator = _estimator(name, cfg, d["inner_lr"], d["steps"])
        runs[name] = (lambda e: lambda: e.estimate(engine, *batch))(estimator)
    out = {}
    for name, function in runs.items():
        function()  # warm-up (vmap and allocator first calls)
        seconds = []
        for _ in range(run_cfg["timing_repeats"]):
            with _SavedBytes() as memory:
                began = time.perf_counter()
                function()
                seconds.append(time.perf_counter() - began)
        out[name] = {"seconds": float(np.median(seconds)), "saved_bytes": int(memory.peak)}
    return out


def _train(cfg, run_cfg) -> dict:
    """Meta-train with each estimator and exact MAML; exact expected one-step loss of the results."""
    t = cfg["train"]
    fam = _family(cfg)
    tasks = PopulationSupport(fam)
    start = _init(cfg, t["depth"])

    def score(engine):
        layers = [p.detach().numpy().copy() for p in engine.learner.parameters()]
        return float(expected_post_adaptation_loss(layers, fam, t["inner_lr"], steps=1, population=True))

    out = {}
    initial = None
    iterations = run_cfg["train_iterations"]
    checkpoints = sorted({max(1, iterations // 4), max(1, iterations // 2), max(1, 3 * iterations // 4), iterations})
    for name in ("maml",) + ESTIMATORS:
        engine = _engine(start, t["inner_lr"], t["steps"])
        if initial is None:
            initial = score(engine)
        params = list(engine.learner.parameters())
        optimizer = torch.optim.Adam(params, lr=t["meta_lr"])
        override = {"es": {"population": t["es_population"]},
                    "imaml": {"max_inner_steps": t["imaml_max_inner_steps"]}}.get(name, {})
        estimator = None if name == "maml" else _estimator(name, cfg, t["inner_lr"], t["steps"], **override)
        if name == "es":
            estimator.seed = None  # torch's global generator, seeded per iteration below
        trace = []
        began = time.perf_counter()
        for it in range(run_cfg["train_iterations"]):
            torch.manual_seed(t["seed"] * 100_003 + it)
            T = tasks.sample(t["meta_batch"], t["seed"] * 100_003 + it).torch()
            optimizer.zero_grad(set_to_none=True)
            if estimator is None:
                engine.meta_gradient(T.Xs, T.Ys, T.Xq, T.Yq, scale=1.0 / t["meta_batch"])
            else:
                est = estimator.estimate(engine, T.Xs, T.Ys, T.Xq, T.Yq)
                for (pname, p) in engine.learner.named_parameters():
                    p.grad = est.grads[pname].clone()
            for group in optimizer.param_groups:  # half-cosine decay to 0: the runs settle by the end
                group["lr"] = t["meta_lr"] * 0.5 * (1 + np.cos(np.pi * it / iterations))
            optimizer.step()
            if it + 1 in checkpoints:
                trace.append(score(engine))
        out[name] = {"final_loss": score(engine), "seconds": time.perf_counter() - began,
                     "trace": {"iterations": [int(c) for c in checkpoints], "loss": trace}}
    best = out["maml"]["final_loss"]
    for name, record in out.items():
        record["ratio_to_maml"] = record["final_loss"] / best
        record["fraction_of_maml_gain"] = (initial - record["final_loss"]) / (initial - best) if initial != best else None
    return {"initial_loss": initial, "results": out}


def compute(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    _CACHE.clear()
    run_cfg = QUICK if quick else FULL
    cfg = {**SETTINGS, **run_cfg, "quick": quick}
    cfg["estimators"] = {k: dict(v) for k, v in SETTINGS["estimators"].items()}
    if quick:
        cfg["estimators"]["es"]["population"] = 8
    d = cfg["defaults"]
    axes = {}
    for axis, values in cfg["axes"].items():
        rows = []
        for value in values:
            point = {**d, axis: value}
            rows.append({axis: value, "estimators": _point(cfg, run_cfg, point["inner_lr"], point["steps"],
                                                           point["depth"], ESTIMATORS)})
        axes[axis] = rows
    k = cfg["knobs"]
    knobs = {
        "truncated_window": [{"value": K, **_point(cfg, run_cfg, d["inner_lr"], d["steps"], d["depth"], ["truncated"],
                                                   {"truncated": {"window": K}})["truncated"]} for K in k["truncated"]],
        "imaml_lambda_factor": [{"value": f, **_point(cfg, run_cfg, d["inner_lr"], d["steps"], d["depth"], ["imaml"],
                                                      {"imaml": {"lambda_factor": f}})["imaml"]}
                                for f in k["imaml_lambda_factor"]],
        "imaml_cg_steps": [{"value": c, **_point(cfg, run_cfg, d["inner_lr"], d["steps"], d["depth"], ["imaml"],
                                                 {"imaml": {"cg_steps": c}})["imaml"]} for c in k["imaml_cg_steps"]],
        "es_population": [{"value": n, **_point(cfg, run_cfg, d["inner_lr"], d["steps"], d["depth"], ["es"],
                                                {"es": {"population": n}})["es"]} for n in k["es_population"]],
        "hfmaml_delta": [{"value": h, **_point(cfg, run_cfg, d["inner_lr"], d["steps"], d["depth"], ["hfmaml"],
                                               {"hfmaml": {"delta": h}})["hfmaml"]} for h in k["hfmaml_delta"]],
    }
    costs = _costs(cfg, run_cfg)
    training = _train(cfg, run_cfg)
    within = {}
    for name in ("fomaml", "reptile", "imaml"):
        within[name] = {axis: [row[axis] for row in rows if row["estimators"][name]["relative_error"] <= cfg["within"]]
                        for axis, rows in axes.items()}
    numbers = {"axes": axes, "knobs": knobs, "costs": costs, "training": training, "within_10_percent": within,
               "note": "relative error and cosine: means over the batches of ‖ĝ − g‖/‖g‖ and cos(ĝ, g), g the "
                       "closed-form meta-gradient of the same batch; bias ‖mean(ĝ − g)‖/‖mean g‖ ± its standard "
                       "error; variance tr cov(ĝ)/‖mean g‖²; costs at the defaults on one meta-batch "
                       "(saved_bytes: peak bytes saved for backward); training: exact expected one-step loss "
                       "(population) of the trained weights"}
    return {"figure": NAME, "settings": cfg, "numbers": numbers}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    num, cfg = result["numbers"], result["settings"]
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.6))
    titles = {"inner_lr": "inner learning rate α", "steps": "inner steps k", "depth": "depth L"}
    for col, axis in enumerate(("inner_lr", "steps", "depth")):
        ax = axes[0, col]
        rows = num["axes"][axis]
        xs = [r[axis] for r in rows]
        for name in ESTIMATORS:
            ys = [max(r["estimators"][name]["relative_error"], 1e-16) for r in rows]
            ax.plot(xs, ys, "o-", color=COLORS[name], label=LABELS[name])
        ax.axhline(cfg["within"], color="gray", ls="--", lw=1, label="10%")
        ax.set_xscale("log" if axis == "inner_lr" else "linear")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 3)  # exact ones (HF-MAML always, truncated at K ≥ k) fall below: see the JSON
        ax.set_xlabel(titles[axis])
        ax.set_ylabel("relative error to exact meta-gradient")
        other = ", ".join(f"{k}={v}" for k, v in cfg["defaults"].items() if k != axis)
        ax.set_title(f"({'abc'[col]}) vs {titles[axis]} ({other}); below 1e-3 not drawn", fontsize=9)
        ax.grid(alpha=0.3)
        if col == 0:
            ax.legend(fontsize=7)
    # bias / variance at the defaults
    ax = axes[0, 3]
    d = num["axes"]["steps"]
    row = next(r for r in d if r["steps"] == cfg["defaults"]["steps"])["estimators"]
    xs = np.arange(len(ESTIMATORS))
    ax.bar(xs - 0.2, [max(row[n]["bias"], 1e-16) for n in ESTIMATORS], 0.4, label="bias ‖E(ĝ−g)‖/‖Eg‖",
           color=[COLORS[n] for n in ESTIMATORS])
    ax.bar(xs + 0.2, [max(np.sqrt(row[n]["variance"]), 1e-16) for n in ESTIMATORS], 0.4, label="√(tr cov ĝ)/‖Eg‖",
           color=[COLORS[n] for n in ESTIMATORS], alpha=0.4, hatch="//")
    ax.axhline(np.sqrt(row["fomaml"]["exact_variance"]), color="k", ls=":", lw=1, label="exact g's own spread")
    ax.set_xticks(xs, [LABELS[n].replace(" ", "\n", 1) for n in ESTIMATORS], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 5)
    ax.set_title("(d) bias (solid), spread (hatched) over meta-batches, defaults", fontsize=9)
    ax.legend(fontsize=7)
    # knobs
    ax = axes[1, 0]
    for key, name, label in (("truncated_window", "truncated", "truncated: window K (of k)"),
                             ("imaml_cg_steps", "imaml", "iMAML: CG iterations")):
        rows = num["knobs"][key]
        ax.plot([r["value"] for r in rows], [max(r["relative_error"], 1e-16) for r in rows], "o-", color=COLORS[name],
                label=label)
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 3)
    ax.set_xlabel("K  /  CG iterations")
    ax.set_ylabel("relative error")
    ax.set_title("(e) own knobs: truncation window, CG iterations", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    for key, name, label in (("imaml_lambda_factor", "imaml", "iMAML: λ·kα"), ("es_population", "es", "ES: population N"),
                             ("hfmaml_delta", "hfmaml", "HF-MAML: δ")):
        rows = num["knobs"][key]
        ax.plot([r["value"] for r in rows], [max(r["relative_error"], 1e-16) for r in rows], "o-", color=COLORS[name],
                label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("knob value")
    ax.set_title("(f) own knobs: λ, population, difference step", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    # costs
    ax = axes[1, 2]
    names = ("maml",) + ESTIMATORS
    costs = num["costs"]
    ax.bar(np.arange(len(names)) - 0.2, [costs[n]["seconds"] * 1e3 for n in names], 0.4,
           color=[COLORS[n] for n in names])
    ax.set_ylabel("ms per meta-gradient (bars)")
    ax.set_yscale("log")
    twin = ax.twinx()
    twin.plot(np.arange(len(names)) + 0.2, [max(costs[n]["saved_bytes"], 1) / 1024 for n in names], "kD",
              label="peak saved-for-backward KiB")
    twin.set_yscale("log")
    twin.set_ylabel("KiB saved for backward (diamonds)")
    ax.set_xticks(np.arange(len(names)), [LABELS[n].replace(" ", "\n", 1) for n in names], fontsize=7)
    ax.set_title("(g) cost per meta-gradient at the defaults", fontsize=9)
    # training
    ax = axes[1, 3]
    tr = num["training"]
    values = [tr["results"][n]["final_loss"] for n in names]
    ax.bar(np.arange(len(names)), values, color=[COLORS[n] for n in names])
    ax.axhline(tr["initial_loss"], color="gray", ls="--", lw=1, label="initial")
    ax.set_xticks(np.arange(len(names)), [LABELS[n].replace(" ", "\n", 1) for n in names], fontsize=7)
    ax.set_ylabel("exact expected one-step query loss")
    t = cfg["train"]
    ax.set_title(f"(h) after {cfg['train_iterations']} Adam steps (cosine) (L={t['depth']}, α={t['inner_lr']}, "
                 f"k={t['steps']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(f"Meta-gradient estimators vs the exact (closed-form) MAML meta-gradient: deep linear nets, "
                 f"{cfg['batches']} paired meta-batches of {cfg['meta_batch']} tasks", fontsize=11)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


def summary(record: dict) -> list[str]:
    """Where each estimator stays within 10% (printed by ``main``)."""
    return [f"{name} within 10%: " + "; ".join(f"{a} {v}" for a, v in axes.items())
            for name, axes in record["numbers"]["within_10_percent"].items()]


run, main = figure_module(NAME, __doc__, compute, draw, summary=summary,
                          quick_help="two meta-batches per point, 4 training steps (seconds)")

if __name__ == "__main__":
    main()
