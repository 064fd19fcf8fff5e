"""Evaluation: per-task accuracies from an independent adaptation loop, mean and 95% CI by hand."""
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch.func import functional_call

from linmaml.benchmarks import checkpoint, episodes
from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.scoring import mean_ci95
from linmaml.benchmarks.learners import build_learner
from linmaml.benchmarks.train import train


def test_mean_ci95_is_the_normal_interval_of_the_sample_mean():
    values = np.random.default_rng(0).random(37)
    mean, ci = mean_ci95(values)
    z = scipy.stats.norm.ppf(0.975)
    assert mean == pytest.approx(sum(values) / 37, rel=1e-14)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 36)
    assert ci == pytest.approx(z * sd / math.sqrt(37), rel=1e-12)
    with pytest.raises(ValueError, match="^values: "):
        mean_ci95([0.5])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    splits = synthetic_splits(size=10, classes=(9, 9, 9), examples=7, seed=1)
    train(dict(ways=3, shots=2, query=3, test_query=4, layers=1, hidden=3, meta_batch=2, iterations=3, val_every=3,
               val_tasks=3, inner_lr=0.2, test_steps=2, seed=1), out, splits=splits, progress=False)
    return out, splits


def test_evaluate_checkpoint_matches_a_direct_computation(trained):
    out, splits = trained
    # Direct: rebuild the network from the saved weights, plain SGD with torch.autograd.grad.
    payload = checkpoint.load(out / "best.pt")
    net = build_learner(image_shape=(1, 10, 10), ways=3, layers=1, hidden=3, pool="stride").model
    net.load_state_dict({k[len("model."):]: v for k, v in payload["learner"].items()})
    names, params = zip(*net.named_parameters())
    accs, losses = [], []
    for i in range(25):
        # The fixed evaluation tasks: task i of the evaluation stream, task seed 0.
        task = episodes.EpisodeSampler(splits["test"], 3, 2, 4, seed=0, stream=episodes.EVAL_STREAM).task(i)
        xs, ys, xq, yq = task.to_torch()
        fast = [p.detach().requires_grad_() for p in params]
        for _ in range(2):
            loss = F.cross_entropy(functional_call(net, dict(zip(names, fast)), (xs,)), ys)
            grads = torch.autograd.grad(loss, fast)
            fast = [(w - 0.2 * g).detach().requires_grad_() for w, g in zip(fast, grads)]
        with torch.no_grad():
            logits = functional_call(net, dict(zip(names, fast)), (xq,))
        accs.append(float((logits.argmax(1) == yq).float().mean()))
        losses.append(float(F.cross_entropy(logits, yq)))
    # These classes hold 7 examples, so query 4 rather than the default 15.
    result = evaluate_checkpoint(out, tasks=25, query=4, splits=splits, device="cpu")
    assert result["checkpoint"].endswith("best.pt") and result["tasks"] == 25
    assert result["settings"]["steps"] == 2 and result["iteration"] == payload["iteration"]
    assert result["accuracy"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert result["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    z = scipy.stats.norm.ppf(0.975)
    assert result["ci95"] == pytest.approx(z * np.std(accs, ddof=1) / 5, rel=1e-5)
    json.dumps(result, allow_nan=False)


def test_evaluate_bad_input(trained, tmp_path):
    out, splits = trained
    with pytest.raises(ValueError, match="^tasks: "):
        evaluate_checkpoint(out, tasks=1, query=4, splits=splits)
    with pytest.raises(ValueError, match="^query: expected at most 5 "):
        evaluate_checkpoint(out, tasks=5, query=15, splits=splits)
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint \(best.pt, last.pt or last.prev.pt\)"):
        evaluate_checkpoint(tmp_path, splits=splits)
    bad = tmp_path / "bad.pt"
    bad.write_bytes((out / "best.pt").read_bytes()[:-3])
    with pytest.raises(checkpoint.CorruptCheckpoint, match="bad.pt"):
        evaluate_checkpoint(bad, splits=splits)
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"weights": torch.zeros(2)})
    with pytest.raises(ValueError, match="not written by linmaml train"):
        evaluate_checkpoint(other, splits=splits)


def test_summary_counts_diverged_tasks_and_keeps_the_json_valid():
    import json

    import numpy as np

    from linmaml.benchmarks.scoring import summarize

    accuracies = np.array([0.2, 0.4, 1.0])
    clean = summarize(accuracies, np.array([1.0, 2.0, 3.0]))
    assert clean["nonfinite_tasks"] == 0 and abs(clean["loss"] - 2.0) < 1e-12
    diverged = summarize(accuracies, np.array([1.0, np.inf, np.nan]))
    assert diverged["nonfinite_tasks"] == 2
    assert diverged["loss"] is None and diverged["loss_ci95"] is None
    assert abs(diverged["accuracy"] - accuracies.mean()) < 1e-12  # accuracy is still scored on every task
    json.loads(json.dumps(diverged, allow_nan=False))
