"""Every figure module (linmaml.analysis.fig_*) in quick mode: the shared interface (NAME, run(out_dir, quick) writing
NAME.png and NAME.json atomically and returning the JSON's dict), and, for the simulator figures,
their numbers against independent recomputations (numpy closed forms, direct CI formulas, Monte
Carlo estimates with their standard errors)."""
from __future__ import annotations

import importlib
import json
import math
import pkgutil

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from linmaml.closedform import deep_linear as cf  # noqa: E402
from linmaml.tasks import ClassificationFamily, RegressionFamily  # noqa: E402

import linmaml.analysis  # noqa: E402

SCRIPTS = sorted(m.name for m in pkgutil.iter_modules(linmaml.analysis.__path__) if m.name.startswith("fig_"))


def _load(script: str):
    return importlib.import_module(f"linmaml.analysis.{script}")


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Run each script once in quick mode (cached for the module): name -> (record, out_dir)."""
    cache = {}

    def get(script):
        if script not in cache:
            out = tmp_path_factory.mktemp(script)
            module = _load(script)
            cache[script] = (module, module.run(out, quick=True), out)
        return cache[script]

    return get


def test_there_are_analysis_scripts():
    assert {"fig_adaptation", "fig_preconditioner", "fig_remedies", "fig_surface"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_follows_the_interface(script, quick_runs):
    module, record, out = quick_runs(script)
    name = module.NAME
    assert isinstance(name, str) and name
    on_disk = json.loads((out / f"{name}.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["figure"] == name and isinstance(record["settings"], dict) and isinstance(record["numbers"], dict)
    assert record["settings"].get("quick") is True
    with Image.open(out / f"{name}.png") as image:
        assert image.format == "PNG" and min(image.size) > 200
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def _t975(n):
    return stats.t.ppf(0.975, n - 1)


def test_adaptation_numbers_recomputed_with_the_closed_forms(quick_runs):
    _, record, _ = quick_runs("fig_adaptation")
    cfg, num = record["settings"], record["numbers"]
    r, c = cfg["regression"], cfg["classification"]
    families = {
        "regression": RegressionFamily(r["d_in"], r["d_out"], task_mean=r["task_mean"], task_cov=r["task_var"],
                                       x_cov=r["x_var"], noise_std=r["noise_std"], n_support=r["n_support"],
                                       n_query=r["n_query"]),
        "classification": ClassificationFamily(c["d_in"], task_mean=c["task_mean"], task_cov=c["task_var"],
                                               x_cov=c["x_var"], flip=c["flip"], n_support=c["n_support"],
                                               n_query=c["n_query"]),
    }
    n = cfg["test_tasks"]
    per_task = {}
    for problem, family in families.items():
        tasks = family.sample(n, cfg["test_seed"])
        for curve in num[problem]["curves"]:
            model = num[problem]["models"][curve["name"]]
            weights = [np.array(W) for W in model["weights"]]
            loss = np.zeros((2, n))
            acc = np.zeros((2, n))
            for t, (Xs, Ys, Xq, Yq) in enumerate(tasks):
                for k in (0, 1):
                    adapted = cf.adapt(weights, Xs, Ys, cfg["inner_lr"], k, "squared" if problem == "regression" else "logistic")
                    loss[k, t] = cf.task_loss(adapted, Xq, Yq, "squared" if problem == "regression" else "logistic")
                    acc[k, t] = np.mean((Xq @ cf.end_to_end(adapted).T > 0) == (Yq > 0.5))
            per_task[curve["name"]] = (loss, acc)
            np.testing.assert_allclose(curve["loss_mean"][:2], loss.mean(axis=1), rtol=1e-10)
            np.testing.assert_allclose(curve["loss_ci"][:2], _t975(n) * loss.std(axis=1, ddof=1) / math.sqrt(n), rtol=1e-8)
            if problem == "classification":
                np.testing.assert_allclose(curve["accuracy_mean"][:2], acc.mean(axis=1), rtol=1e-12)
            assert len(curve["loss_mean"]) == cfg["eval_inner_steps"] + 1
    shallow_name, deep_name = (cv["name"] for cv in num["regression"]["curves"])
    logr_name, linnet_name = (cv["name"] for cv in num["classification"]["curves"])
    ratio = per_task[deep_name][0][1].mean() / per_task[shallow_name][0][1].mean()
    assert num["criteria"]["deep_over_shallow_one_step_query_loss"]["value"] == pytest.approx(ratio, rel=1e-10)
    gap = 100 * (per_task[linnet_name][1][1] - per_task[logr_name][1][1])
    crit = num["criteria"]["linnet_minus_logr_one_step_accuracy_points"]
    assert crit["value"] == pytest.approx(gap.mean(), abs=1e-9)
    assert crit["ci95"] == pytest.approx(_t975(n) * gap.std(ddof=1) / math.sqrt(n), rel=1e-8)


def _one_step_losses_from_mean(f: dict, c_values, n_tasks: int, seed: int):
    """Monte Carlo: query loss of W' = M − c·G (G the support gradient at the task mean M), per task
    and per c, on common random tasks of the isotropic regression family."""
    fam = RegressionFamily(f["d_in"], f["d_out"], task_mean=f["task_mean"], task_cov=f["task_var"], x_cov=f["x_var"],
                           noise_std=f["noise_std"], n_support=f["n_support"], n_query=f["n_query"])
    b = fam.sample(n_tasks, seed)
    M = np.broadcast_to(fam.task_mean, b.W.shape)
    G = np.swapaxes(b.Xs @ np.swapaxes(M, 1, 2) - b.Ys, 1, 2) @ b.Xs / f["n_support"]
    out = []
    for c in c_values:
        W = M - c * G
        resid = b.Xq @ np.swapaxes(W, 1, 2) - b.Yq
        out.append(0.5 * (resid ** 2).sum(axis=(1, 2)) / f["n_query"])
    return np.array(out)


def test_preconditioner_optimum_checked_by_monte_carlo(quick_runs):
    _, record, _ = quick_runs("fig_preconditioner")
    cfg, num = record["settings"], record["numbers"]
    c_star = num["c_star"]
    assert num["c_star_rel_diff_vs_gaussian"] < 1e-12 and num["loss_rel_diff_vs_gaussian"] < 1e-12
    losses = _one_step_losses_from_mean(cfg["family"], [c_star - 0.15, c_star, c_star + 0.15, cfg["inner_lr"]], 20000, 1)
    mean, se = losses.mean(axis=1), losses.std(axis=1, ddof=1) / math.sqrt(losses.shape[1])
    assert abs(mean[1] - num["optimal_one_step_query_loss"]) < 4 * se[1]
    assert abs(mean[3] - num["shallow_one_step_query_loss_at_mean"]) < 4 * se[3]
    # c* is a minimum: both neighbours are worse (paired differences on common tasks, 4 SE).
    for other in (0, 2):
        diff = losses[other] - losses[1]
        assert diff.mean() > 4 * diff.std(ddof=1) / math.sqrt(diff.size)
    for label, m in num["models"].items():
        assert m["closed_form_vs_autograd_eigenvalues_max_rel_diff"] < 1e-10
        eig = np.array(m["alpha_P_eigenvalues_final"])
        assert len(eig) == cfg["family"]["d_in"] * cfg["family"]["d_out"] and np.all(np.diff(eig) >= 0)
        assert m["final_mean_eigenvalue_over_c_star"] == pytest.approx(eig.mean() / c_star)


def test_remedies_one_step_losses_recomputed_by_hand(quick_runs):
    """One inner step written out in numpy from the reported parameters: plain W − αG, KFO
    W − α(LᵀL)G(RᵀR), LinNet and Deep through the closed-form deep-linear adapt."""
    _, record, _ = quick_runs("fig_remedies")
    cfg, num = record["settings"], record["numbers"]
    f, alpha, n = cfg["family"], cfg["inner_lr"], cfg["test_tasks"]
    fam = RegressionFamily(f["d_in"], f["d_out"], task_mean=f["task_mean"], task_cov=f["task_var"], x_cov=f["x_var"],
                           noise_std=f["noise_std"], n_support=f["n_support"], n_query=f["n_query"])
    p = num["final_parameters"]
    losses = {k: np.zeros(n) for k in p}
    for t, (Xs, Ys, Xq, Yq) in enumerate(fam.sample(n, cfg["test_seed"])):
        def query(W):
            return 0.5 * np.sum((Xq @ W.T - Yq) ** 2) / len(Xq)

        for kind in ("plain", "kfo"):
            W = np.array(p[kind]["W"])
            G = (Xs @ W.T - Ys).T @ Xs / len(Xs)
            if kind == "kfo":
                G = np.array(p[kind]["LtL"]) @ G @ np.array(p[kind]["RtR"])
            losses[kind][t] = query(W - alpha * G)
        for kind in ("linnet", "deep"):
            chain = [np.array(W) for W in p[kind]["chain"]]
            losses[kind][t] = query(cf.end_to_end(cf.adapt(chain, Xs, Ys, alpha, 1)))
    for kind, values in losses.items():
        reported = num["one_step_query_loss"][kind]
        assert reported["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert reported["ci95"] == pytest.approx(_t975(n) * values.std(ddof=1) / math.sqrt(n), rel=1e-7)
    for kind in ("plain", "kfo", "linnet"):
        assert num["one_step_over_deep"][kind]["ratio"] == pytest.approx(losses[kind].mean() / losses["deep"].mean(), rel=1e-9)
