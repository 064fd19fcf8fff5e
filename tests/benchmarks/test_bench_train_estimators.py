"""``linmaml train --algo reptile|imaml|truncated|es|hfmaml``: each estimator trains (the loss falls),
resumes bitwise, and its settings are checked (tiny synthetic data, as tests/benchmarks/test_bench_train.py)."""
import functools
import json

import numpy as np
import pytest
import torch

from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.data.fewshot import synthetic_splits as _synthetic_splits
from linmaml.benchmarks.config import TrainConfig, make_engine, make_estimator
from linmaml.benchmarks.train import train
from linmaml.cli import main
from linmaml.errors import ArgumentError
from linmaml.meta import estimators

ALGOS = ["reptile", "imaml", "truncated", "es", "hfmaml"]
TINY = dict(ways=3, shots=1, query=2, test_query=3, layers=1, hidden=4, meta_batch=4, iterations=8, val_every=4,
            val_tasks=4, checkpoint_every=2, seed=5, steps=2, inner_lr=0.3, outer_lr=3e-2, es_population=4,
            es_sigma=0.05, fd_delta=1e-3, truncate=1, cg_steps=3)


# the splits of linmaml.benchmarks.data.fewshot.synthetic_splits, smaller for these slower algos
synthetic_splits = functools.partial(_synthetic_splits, size=10, classes=(10, 6), examples=6)


def run(out, algo, resume=False, **options):
    return train({**TINY, "algo": algo, **options}, out, resume=resume, splits=synthetic_splits(), progress=False,
                 device="cpu")


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


#: Settings under which each estimator visibly learns this tiny problem within a few dozen iterations
#: (the defaults of TINY suit second-order MAML; a first-order direction needs more inner steps or a
#: smaller outer step here, ES a smaller model and larger σ). Runs are deterministic (seeded, one thread).
LEARNS = {"reptile": dict(steps=5, outer_lr=3e-3, iterations=60),
          "imaml": dict(steps=5, imaml_lambda=1.0, cg_steps=5, iterations=40),
          "truncated": dict(steps=2, truncate=1, outer_lr=1e-2, iterations=40),
          "es": dict(hidden=2, es_population=8, es_sigma=0.1, outer_lr=1e-2, iterations=60),
          "hfmaml": dict(iterations=40)}


@pytest.mark.parametrize("algo", ALGOS)
def test_each_estimator_lowers_the_training_loss(tmp_path, algo):
    """The mean query loss of the last 8 iterations is at least 10% below that of the first 8."""
    torch.set_num_threads(1)
    iterations = LEARNS[algo]["iterations"]
    result = run(tmp_path, algo, val_every=iterations, checkpoint_every=iterations, **LEARNS[algo])
    assert result.status == "done"
    curve = losses(tmp_path)
    assert len(curve) == iterations and all(np.isfinite(curve))
    first, last = np.mean(curve[:8]), np.mean(curve[-8:])
    assert last < 0.9 * first, (algo, first, last)


@pytest.mark.parametrize("algo", ALGOS)
def test_each_estimator_resumes_bitwise(tmp_path, algo):
    torch.set_num_threads(1)
    run(tmp_path / "full", algo)
    assert run(tmp_path / "part", algo, iterations=4).iteration == 4
    resumed = train({"iterations": 8}, tmp_path / "part", resume=True, splits=synthetic_splits(), progress=False,
                    device="cpu")
    assert resumed.status == "done"
    a, b = checkpoint.load(tmp_path / "full" / "last.pt"), checkpoint.load(tmp_path / "part" / "last.pt")
    for name in a["learner"]:
        assert torch.equal(a["learner"][name], b["learner"][name]), (algo, name)
    assert losses(tmp_path / "full") == losses(tmp_path / "part")


def test_the_config_builds_the_named_estimator_with_its_settings():
    config = TrainConfig.from_dict({**TINY, "algo": "imaml", "imaml_lambda": 2.5, "cg_steps": 7,
                                    "inner_tolerance": 1e-4})
    estimator = make_estimator(config)
    assert isinstance(estimator, estimators.iMAML)
    assert (estimator.lam, estimator.cg_steps, estimator.tolerance, estimator.max_inner_steps, estimator.inner_lr) \
        == (2.5, 7, 1e-4, 2, 0.3)
    assert make_estimator(TrainConfig.from_dict({**TINY, "algo": "truncated", "truncate": 2})).window == 2
    es = make_estimator(TrainConfig.from_dict({**TINY, "algo": "es"}))
    assert (es.population, es.sigma, es.seed) == (4, 0.05, None)
    assert make_estimator(TrainConfig.from_dict({**TINY, "algo": "hfmaml"})).delta == 1e-3
    assert isinstance(make_estimator(TrainConfig.from_dict({**TINY, "algo": "reptile"})), estimators.Reptile)


@pytest.mark.parametrize("bad, argument", [
    ({"algo": "imaml", "imaml_lambda": 0}, "imaml_lambda"),
    ({"algo": "imaml", "inner_lr": -0.1}, "inner_lr"),
    ({"algo": "truncated", "truncate": -1}, "truncate"),
    ({"algo": "es", "es_population": 0}, "es_population"),
    ({"algo": "es", "es_sigma": float("inf")}, "es_sigma"),
    ({"algo": "hfmaml", "fd_delta": 0}, "fd_delta"),
    ({"algo": "hfmaml", "transform": "kfo"}, "transform"),
    ({"algo": "maml", "cg_steps": 0}, "cg_steps"),
])
def test_bad_estimator_settings_name_the_setting(bad, argument):
    with pytest.raises(ArgumentError) as caught:
        TrainConfig.from_dict({**TINY, **bad})
    assert caught.value.argument == argument


def test_the_command_line_refuses_a_bad_knob_with_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--algo", "es", "--es-population", "0", "--out", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--es-population" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_estimator_run_loads_back_and_adapts_like_its_checkpoint(tmp_path):
    """load_learner rebuilds the plain MAML learner of an estimator run with the trained weights."""
    from linmaml.benchmarks.loading import load_learner

    run(tmp_path, "reptile", iterations=2)
    learner = load_learner(tmp_path)
    saved = checkpoint.load(tmp_path / "best.pt")["learner"]
    assert set(saved) == set(learner.state_dict())
    for name, value in learner.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_a_resumed_run_keeps_its_estimator_settings(tmp_path):
    run(tmp_path, "truncated", iterations=2)
    with pytest.raises(ArgumentError) as caught:
        train({"iterations": 4, "truncate": 2}, tmp_path, resume=True, splits=synthetic_splits(), progress=False)
    assert caught.value.argument == "truncate"


def test_make_engine_wraps_only_the_estimator_algorithms():
    from linmaml.benchmarks.config import build_from_config

    for algo in ("maml", "reptile"):
        config = TrainConfig.from_dict({**TINY, "algo": algo})
        engine = make_engine(build_from_config(config, (1, 10, 10)), config)
        assert isinstance(engine, estimators.EstimatorEngine) == (algo == "reptile")
