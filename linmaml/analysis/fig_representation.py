"""MAML and ANIL learn the shared representation; average-loss training does not (Collins, Mokhtari, Oh &
Shakkottai 2022, "MAML and ANIL provably learn representations", Figure 1).

Multi-task linear regression with a shared rank-k representation
(:class:`linmaml.tasks.LowRankRegressionFamily`): y = θ_τᵀ B*ᵀ x with B* (d, k) orthonormal, heads
θ_τ ~ N(0, diag(1, …, 1, μ²)), x ~ N(0, I), no noise. The model is the two-layer linear network
x ↦ W2 W1 x (W1 (k, d) the representation, W2 (1, k) the head), meta-trained by the library's one
engine (:func:`linmaml.simulator.meta_train` on a :class:`linmaml.simulator.LinearChain`) with one inner
step of size α:

* exact ANIL — only the head adapts (``adapt_layers=(1,)``), second order;
* exact MAML — both layers adapt, second order;
* FO-ANIL, FO-MAML — the same with the inner gradients detached (``first_order=True``);
* average loss (ERM) — no inner step (``steps=0``): the plain multi-task loss of one shared map.

Every run starts from the same kind of point: W1 with orthonormal rows spanning a random subspace
(drawn per seed), W2 = 0 (the task mean). The figure plots dist(W1ᵀ, B*), the sine of the largest
principal angle between the learned row space and the true subspace
(:func:`linmaml.tasks.principal_angle_distance`), against meta-iterations, as the geometric mean over
seeds with a 95% band (t interval on log10 of the distance).

(a) **Population inner step** (the regime of the paper's infinite-sample analysis): each task's support
    set gives its exact population gradient (:class:`linmaml.analysis._common.PopulationSupport`),
    query points are sampled. The exact ANIL curve has an exact theory beside it: deterministic
    gradient descent on the exact expected ANIL objective (:func:`linmaml.closedform.lowrank.anil_expected_loss_and_grad`,
    the infinite-meta-batch limit of the simulated runs) from the same start; average-loss training has
    an exact theory too: its expected gradient vanishes at W2 = 0 = task mean, so it never moves.
(b) **Finite samples**: support and query sets of ``finite_n`` sampled points each, where the sampled
    inner step leaves per-task noise in the meta-gradient and the distance stalls at a floor.

Numbers (``numbers``): per method, the distance at the end (geometric mean and its 95% interval over
seeds), the exponential rate (the slope of log10 distance per 100 iterations fitted on the part of each
run between 10⁻¹ and 10⁻⁷, mean and interval over seeds), and how many seeds reached 10⁻³.

Run: ``python -m linmaml.analysis.fig_representation [--out DIR] [--quick]``; writes representation.png/.json.
"""
from __future__ import annotations

import pathlib

import numpy as np
import torch

from linmaml.analysis._common import PopulationSupport
from linmaml.closedform.lowrank import anil_expected_loss_and_grad
from linmaml.intervals import t_quantile
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import figure_module
from linmaml.simulator import LinearChain, meta_train
from linmaml.tasks import LowRankRegressionFamily, orthonormal_basis, principal_angle_distance

NAME = "representation"

SOURCE = {"paper": "L. Collins, A. Mokhtari, S. Oh, S. Shakkottai, MAML and ANIL Provably Learn Representations, "
                   "ICML 2022 (arXiv:2202.03483)",
          "figure": "Figure 1",
          "claim": "exact ANIL, exact MAML, FO-ANIL and FO-MAML recover the ground-truth subspace exponentially fast; "
                   "average-loss minimisation does not"}

METHODS = {  # label: (adapt_layers, first_order, inner steps)
    "ANIL": ((1,), False, 1),
    "MAML": (None, False, 1),
    "FO-ANIL": ((1,), True, 1),
    "FO-MAML": (None, True, 1),
    "average loss": (None, False, 0),
}

SETTINGS = {
    "d": 20, "k": 3, "mu": 0.5, "noise_std": 0.0, "basis_seed": 0,
    "inner_lr": 1.0, "meta_optimizer": "sgd", "meta_lr": 0.12, "meta_batch": 20,
    "population_query_points": 20, "finite_n": 40,
    "settings_note": "d, k, mu, rates and batch sizes are linmaml's choices; the paper's Figure 1 states only the "
                     "head distribution N(0, diag(1, ..., 1, mu^2))",
    "rate_window": [1e-7, 1e-1], "converged_below": 1e-3, "ci_level": 0.95,
}
FULL = {"meta_iterations": 360, "seeds": 4, "finite_seeds": 3}
QUICK = {"meta_iterations": 30, "seeds": 2, "finite_seeds": 2}


def family(cfg: dict, n: int):
    k = cfg["k"]
    return LowRankRegressionFamily(cfg["d"], 1, rank=k, head_cov=[1.0] * (k - 1) + [cfg["mu"] ** 2],
                                   noise_std=cfg["noise_std"], n_support=n, n_query=n, basis_seed=cfg["basis_seed"])


def start(cfg: dict, seed: int) -> list[np.ndarray]:
    """W1 with orthonormal rows on a random subspace (seeded), W2 = 0."""
    return [orthonormal_basis(cfg["d"], cfg["k"], seed=10_000 + seed).T.copy(), np.zeros((1, cfg["k"]))]


def distances(W1_path: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """dist(W1ᵀ, B*) at every recorded step (W1_path (S+1, k, d)); NaN where the run diverged."""
    with np.errstate(all="ignore"):
        return np.array([principal_angle_distance(W.T, basis) if np.all(np.isfinite(W)) and np.abs(W).max() < 1e150
                         else np.nan for W in W1_path])


def train(cfg: dict, fam, method: str, seed: int, meta_iterations: int) -> np.ndarray:
    adapt, first_order, steps = METHODS[method]
    chain = LinearChain((cfg["d"], cfg["k"], 1), adapt_layers=adapt)
    init = [torch.as_tensor(W) for W in start(cfg, seed)]
    run = meta_train(chain, fam, lr=cfg["inner_lr"], steps=steps, first_order=first_order if steps else False,
                     init=init, meta_steps=meta_iterations, meta_batch=cfg["meta_batch"], meta_lr=cfg["meta_lr"],
                     optimizer=cfg["meta_optimizer"], seed=seed, record_preconditioner=False)
    return run.weights[0], run.weights[1]


def anil_theory(cfg: dict, fam, seed: int, meta_iterations: int) -> np.ndarray:
    """Deterministic gradient descent (rate meta_lr) on the exact expected ANIL objective with the
    population inner step, from the same start: the infinite-meta-batch limit of the ANIL runs."""
    layers = start(cfg, seed)
    path = [layers[0].copy()]
    for _ in range(meta_iterations):
        _, grads = anil_expected_loss_and_grad(layers, fam, cfg["inner_lr"], population=True)
        layers = [W - cfg["meta_lr"] * G for W, G in zip(layers, grads)]
        path.append(layers[0].copy())
    return np.array(path)


def head_norms(W2_path: np.ndarray) -> tuple[float | None, int | None]:
    """(largest ‖W2‖ over the finite part of the run, first step with non-finite weights or None)."""
    with np.errstate(all="ignore"):  # a diverging run passes through huge but finite weights
        finite = np.array([np.all(np.isfinite(W)) for W in W2_path])
        norms = [float(np.linalg.norm(W)) for W in W2_path[finite]]
    first_bad = int(np.argmin(finite)) if not finite.all() else None
    return _json_safe(max(norms) if norms else None), first_bad


def summarise(curves: np.ndarray, cfg: dict) -> dict:
    """Per-step geometric mean and t band of the distance over seeds (rows), end values, fitted rates."""
    seeds = curves.shape[0]
    finite = np.all(np.isfinite(curves), axis=1)
    logs = np.log10(np.clip(curves[finite], 1e-300, None))
    t = t_quantile(max(logs.shape[0] - 1, 1), cfg["ci_level"])
    mean = logs.mean(axis=0) if logs.size else np.full(curves.shape[1], np.nan)
    half = t * logs.std(axis=0, ddof=1) / np.sqrt(logs.shape[0]) if logs.shape[0] > 1 else np.zeros_like(mean)
    low, high = cfg["rate_window"]
    rates = []
    for row in curves[finite]:
        inside = np.flatnonzero((row > low) & (row < high))
        if inside.size >= 5:  # slope of log10 distance per 100 iterations (least squares on the window)
            rates.append(100 * np.polyfit(inside, np.log10(row[inside]), 1)[0])
    rates = np.array(rates)
    rate_half = (t_quantile(rates.size - 1, cfg["ci_level"]) * rates.std(ddof=1) / np.sqrt(rates.size)
                 if rates.size > 1 else float("nan"))
    if not finite.any():  # every seed diverged: nothing to average
        mean = half = np.full(curves.shape[1], np.nan)
    return _json_safe({
        "geometric_mean": (10 ** mean).tolist(), "band_low": (10 ** (mean - half)).tolist(),
        "band_high": (10 ** (mean + half)).tolist(),
        "final_distance": float(10 ** mean[-1]), "final_ci": [float(10 ** (mean[-1] - half[-1])),
                                                             float(10 ** (mean[-1] + half[-1]))],
        "final_per_seed": [float(x) for x in curves[:, -1]],
        "diverged_seeds": int(seeds - finite.sum()),
        "converged_seeds": int(np.sum(np.nan_to_num(curves[:, -1], nan=1.0) < cfg["converged_below"])),
        "seeds": seeds,
        "log10_rate_per_100_iterations": float(rates.mean()) if rates.size else None,
        "rate_ci_half_width": float(rate_half) if rates.size > 1 else None,
        "rate_fitted_seeds": int(rates.size),
    })


def _json_safe(value):
    """NaN (a diverged seed, an undefined interval) as None, recursively: the JSON holds no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def compute(quick: bool = False) -> dict:
    torch.set_num_threads(1)

    size = QUICK if quick else FULL
    cfg = {**SETTINGS, **size}
    S = cfg["meta_iterations"]
    population_family = family(cfg, cfg["population_query_points"])
    basis = population_family.basis
    regimes = {"population": (PopulationSupport(population_family), cfg["seeds"]),
               "finite": (family(cfg, cfg["finite_n"]), cfg["finite_seeds"])}
    numbers = {"initial_distance_per_seed": [float(distances(start(cfg, s)[0][None], basis)[0])
                                             for s in range(cfg["seeds"])]}
    for regime, (fam, seeds) in regimes.items():
        block = {}
        for method in METHODS:
            runs = [train(cfg, fam, method, seed, S) for seed in range(seeds)]
            curves = np.array([distances(W1, basis) for W1, _ in runs])
            heads = [head_norms(W2) for _, W2 in runs]
            block[method] = {**summarise(curves, cfg), "head_norm_max_per_seed": [h[0] for h in heads],
                             "diverged_at_step_per_seed": [h[1] for h in heads]}
        numbers[regime] = block
    theory = np.array([distances(anil_theory(cfg, population_family, seed, S), basis) for seed in range(cfg["seeds"])])
    numbers["population"]["ANIL theory"] = summarise(theory, cfg)
    sim = np.log10(np.array(numbers["population"]["ANIL"]["geometric_mean"], dtype=float))
    exact = np.log10(np.array(numbers["population"]["ANIL theory"]["geometric_mean"], dtype=float))
    numbers["anil_sim_minus_theory_log10_max"] = _json_safe(float(np.max(np.abs(sim - exact))))
    return {"figure": NAME, "source": SOURCE, "settings": {**cfg, "quick": quick}, "numbers": numbers}


COLORS = {"ANIL": "C0", "MAML": "C1", "FO-ANIL": "C2", "FO-MAML": "C3", "average loss": "0.3"}


def draw(result: dict, path: pathlib.Path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    n = result["numbers"]
    s = result["settings"]
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4), sharey=True)
    for ax, regime, title in ((axes[0], "population", "(a) population inner step, sampled query points"),
                              (axes[1], "finite", f"(b) {s['finite_n']} sampled support and query points")):
        block = n[regime]
        for method, color in COLORS.items():
            row = block[method]
            mean, low, high = (np.array(row[key], dtype=float) for key in ("geometric_mean", "band_low", "band_high"))
            steps = np.arange(mean.size)
            kept = row["seeds"] - row["diverged_seeds"]
            label = f"{method} ({row['seeds']} seeds" + (f"; {row['diverged_seeds']} diverged, mean of {kept})"
                                                         if row["diverged_seeds"] else ")")
            ax.plot(steps, mean, color=color, lw=1.6, label=label)
            ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
        if "ANIL theory" in block:
            row = block["ANIL theory"]
            ax.plot(np.arange(len(row["geometric_mean"])), row["geometric_mean"], color="k", ls=":", lw=1.4,
                    label="ANIL exact theory (expected objective)")
        ax.set_yscale("log")
        ax.set_ylim(top=2.0)
        ax.set_xlabel("meta-iteration")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("dist(W1ᵀ, B*) = sin(largest principal angle)")
    axes[0].legend(fontsize=7.5, loc="lower left")
    fig.suptitle(f"Representation learning on rank-{s['k']} tasks in d = {s['d']} (heads N(0, diag(1, …, 1, "
                 f"μ² = {s['mu'] ** 2:g})), α = {s['inner_lr']:g}, SGD {s['meta_lr']:g}, {s['meta_batch']} tasks/step)"
                 f" — after Collins et al. 2022, Fig. 1", fontsize=10)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


run, main = figure_module(NAME, __doc__, compute, draw, quick_help="30 iterations, 2 seeds (seconds)")

if __name__ == "__main__":
    main()
