"""``Run.open``, the one way to open a trained run, against independent computations.

* the learner it opens scores the fixed test tasks exactly as a ConvNet rebuilt here by hand from
  the raw state dict (``torch.load`` of the file, no linmaml reader) with a hand-written inner loop;
* the checkpoint rule on folders holding best.pt only, last.pt only, a damaged last.pt beside a good
  last.prev.pt, a damaged best.pt, nothing; a snapshot file; ``latest=True`` — each checked against
  the weights ``torch.load`` reads from the file the rule must pick;
* the one model-record check (:func:`check_model_record`) on every case it decides;
* the run's task sampler against ``episodes.evaluation_tasks`` called directly, and ``analyze_run``
  on a snapshot.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from linmaml.benchmarks import checkpoint, episodes
from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks.learners import check_model_record, model_fingerprint
from linmaml.benchmarks.models import ConvNet
from linmaml.benchmarks.run import Run
from linmaml.benchmarks.train import train
from linmaml.errors import ArgumentError

SETTINGS = dict(ways=3, shots=2, query=3, test_query=4, layers=1, hidden=3, meta_batch=2, iterations=3, val_every=2,
                val_tasks=3, inner_lr=0.2, test_steps=2, seed=1, dtype="float64", checkpoint_every=1,
                snapshot_every=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 iterations, a checkpoint after each (last.pt: 3, last.prev.pt: 2), validated at 2 and 3, a
    snapshot at 0..3; float64."""
    out = tmp_path_factory.mktemp("run") / "run"
    splits = synthetic_splits(size=10, classes=(9, 9, 9), examples=7, seed=1)
    result = train(SETTINGS, out, splits=splits, progress=False, device="cpu", threads=1)
    assert result.status == "done"
    return out, splits


def raw_weights(path) -> dict:
    """The weights a checkpoint file holds, read by plain torch.load (the file is a torch.save archive)."""
    return torch.load(path, map_location="cpu", weights_only=True)["learner"]


def assert_weights(run: Run, path) -> None:
    raw = raw_weights(path)
    state = run.learner.state_dict()
    assert state.keys() == raw.keys()
    for name, value in raw.items():
        assert state[name].dtype == torch.float64
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)


def test_the_learner_scores_as_a_network_rebuilt_by_hand(trained):
    out, splits = trained
    run = Run.open(out)
    assert run.file == out / "best.pt" and run.config.dtype == "float64" and run.folder == out
    # By hand: the ConvNet from the raw state dict, plain SGD steps of the run's inner rate.
    raw = raw_weights(out / "best.pt")
    net = ConvNet(in_channels=1, ways=3, blocks=1, filters=3, image_size=10, pool="stride").double()
    net.load_state_dict({k[len("model."):]: v for k, v in raw.items()})
    base = dict(net.named_parameters())
    tasks = episodes.evaluation_tasks(splits["test"], 3, 2, 4, count=6, seed=0)
    engine = run.engine()
    for task in tasks:
        xs, ys, xq, yq = task.to_torch(None, torch.float64)
        params = {n: p.detach() for n, p in base.items()}
        for _ in range(2):  # the run's test_steps
            leaves = {n: p.requires_grad_(True) for n, p in params.items()}
            loss = F.cross_entropy(functional_call(net, leaves, (xs,)), ys)
            grads = torch.autograd.grad(loss, list(leaves.values()))
            params = {n: (p - 0.2 * g).detach() for (n, p), g in zip(leaves.items(), grads)}
        with torch.no_grad():
            logits = functional_call(net, params, (xq,))
        expected_loss = float(F.cross_entropy(logits, yq))
        expected_accuracy = float((logits.argmax(1) == yq).double().mean())
        losses, accuracies = engine.score(xs[None], ys[None], xq[None], yq[None], steps=2)
        assert float(losses[0]) == pytest.approx(expected_loss, rel=1e-10)
        assert float(accuracies[0]) == expected_accuracy


def test_a_folder_opens_best_else_the_newest_valid_last(trained, tmp_path):
    out, _ = trained
    iterations = {name: torch.load(out / name, weights_only=True)["iteration"]
                  for name in ("best.pt", "last.pt", "last.prev.pt")}
    assert iterations["last.pt"] == 3 and iterations["last.prev.pt"] == 2

    def folder(name, files, damaged=()):
        path = tmp_path / name
        path.mkdir()
        for file in files:
            shutil.copy(out / file, path / file)
        for file in damaged:
            raw = bytearray((out / file).read_bytes())
            raw[len(raw) // 2] ^= 0x01
            (path / file).write_bytes(bytes(raw))
        return path

    best_only = folder("best_only", ["best.pt"])
    run = Run.open(best_only)
    assert run.file == best_only / "best.pt" and run.iteration == iterations["best.pt"]
    assert_weights(run, out / "best.pt")

    last_only = folder("last_only", ["last.pt"])
    run = Run.open(last_only)
    assert run.file == last_only / "last.pt" and run.iteration == 3
    assert_weights(run, out / "last.pt")

    fallback = folder("fallback", ["last.prev.pt"], damaged=["last.pt"])
    run = Run.open(fallback)
    assert run.file == fallback / "last.prev.pt" and run.iteration == 2
    assert_weights(run, out / "last.prev.pt")

    both = folder("both", ["best.pt", "last.pt", "last.prev.pt"])
    assert Run.open(both).file.name == "best.pt"
    run = Run.open(both, latest=True)  # what --resume continues
    assert run.file == both / "last.pt" and run.iteration == 3

    bad_best = folder("bad_best", ["last.pt"], damaged=["best.pt"])
    with pytest.raises(checkpoint.CorruptCheckpoint, match="bad_best/best.pt"):
        Run.open(bad_best)  # never silently replaced by other weights
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        Run.open(folder("empty", []))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Run.open(tmp_path / "missing")


def test_a_snapshot_file_opens_with_its_iteration_and_run_folder(trained):
    out, _ = trained
    for t in range(4):
        path = checkpoint.snapshot_path(out, t)
        run = Run.open(path)
        assert run.file == path and run.iteration == t and run.folder == out
        assert_weights(run, path)
    # the weights of iteration 0 are not those of iteration 3 (training moved them)
    first, last = raw_weights(checkpoint.snapshot_path(out, 0)), raw_weights(checkpoint.snapshot_path(out, 3))
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_the_task_sampler_is_the_fixed_evaluation_stream(trained):
    out, splits = trained
    run = Run.open(out)
    mine = run.tasks("val", count=4, splits=splits)
    direct = episodes.evaluation_tasks(splits["val"], 3, 2, 4, count=4, seed=0)  # ways, shots, test_query
    for a, b in zip((mine[i] for i in range(4)), (direct[i] for i in range(4))):
        for x, y in zip(a.to_torch(), b.to_torch()):
            assert torch.equal(x, y)
    with pytest.raises(ArgumentError) as caught:
        run.tasks("holdout", splits=splits)
    assert caught.value.argument == "split"
    with pytest.raises(ArgumentError) as caught:
        run.tasks("test", query=7, splits=splits)  # 7 examples per class, 2 for the support set
    assert caught.value.argument == "query"


def test_analyze_runs_on_a_snapshot(trained):
    from linmaml.benchmarks.layerwise import analyze_run

    out, splits = trained
    result = analyze_run(checkpoint.snapshot_path(out, 0), tasks=3, spectrum_tasks=0, splits=splits)
    assert result["checkpoint"].endswith("iter-000000.pt")
    assert [row["label"] for row in result["ablation"]] == ["all", "head", "all but head", "features.block0", "none"]
    # iteration 0's weights are the seeded initial ConvNet's: "none" scores that ConvNet with no step
    torch.manual_seed(SETTINGS["seed"])
    net = ConvNet(in_channels=1, ways=3, blocks=1, filters=3, image_size=10, pool="stride").double()
    correct = []
    with torch.no_grad():
        for i, task in enumerate(episodes.evaluation_tasks(splits["test"], 3, 2, 4, count=3, seed=0)):
            _, _, xq, yq = task.to_torch(None, torch.float64)
            correct.append(float((net(xq).argmax(1) == yq).double().mean()))
    assert result["ablation"][-1]["accuracy"] == pytest.approx(100 * np.mean(correct), abs=1e-9)


class Small(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.body = nn.Linear(3, width)
        self.out = nn.Linear(width, 2)


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)


def test_the_model_record_check_decides_every_case():
    record = check_model_record(None, Small())
    assert record == {"model": f"{__name__}.Small", "model_fingerprint": model_fingerprint(Small())}
    assert check_model_record(None, None) == {"model": None, "model_fingerprint": None}
    # a recorded class and fingerprint: the same architecture passes, keeping the recorded module name
    moved = {"model": "elsewhere.Small", "model_fingerprint": record["model_fingerprint"]}
    assert check_model_record(moved, Small())["model"] == "elsewhere.Small"
    cases = [({"model": None, "model_fingerprint": None}, Small(), "the built-in ConvNet"),
             (record, None, "trained on your own model"),
             (record, Small(width=5), "a different class or parameter shapes"),
             (record, Other(), "a different class or parameter shapes")]
    for recorded, model, words in cases:
        with pytest.raises(ArgumentError) as caught:
            check_model_record(recorded, model, where="the run in X")
        assert caught.value.argument == "model" and "the run in X" in str(caught.value) and words in str(caught.value)
    with pytest.raises(TypeError, match="^model: "):
        check_model_record(None, "a model")
