"""The direction figure: on a family where the direction of the step carries most of the loss, which
learned one-step maps reach the best LINEAR one-step map, and which only the best diagonal one.

Family (one per condition number κ ∈ {1, 10, 100, 1000}): regression y = w_τᵀx + ε, d = 4, one
output, x ~ N(0, Σ), Σ = U diag(s) Uᵀ with U a fixed random rotation (QR of a Gaussian matrix, seed
``rotation_seed``: nothing is axis-aligned) and s geometric from 1 to 1/κ rescaled to mean 1;
w_τ ~ N(m, Ω) with **Ω = Σ⁻¹** (so every eigen-direction of Σ carries the same share ω_i·s_i = 1 of
the no-adaptation loss ½tr(ΩΣ) = d/2: no direction can be ignored), σ = 0.1, n = 100 support points.

Exact one-step losses (all from the task mean m, the optimal initialisation of each):

* the best scalar step α*·g (``closedform.gaussian_lr.best_scalar_lr``),
* the best DIAGONAL map diag(q*)·g in the parameter basis (``optimal_diagonal_map``: q* = (B∘Σ)⁻¹
  diag(ΣΩΣ)), the most a per-coordinate rate (Meta-SGD on the shallow model) can do,
* the best LINEAR one-step map Q*·g (``optimal_one_step_map``, Q* = [(1 + 1/n)ΩΣ + cI]⁻¹Ω),
* the Bayes floor: the posterior mean E[w_τ | support set], the best one-step predictor of any form
  (``bayes_posterior_mean``; its loss ½tr(ΣΛ⁻¹) + ½σ² given the support inputs, averaged over sampled
  inputs with its standard error).

Trained models (``MODELS``): Deep L = 2 and 3, Shallow+LinNet (``linmaml.simulator`` chains) and
Shallow with KFO, Meta-SGD and a learned scalar rate (``linmaml.meta`` transforms), each meta-trained
by ``simulator.meta_train`` at the family's α* with Adam and a cosine schedule to 0 over
``meta_steps`` (the stated convergence criterion: the schedule ends at rate 0, and the paired exact
loss at ``snapshot_fraction`` = 90 % of the schedule is reported beside the final one; a run counts as
converged when the two differ by less than ``convergence_tolerance``), on tasks whose query set gives the exact conditional
loss (``analysis._common.ExactQuery``: same optimum as sampled query points, less gradient noise),
``len(seeds)`` training seeds each. All maps are scored PAIRED on the same ``test_tasks`` fresh tasks
by the exact conditional query loss ½(w′ − w_τ)ᵀΣ(w′ − w_τ) + ½σ² (``simulator.held_out``), reported
as ratios to Q* and to the best diagonal map (delta method over tasks, combined with a Student-t
interval over seeds) and as the fraction of the gain from the best scalar step to Q* captured.

Training all 72 runs takes long (the stored file: 2,036 s wall on 2 cores shared with other jobs,
load about 8; per run 3–7 s of CPU time, measured separately), so full mode reads the
trained parameters stored in ``linmaml/analysis/data/direction_trained.json`` (written by
``python -m linmaml.analysis.fig_direction --retrain``, which retrains and then draws) and only scores
them; a stored file whose training settings differ from the code's is not used (then it retrains).

Run: ``python -m linmaml.analysis.fig_direction [--out DIR] [--quick] [--retrain]``; writes direction.png/.json.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np
import torch
from torch import nn

from linmaml import meta
from linmaml._io import atomic_write_json
from linmaml.analysis._common import ExactQuery, convergence
from linmaml.closedform import gaussian_lr as glr
from linmaml.closedform.preconditioner import preconditioner
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module
from linmaml.simulator import deep, linnet, meta_train, shallow
from linmaml.simulator.held_out import (adapted_end_to_end, gain_captured, mean_ci, paired_exact_losses,
                                        paired_ratio, seed_gain_summary, seed_ratio_summary)
from linmaml.tasks import RegressionFamily

NAME = "direction"

SETTINGS = {
    "kappas": [1, 10, 100, 1000],
    "d_in": 4, "task_mean": [1.0, -0.5, 0.5, 1.0], "noise_std": 0.1, "n_support": 100, "rotation_seed": 7,
    "omega": "Omega = Sigma^-1 (each eigen-direction of Sigma carries omega_i*s_i = 1 of tr(Omega Sigma) = d)",
    "inner_lr": "alpha* of each family (closedform.gaussian_lr.best_scalar_lr): every model trains at the best scalar step",
    "meta_optimizer": "adam", "meta_batch": 32, "schedule": "cosine", "init_scale": 1.0,
    # Adam's peak rate: 0.1 reaches the large steps κ = 1000 needs; Deep L=3 diverged at 0.1 there (a
    # ratio of 2,600 to Q*), so the three-factor chains peak at 0.05
    "meta_lr": {"default": 0.1, "Deep L=3": 0.05, "Shallow+LinNet": 0.05}, "snapshot_fraction": 0.9,
    "deep_widths": {"Deep L=2": [8], "Deep L=3": [8, 8]}, "linnet_widths": [8, 8],
    "convergence_tolerance": 0.01, "test_seed": 20210413, "ci_level": 0.95,
}
FULL = {"meta_steps": 1500, "seeds": [0, 1, 2], "test_tasks": 100_000, "convergence_tasks": 10_000, "chunk": 20_000}
QUICK = {"kappas": [1, 100], "meta_steps": 8, "seeds": [0, 1], "test_tasks": 2000, "convergence_tasks": 500,
         "chunk": 1000}

MODELS = ["Deep L=2", "Deep L=3", "Shallow+LinNet", "Shallow+KFO", "Shallow+Meta-SGD", "Shallow+learned rate"]
CHAINS = ("Deep L=2", "Deep L=3", "Shallow+LinNet")
COLORS = {"Deep L=2": "tab:red", "Deep L=3": "tab:purple", "Shallow+LinNet": "tab:orange", "Shallow+KFO": "tab:brown",
          "Shallow+Meta-SGD": "tab:green", "Shallow+learned rate": "tab:blue"}
MARKERS = {"Deep L=2": "o", "Deep L=3": "s", "Shallow+LinNet": "D", "Shallow+KFO": "^", "Shallow+Meta-SGD": "v",
           "Shallow+learned rate": "P"}
#: The keys of the settings that determine the stored training (a stored file must match them).
TRAINING_KEYS = ("kappas", "d_in", "task_mean", "noise_std", "n_support", "rotation_seed", "omega", "inner_lr",
                 "meta_optimizer", "meta_batch", "meta_lr", "schedule", "init_scale", "deep_widths", "linnet_widths",
                 "meta_steps", "seeds", "snapshot_fraction")
STORED = pathlib.Path(__file__).resolve().parent / "data" / "direction_trained.json"


def rotation(d: int, seed: int) -> np.ndarray:
    """A fixed random orthogonal (d, d) matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def family_parts(cfg: dict, kappa: float) -> dict:
    """U, Σ's eigenvalues s (geometric from 1 to 1/κ, mean 1), Σ = U diag(s) Uᵀ and Ω = Σ⁻¹."""
    d = cfg["d_in"]
    U = rotation(d, cfg["rotation_seed"])
    s = np.geomspace(1.0, 1.0 / kappa, d)
    s = s * d / s.sum()
    return {"U": U, "s": s, "Sigma": (U * s) @ U.T, "Omega": (U / s) @ U.T}


def family(cfg: dict, kappa: float):
    """The :class:`linmaml.tasks.RegressionFamily` of condition number ``kappa`` (module docstring);
    one query point (the scorer never uses sampled query points)."""
    p = family_parts(cfg, kappa)
    return RegressionFamily(cfg["d_in"], 1, task_mean=np.asarray(cfg["task_mean"])[None, :], task_cov=p["Omega"],
                            x_cov=p["Sigma"], noise_std=cfg["noise_std"], n_support=cfg["n_support"], n_query=1)


# --------------------------------------------------------------------------------------------------
# Models and their training


def _start(cfg: dict, seed: int):
    """The shallow start weights of seed ``seed`` (the same generator meta_train gives a chain)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    return shallow(cfg["d_in"], 1).init(rng, cfg["init_scale"])[0]


def build(label: str, cfg: dict, alpha: float, seed: int):
    """(model given to meta_train, the learner that adapts, the module whose named parameters are the
    trained ones). Chains: ``simulator.deep`` / ``simulator.linnet(shallow)``; the others
    ``meta.MAML(Linear, transform=KFO(psd=True) | MetaSGD() | LearnedRates())``."""
    d = cfg["d_in"]
    if label in CHAINS:
        chain = deep(d, 1, cfg["deep_widths"][label]) if label in cfg["deep_widths"] else \
            linnet(shallow(d, 1), cfg["linnet_widths"])
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
        learner = chain.learner(chain.init(rng, cfg["init_scale"]), alpha, 1)
        return chain, learner, learner.model
    linear = nn.Linear(d, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(_start(cfg, seed)))
    transform = {"Shallow+KFO": lambda: meta.KFO(psd=True), "Shallow+Meta-SGD": meta.MetaSGD,
                 "Shallow+learned rate": meta.LearnedRates}[label]()
    learner = meta.MAML(linear, lr=alpha, steps=1, transform=transform)
    return learner, learner, learner


def _load(module, values: dict) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.as_tensor(values[name], dtype=p.dtype))


def train_one(label: str, cfg: dict, fam, alpha: float, seed: int) -> dict:
    """Meta-train one model; its parameters at the end and at snapshot_fraction of the schedule, and a summary."""
    model, _, _ = build(label, cfg, alpha, seed)
    rate = cfg["meta_lr"].get(label, cfg["meta_lr"]["default"])
    common = dict(meta_steps=cfg["meta_steps"], meta_batch=cfg["meta_batch"], meta_lr=rate,
                  optimizer=cfg["meta_optimizer"], seed=seed, schedule=cfg["schedule"])
    began = time.perf_counter()
    if label in CHAINS:
        run = meta_train(model, ExactQuery(fam), lr=alpha, steps=1, init_scale=cfg["init_scale"],
                         record_preconditioner=False, **common)
    else:
        run = meta_train(model, ExactQuery(fam), loss="squared", **common)
    snapshot = int(cfg["snapshot_fraction"] * cfg["meta_steps"])
    return {"final": {n: W[-1].tolist() for n, W in zip(run.names, run.weights)},
            "snapshot": {n: W[snapshot].tolist() for n, W in zip(run.names, run.weights)},
            "snapshot_step": snapshot, "meta_lr": rate,
            "meta_loss_first50": float(run.meta_loss[:50].mean()), "meta_loss_last50": float(run.meta_loss[-50:].mean()),
            "seconds": round(time.perf_counter() - began, 2)}


def train_all(cfg: dict, log=None) -> dict:
    """Every model, seed and κ of ``cfg``: {str(κ): {label: [train_one(...) per seed]}}."""
    out = {}
    for kappa in cfg["kappas"]:
        fam = family(cfg, kappa)
        alpha, _ = glr.best_scalar_lr(fam)
        out[str(kappa)] = {}
        for label in MODELS:
            out[str(kappa)][label] = [train_one(label, cfg, fam, alpha, seed) for seed in cfg["seeds"]]
            if log is not None:
                secs = sum(r["seconds"] for r in out[str(kappa)][label])
                print(f"  kappa={kappa} {label}: {secs:.1f} s", file=log, flush=True)
    return out


def training_settings(cfg: dict) -> dict:
    return {k: cfg[k] for k in TRAINING_KEYS}


def stored_training(cfg: dict):
    """The stored trained parameters if their training settings are ``cfg``'s, else None."""
    if not STORED.is_file():
        return None
    data = json.loads(STORED.read_text())
    if data.get("training_settings") != json.loads(json.dumps(training_settings(cfg))):
        return None
    return data


def retrain(log=sys.stdout) -> dict:
    """Train the full mode's models and store them in :data:`STORED` (atomically); returns the data."""
    cfg = dict(SETTINGS, **FULL)
    began = time.perf_counter()
    trained = train_all(cfg, log)
    data = {"training_settings": training_settings(cfg), "seconds": round(time.perf_counter() - began, 1),
            "command": "python -m linmaml.analysis.fig_direction --retrain", "trained": trained}
    STORED.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(STORED, data)
    return data


# --------------------------------------------------------------------------------------------------
# Scoring


def _chain_linear_part(module, alpha: float, adapt_layers):
    """(W_e, α·P) of a chain module: its end-to-end map and first-order step (the α² terms dropped;
    P of the adapted layers, d_out = 1 so P is (d_in, d_in) and the step is g ↦ g·αP)."""
    weights = [p.detach().numpy() for _, p in module.named_parameters()]
    W_e = weights[0]
    for W in weights[1:]:
        W_e = W @ W_e
    return W_e, alpha * preconditioner(weights, adapt_layers=adapt_layers)


def compute(quick: bool = False, retrained: dict | None = None) -> dict:
    size = QUICK if quick else FULL
    cfg = dict(SETTINGS, **size, quick=bool(quick))
    level = cfg["ci_level"]
    source = "trained now"
    trained = None
    if retrained is not None:
        trained, source = retrained["trained"], f"retrained now ({retrained['seconds']} s)"
    elif not quick:
        stored = stored_training(cfg)
        if stored is not None:
            trained = stored["trained"]
            source = f"stored: linmaml/analysis/data/direction_trained.json (trained in {stored['seconds']} s)"
    if trained is None:
        began = time.perf_counter()
        trained = train_all(cfg)
        source = f"trained now ({time.perf_counter() - began:.1f} s)"

    numbers = {"per_kappa": {}, "training_source": source}
    for kappa in cfg["kappas"]:
        fam = family(cfg, kappa)
        parts = family_parts(cfg, kappa)
        m = fam.task_mean
        alpha, scalar_loss = glr.best_scalar_lr(fam)
        _, Q = glr.optimal_one_step_map(fam)
        _, q = glr.optimal_diagonal_map(fam)
        exact = {"best_scalar_step": scalar_loss,
                 "best_diagonal_map": glr.expected_one_step_map_loss(fam, np.diag(q)),
                 "best_linear_map_Q_star": glr.expected_one_step_map_loss(fam, Q),
                 "no_adaptation": glr.expected_one_step_map_loss(fam, np.zeros_like(Q))}
        maps = {"best scalar step": lambda b, a=alpha: glr.apply_one_step_map(b, a * np.eye(len(q)), m),
                "best diagonal map": lambda b, qq=q: glr.apply_one_step_map(b, np.diag(qq), m),
                "best linear map Q*": lambda b, QQ=Q: glr.apply_one_step_map(b, QQ, m),
                "Bayes posterior mean": lambda b, f=fam: glr.bayes_posterior_mean(f, b.Xs, b.Ys)}
        final_maps, snapshot_maps = {}, {}
        runs = trained[str(kappa)]
        for label in MODELS:
            for i, seed in enumerate(cfg["seeds"]):
                for when, target in (("final", final_maps), ("snapshot", snapshot_maps)):
                    model, learner, module = build(label, cfg, alpha, seed)
                    _load(module, runs[label][i][when])
                    target[(label, i)] = lambda b, L=learner: adapted_end_to_end(L, b)
                    if label in CHAINS and when == "final":
                        W_e, aP = _chain_linear_part(module, alpha, model.adapt_layers)
                        maps[(label + " linear part", i)] = lambda b, W=W_e, A=aP: glr.apply_one_step_map(b, A, W)
        maps.update(final_maps)
        losses = paired_exact_losses(maps, fam, cfg["test_tasks"], seed=cfg["test_seed"] + kappa, chunk=cfg["chunk"])
        conv = paired_exact_losses({**{("final",) + k: v for k, v in final_maps.items()},
                                    **{("snapshot",) + k: v for k, v in snapshot_maps.items()}},
                                   fam, cfg["convergence_tasks"], seed=cfg["test_seed"] + 7 * kappa + 1,
                                   chunk=cfg["chunk"])
        # the Bayes floor given the support inputs (exact over w and noise), Monte Carlo over inputs
        rng = np.random.default_rng(cfg["test_seed"] + 3 * kappa)
        floor = np.concatenate([glr.bayes_conditional_loss(fam, fam.sample(min(cfg["chunk"], cfg["test_tasks"]), rng).Xs)
                                for _ in range(max(1, cfg["test_tasks"] // cfg["chunk"]))])
        scalar, diag, best = losses["best scalar step"], losses["best diagonal map"], losses["best linear map Q*"]

        def se(v):
            return float(v.std(ddof=1) / np.sqrt(v.size))

        has_gain = bool(scalar_loss / exact["best_linear_map_Q_star"] - 1 > 1e-6)
        entry = {
            "kappa": kappa, "Sigma_eigenvalues": parts["s"].tolist(), "inner_lr_alpha_star": alpha,
            "Q_star_eigenvalues": np.linalg.eigvalsh(Q).tolist(), "best_diagonal_q": q.tolist(),
            "exact_expected_loss": exact,
            "best_scalar_over_Q_star_exact": scalar_loss / exact["best_linear_map_Q_star"],
            "best_diagonal_over_Q_star_exact": exact["best_diagonal_map"] / exact["best_linear_map_Q_star"],
            "bayes_floor": {"mean": float(floor.mean()), "se": se(floor), "inputs_sampled": int(floor.size),
                            "what": "E_X[1/2 tr(Sigma Lambda^-1) + 1/2 sigma^2], Lambda = Omega^-1 + X^T X / sigma^2"},
            "paired_tasks": {"n": int(scalar.size), "seed": cfg["test_seed"] + kappa,
                             "mean_loss": {k: {"mean": float(losses[k].mean()), "se": se(losses[k])}
                                           for k in ("best scalar step", "best diagonal map", "best linear map Q*",
                                                     "Bayes posterior mean")}},
            "Q_star_over_bayes": paired_ratio(best, losses["Bayes posterior mean"], level),
            # κ = 1: the scalar step is already Q*, there is no gain to capture (fractions are None)
            "has_gain": has_gain,
            "best_diagonal_gain_captured": None if not has_gain else {k: v for k, v in zip(("fraction", "ci95"),
                                                                 _gain(diag, scalar, best, level))},
            "models": {},
        }
        for label in MODELS:
            S = range(len(cfg["seeds"]))
            L = np.stack([losses[(label, i)] for i in S])
            model = {
                "mean_loss_per_seed": [float(v.mean()) for v in L],
                "mean_loss": float(L.mean()),
                "over_Q_star": seed_ratio_summary(L, best, level),
                "over_best_diagonal": seed_ratio_summary(L, diag, level),
                "over_best_scalar": seed_ratio_summary(L, scalar, level),
                "gain_captured_scalar_to_Q_star": seed_gain_summary(L, scalar, best, level) if has_gain else None,
                "training": [{k: r[k] for k in ("seconds", "meta_loss_first50", "meta_loss_last50",
                                                "snapshot_step", "meta_lr")} for r in runs[label]],
            }
            model["convergence"] = convergence([conv[("final", label, i)] for i in S],
                                               [conv[("snapshot", label, i)] for i in S], cfg["convergence_tolerance"])
            if label in CHAINS:
                lin = np.stack([losses[(label + " linear part", i)] for i in S])
                model["linear_part_alpha_P"] = {
                    "what": "the same trained weights with the alpha^2 terms dropped: w' = W_e - alpha * g P",
                    "mean_loss": float(lin.mean()),
                    "full_over_linear_part": _pooled_ratio(L, lin, level),
                    "linear_part_over_Q_star": seed_ratio_summary(lin, best, level),
                }
            entry["models"][label] = model
        numbers["per_kappa"][str(kappa)] = entry
    numbers["summary"] = _summary(numbers["per_kappa"], cfg)
    settings = dict(cfg, models=MODELS, evaluation=(
        "every map scored on the same fresh tasks (family.sample chunks from test_seed + kappa) by the exact "
        "conditional query loss 1/2 (w'-w)^T Sigma (w'-w) + 1/2 sigma^2 (simulator.held_out.exact_query_loss); "
        "ratios of means with delta-method intervals over tasks combined (root sum of squares) with Student-t "
        "intervals over training seeds (simulator.held_out.seed_ratio_summary)"),
        convergence=("Adam with a cosine schedule from meta_lr to 0 over meta_steps; converged = the paired exact "
                     "loss at snapshot_fraction of the schedule and at its end differ by less than "
                     "convergence_tolerance (relative), on convergence_tasks tasks"))
    return {"figure": NAME, "settings": settings, "numbers": numbers}


def _gain(model, baseline, best, level):
    g = gain_captured(model, baseline, best, level)
    return g["fraction"], g["ci95"]


def _pooled_ratio(L, lin, level):
    """Seed-averaged full loss over seed-averaged linear-part loss (paired over tasks), per-seed too."""
    out = paired_ratio(L.mean(axis=0), lin.mean(axis=0), level)
    out["per_seed"] = [paired_ratio(a, b, level)["ratio"] for a, b in zip(L, lin)]
    return out


def _summary(per_kappa: dict, cfg: dict) -> dict:
    """Per κ and model: the ratios to Q* and to the best diagonal map and the gain captured (value, ci95)."""
    out = {}
    for kappa, entry in per_kappa.items():
        row = {"best_scalar_over_Q_star": entry["best_scalar_over_Q_star_exact"],
               "best_diagonal_over_Q_star": entry["best_diagonal_over_Q_star_exact"],
               "best_diagonal_gain_captured": entry["best_diagonal_gain_captured"] and
               entry["best_diagonal_gain_captured"]["fraction"],
               "Q_star_over_bayes_floor": entry["exact_expected_loss"]["best_linear_map_Q_star"]
               / entry["bayes_floor"]["mean"]}
        for label, m in entry["models"].items():
            row[label] = {"over_Q_star": [m["over_Q_star"]["ratio"], m["over_Q_star"]["ci95"]],
                          "over_best_diagonal": [m["over_best_diagonal"]["ratio"], m["over_best_diagonal"]["ci95"]],
                          "gain_captured": m["gain_captured_scalar_to_Q_star"] and
                          [m["gain_captured_scalar_to_Q_star"]["fraction"], m["gain_captured_scalar_to_Q_star"]["ci95"]],
                          "all_seeds_converged": all(m["convergence"]["converged"])}
        out[kappa] = row
    return out


# --------------------------------------------------------------------------------------------------
# Figure


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    num, cfg = result["numbers"], result["settings"]
    per = num["per_kappa"]
    kappas = [per[k]["kappa"] for k in per]
    fig, (ax_loss, ax_ratio, ax_gain) = plt.subplots(1, 3, figsize=(17, 7.0))

    def ref(key):
        return [per[k]["exact_expected_loss"][key] for k in per]

    ax_loss.plot(kappas, ref("best_scalar_step"), "k-", lw=2, label="best scalar step (exact)")
    ax_loss.plot(kappas, ref("best_diagonal_map"), "k--", lw=2, label="best diagonal map (exact)")
    ax_loss.plot(kappas, ref("best_linear_map_Q_star"), "k:", lw=2.5, label="best linear one-step map Q* (exact)")
    ax_loss.plot(kappas, [per[k]["bayes_floor"]["mean"] for k in per], color="0.5", lw=2, ls="-.",
                 label="Bayes posterior mean (floor, any map)")
    n_models = len(MODELS)
    for j, label in enumerate(MODELS):
        shift = [k * 1.09 ** (j - (n_models - 1) / 2) for k in kappas]
        ax_loss.plot(shift, [per[k]["models"][label]["mean_loss"] for k in per], MARKERS[label], color=COLORS[label],
                     ms=7, ls="none", label=f"{label} (trained, mean of seeds)")
    ax_loss.set_xscale("log")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("condition number κ of Σ")
    ax_loss.set_ylabel("exact query loss after one step")
    ax_loss.set_title("(a) one-step loss: references and trained models", fontsize=10)
    ax_loss.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)

    for j, label in enumerate(MODELS):
        shift = [k * 1.09 ** (j - (n_models - 1) / 2) for k in kappas]
        r = [per[k]["models"][label]["over_Q_star"] for k in per]
        ax_ratio.errorbar(shift, [x["ratio"] for x in r], yerr=[x["ci95"] for x in r], marker=MARKERS[label],
                          color=COLORS[label], ls="none", ms=6, capsize=3, label=label)
    ax_ratio.plot(kappas, [per[k]["best_diagonal_over_Q_star_exact"] for k in per], "k--", lw=1.5,
                  label="best diagonal map / Q*")
    ax_ratio.plot(kappas, [per[k]["best_scalar_over_Q_star_exact"] for k in per], "k-", lw=1.5,
                  label="best scalar step / Q*")
    ax_ratio.axhline(1.0, color="k", ls=":", lw=1.5)
    ax_ratio.set_xscale("log")
    ax_ratio.set_yscale("log")
    ax_ratio.set_xlabel("condition number κ of Σ")
    ax_ratio.set_ylabel("paired ratio of mean losses to Q*")
    ax_ratio.set_title("(b) trained / best linear map Q* (95% CI: tasks and seeds)", fontsize=10)
    ax_ratio.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)

    gained = [k for k in per if per[k]["has_gain"]]
    for j, label in enumerate(MODELS):
        shift = [per[k]["kappa"] * 1.09 ** (j - (n_models - 1) / 2) for k in gained]
        g = [per[k]["models"][label]["gain_captured_scalar_to_Q_star"] for k in gained]
        ax_gain.errorbar(shift, [100 * x["fraction"] for x in g], yerr=[100 * x["ci95"] for x in g],
                         marker=MARKERS[label], color=COLORS[label], ls="none", ms=6, capsize=3, label=label)
    ax_gain.plot([per[k]["kappa"] for k in gained], [100 * per[k]["best_diagonal_gain_captured"]["fraction"]
                                                      for k in gained], "k--", lw=1.5, label="best diagonal map")
    ax_gain.axhline(100, color="k", ls=":", lw=1.5)
    ax_gain.axhline(0, color="k", lw=1)
    ax_gain.set_xscale("log")
    ax_gain.set_xlabel("condition number κ of Σ (κ = 1 left out: no gain to capture)")
    ax_gain.set_ylabel("% of the gain best scalar step → Q* captured")
    ax_gain.set_title("(c) fraction of the best linear map's gain captured", fontsize=10)
    ax_gain.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    for ax in (ax_loss, ax_ratio, ax_gain):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Direction, not step size: d = {cfg['d_in']}, n = {cfg['n_support']}, σ = {cfg['noise_std']}, "
                 f"rotated Σ, Ω = Σ⁻¹; trained at α* with Adam + cosine over {cfg['meta_steps']} meta-steps, "
                 f"{len(cfg['seeds'])} seeds; {cfg['test_tasks']:,} paired tasks, exact conditional loss", fontsize=11)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


def summary(record: dict) -> list[str]:
    """One line per κ (printed by ``main``)."""
    lines = []
    for kappa, entry in record["numbers"]["per_kappa"].items():
        line = [f"kappa={kappa}: scalar/Q*={entry['best_scalar_over_Q_star_exact']:.2f}",
                f"diag/Q*={entry['best_diagonal_over_Q_star_exact']:.2f}"]
        for label, m in entry["models"].items():
            line.append(f"{label} {m['over_Q_star']['ratio']:.3f}±{m['over_Q_star']['ci95']:.3f}")
        lines.append("; ".join(line))
    return lines


def _retrain() -> None:
    data = retrain()
    print(f"stored {STORED} ({data['seconds']} s of training)")


run, main = figure_module(NAME, __doc__, compute, draw, summary=summary,
                          quick_help="two families, a few meta-steps, 2,000 tasks (seconds)",
                          flags={"--retrain": ("retrain the stored models first (their file's 'seconds' say how long "
                                               "it took), then draw", _retrain)})

if __name__ == "__main__":
    main()
