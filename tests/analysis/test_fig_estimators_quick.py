"""The estimator atlas (linmaml.analysis.fig_estimators) in quick mode: files, JSON, and numbers
checked against independent computations (numpy closed forms on the same meta-batches)."""
from __future__ import annotations

import importlib
import json

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from linmaml.analysis._common import regression_family  # noqa: E402
from linmaml.checks._common import random_weights  # noqa: E402
from linmaml.closedform import deep_linear as dl  # noqa: E402
from linmaml.closedform.gaussian import expected_post_adaptation_loss  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig")
    module = importlib.import_module("linmaml.analysis.fig_estimators")
    return module, out, module.run(out, quick=True)


def _flat(blocks):
    return np.concatenate([b.ravel() for b in blocks])


def test_interface_and_files(quick):
    module, out, record = quick
    assert module.NAME == "estimators"
    assert sorted(p.name for p in out.iterdir()) == ["estimators.json", "estimators.png"]
    assert json.loads((out / "estimators.json").read_text()) == record
    assert record["settings"]["quick"] is True
    with Image.open(out / "estimators.png") as image:
        assert image.format == "PNG" and image.size[0] > 1000


def test_first_order_error_equals_the_closed_form_on_the_same_batches(quick):
    """Mean relative error of first-order MAML at depth 1 recomputed in numpy: the closed form's
    first-order gradient against its exact one, on the meta-batches the figure draws."""
    module, _, record = quick
    cfg = record["settings"]
    d = cfg["defaults"]
    fam = regression_family(cfg["family"])
    f = cfg["family"]
    weights = random_weights(np.random.default_rng(cfg["init_seed"] + 1), [f["d_in"], f["d_out"]], cfg["init_scale"])
    errors = []
    for b in range(cfg["batches"]):
        batch = fam.sample(cfg["meta_batch"], cfg["task_seed"] + b)
        exact = _flat(dl.maml_grad(weights, batch, d["inner_lr"], d["steps"]))
        first = _flat(dl.maml_grad(weights, batch, d["inner_lr"], d["steps"], first_order=True))
        errors.append(np.linalg.norm(first - exact) / np.linalg.norm(exact))
    row = next(r for r in record["numbers"]["axes"]["depth"] if r["depth"] == 1)
    assert abs(row["estimators"]["fomaml"]["relative_error"] - np.mean(errors)) < 1e-10


def test_exact_limits_and_two_paths_to_first_order_agree(quick):
    _, _, record = quick
    num, cfg = record["numbers"], record["settings"]
    windows = {r["value"]: r for r in num["knobs"]["truncated_window"]}
    assert windows[cfg["defaults"]["steps"]]["relative_error"] < 1e-12  # K = k is exact MAML
    default = next(r for r in num["axes"]["steps"] if r["steps"] == cfg["defaults"]["steps"])["estimators"]
    # TruncatedMAML(0) and FirstOrderMAML are different code paths to the same estimator
    assert abs(windows[0]["relative_error"] - default["fomaml"]["relative_error"]) < 1e-10
    deltas = {r["value"]: r["relative_error"] for r in num["knobs"]["hfmaml_delta"]}
    assert deltas[1e-3] < 1e-5 and deltas[1e-1] > deltas[1e-3]
    for axis in num["axes"].values():
        for row in axis:
            for stats in row["estimators"].values():
                assert -1 <= stats["cosine"] <= 1 + 1e-12 and stats["variance"] >= 0 and stats["bias"] >= 0


def test_training_scores_with_the_exact_expected_loss(quick):
    _, _, record = quick
    cfg, tr = record["settings"], record["numbers"]["training"]
    t, f = cfg["train"], cfg["family"]
    widths = [f["d_in"]] + [cfg["hidden_width"]] * (t["depth"] - 1) + [f["d_out"]]
    start = random_weights(np.random.default_rng(cfg["init_seed"] + t["depth"]), widths, cfg["init_scale"])
    fam = regression_family(f)
    assert abs(tr["initial_loss"] - expected_post_adaptation_loss(start, fam, t["inner_lr"], 1, population=True)) < 1e-12
    # truncated K=1 with k=1 is exact MAML: the same training, step for step
    assert abs(tr["results"]["truncated"]["final_loss"] - tr["results"]["maml"]["final_loss"]) < 1e-9
    assert set(tr["results"]) == {"maml", "fomaml", "reptile", "imaml", "truncated", "es", "hfmaml"}
    assert set(record["numbers"]["costs"]) == set(tr["results"])
