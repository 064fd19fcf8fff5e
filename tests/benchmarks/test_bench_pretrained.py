"""Released weights: every shipped network matches its manifest (sha256, size, settings), and on 20
fixed Omniglot test tasks its predictions equal those of a hand-written adaptation loop (a plain
conv → batch-statistics BatchNorm → ReLU network written out here, adapted with autograd.grad at the
run's inner rate for its test steps, in float64); the release script's round trip on a tiny run."""
import copy
import hashlib
import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from linmaml.benchmarks import checkpoint, episodes, pretrained
from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.train import train
from linmaml.cli import main
from linmaml.errors import ArgumentError

REPO = Path(__file__).resolve().parents[2]
NAMES = pretrained.names()
#: Tasks each network is scored on here (of the 600 fixed test tasks, task seed 0: the first 20).
TASKS = 20


def test_the_two_seeds_of_the_readme_table_are_released():
    assert {"omniglot-5w1s-maml-seed0", "omniglot-5w1s-maml-seed1"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_manifest_entry_matches_the_shipped_file(name):
    entry = pretrained.info(name)
    file = pretrained.FOLDER / entry["file"]
    data = file.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["bytes"] < 600_000  # a few hundred KB: float32 weights, nothing else
    payload = torch.load(file, weights_only=True)  # a plain torch file
    assert set(payload) <= {"format", "iteration", "config", "image_shape", "learner", "best"}
    assert payload["iteration"] == entry["iteration"]
    assert all(v.dtype == torch.float32 for v in payload["learner"].values())
    for key, value in entry["settings"].items():
        assert payload["config"][key] == value, key
    test = entry["test"]
    assert test["tasks"] == 600 and test["steps"] == payload["config"]["test_steps"]
    assert 0 < test["ci95"] < 0.01 and 0.9 < test["accuracy"] <= 1
    # in the wheel: the package data patterns of pyproject.toml cover the file and the manifest
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["linmaml"]
    for shipped in (file, pretrained.MANIFEST):
        relative = shipped.relative_to(REPO / "linmaml").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative


def test_the_tables_of_the_readme_and_the_guide_list_every_released_network():
    """After ``release_weights --add`` the tables must get the new rows (the script prints them)."""
    from linmaml.analysis.release_weights import table_rows

    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    guide = (REPO / "docs" / "guide" / "benchmarks.md").read_text(encoding="utf-8").splitlines()
    for name in NAMES:
        entry = pretrained.info(name)
        row_readme, row_guide = table_rows(name, entry)
        assert row_readme in readme, row_readme
        assert row_guide in guide, row_guide
        # the printed rows say what the manifest says (an independent formatting of two numbers)
        accuracy = "%.2f %% ± %.2f %%" % (entry["test"]["accuracy"] * 100, entry["test"]["ci95"] * 100)
        assert accuracy in row_readme and entry["sha256"][:12] in row_readme


def test_unknown_name_and_damaged_file_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ArgumentError, match=r"^name: no released network is called 'nope' \(released: omniglot"):
        pretrained.info("nope")
    copy = tmp_path / "pretrained"
    shutil.copytree(pretrained.FOLDER, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(pretrained, "FOLDER", copy)
    monkeypatch.setattr(pretrained, "MANIFEST", copy / "manifest.json")
    name = NAMES[0]
    assert pretrained.path(name) == copy / pretrained.info(name)["file"]
    file = copy / pretrained.info(name)["file"]
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 1
    file.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="the manifest says"):
        pretrained.load(name)
    file.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        pretrained.path(name)


@pytest.fixture(scope="module")
def omniglot_test_split(data_root):
    from linmaml.benchmarks.data import load_splits

    splits = load_splits("omniglot", ("test",), data_root)
    return splits


def _plain_network(weights: dict, x: torch.Tensor) -> torch.Tensor:
    """The 4-block ConvNet written out: per block conv 3×3 (stride 2, padding 1), BatchNorm on the
    batch's own statistics (eps 1e-5), ReLU; then flatten and the linear head. x (n, 1, 28, 28)."""
    for block in range(4):
        prefix = f"model.features.block{block}."
        x = F.conv2d(x, weights[prefix + "conv.weight"], weights[prefix + "conv.bias"], stride=2, padding=1)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # biased, as BatchNorm normalises
        x = (x - mean) / torch.sqrt(var + 1e-5)
        x = x * weights[prefix + "norm.weight"].view(1, -1, 1, 1) + weights[prefix + "norm.bias"].view(1, -1, 1, 1)
        x = torch.relu(x)
    return x.flatten(1) @ weights["model.head.weight"].T + weights["model.head.bias"]


def _hand_adapted_logits(weights, lr, steps, xs, ys, xq):
    params = {k: v.detach().clone().requires_grad_(True) for k, v in weights.items()}
    for _ in range(steps):
        loss = F.cross_entropy(_plain_network(params, xs), ys)
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: p - lr * g for (k, p), g in zip(params.items(), grads)}
    return _plain_network(params, xq).detach()


@pytest.mark.parametrize("name", NAMES)
def test_network_predicts_as_a_hand_written_adaptation_loop(name, omniglot_test_split):
    torch.set_num_threads(1)
    entry = pretrained.info(name)
    payload = torch.load(pretrained.path(name), weights_only=True)
    config = payload["config"]
    assert (config["ways"], config["algo"], config["transform"], config["layers"], config["pool"]) == \
        (5, "maml", "none", 4, "stride")  # what _plain_network writes out
    lr, steps = config["inner_lr"], config["test_steps"]
    weights64 = {k: v.double() for k, v in payload["learner"].items()}
    learner = pretrained.load(name)
    learner64 = copy.deepcopy(learner).double()
    assert learner.step_rates(steps) == [lr] * steps
    # the written-out network is the model's function (float32, before adapting)
    tasks = episodes.evaluation_tasks(omniglot_test_split["test"], config["ways"], config["shots"], 15, count=TASKS, seed=0)
    xs, ys, xq, yq = tasks[0].to_torch(dtype=torch.float32)
    model_params = {f"model.{k}": v for k, v in learner.model.named_parameters()}
    assert torch.allclose(functional_call(learner.model, {k[6:]: v for k, v in model_params.items()}, (xq,)),
                          _plain_network(payload["learner"], xq), atol=1e-4)
    agree = near_ties = 0
    hand_accuracies, library_accuracies = [], []
    for task in tasks:
        xs, ys, xq, yq = task.to_torch(dtype=torch.float32)
        hand = _hand_adapted_logits(weights64, lr, steps, xs.double(), ys, xq.double())
        fast = learner.adapt(xs, ys, F.cross_entropy, steps=steps)
        with torch.no_grad():
            library = learner(xq, params=fast)
        # the library's own adaptation in float64 is the hand-written loop to rounding
        fast64 = learner64.adapt(xs.double(), ys, F.cross_entropy, steps=steps)
        with torch.no_grad():
            library64 = learner64(xq.double(), params=fast64)
        assert torch.allclose(library64, hand, rtol=0, atol=1e-9), (library64 - hand).abs().max()
        assert torch.equal(library64.argmax(1), hand.argmax(1))
        # the shipped float32 network: logits within float32 rounding (amplified by BatchNorm over
        # 5 support images), and the same prediction wherever rounding cannot decide it: a row whose
        # logits are each within d of the exact ones can change its argmax only if the exact top-2
        # margin is below 2d
        difference = (library.double() - hand).abs()
        assert float(difference.max()) < 1e-2, float(difference.max())
        top2 = hand.topk(2, dim=1).values
        tie = (top2[:, 0] - top2[:, 1]) < 2 * difference.max(dim=1).values
        same = library.argmax(1) == hand.argmax(1)
        assert bool((same | tie).all())
        agree += int(same.sum())
        near_ties += int(tie.sum())
        hand_accuracies.append(float((hand.argmax(1) == yq).double().mean()))
        library_accuracies.append(float((library.argmax(1) == yq).double().mean()))
    queries = TASKS * 15 * config["ways"]
    assert agree >= queries - near_ties
    hand_accuracy = sum(hand_accuracies) / TASKS
    # evaluate (the path of linmaml evaluate --pretrained) scores the same 20 tasks as the library learner
    scored = evaluate_checkpoint(pretrained.path(name), tasks=TASKS, splits=omniglot_test_split, device="cpu")
    assert scored["accuracy"] == pytest.approx(sum(library_accuracies) / TASKS, abs=1e-12)
    assert abs(scored["accuracy"] - hand_accuracy) <= near_ties / queries + 1e-12
    # and the 20 tasks agree with the manifest's 600-task accuracy: its 95% interval is ±0.3 points;
    # 20 tasks (1,500 queries) have a standard error near 0.4 points, so 3 points is > 7 of them
    assert abs(hand_accuracy - entry["test"]["accuracy"]) < 0.03, (hand_accuracy, entry["test"])


def test_cli_evaluates_a_released_network(data_root, capsys):
    name = NAMES[0]
    assert main(["evaluate", "--pretrained", name, "--tasks", "3", "--data-root", str(data_root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("accuracy ") and f"{name}.pt" in out and "over 3 test tasks" in out


@pytest.mark.parametrize("argv, words", [
    (["evaluate", "--pretrained", "nope"], "--pretrained: no released network is called 'nope'"),
    (["evaluate"], "CHECKPOINT: required (a .pt or a run folder; or --pretrained NAME for a released network)"),
    (["evaluate", "runs/x", "--pretrained", "omniglot-5w1s-maml-seed0"], "not both"),
])
def test_cli_pretrained_refusals(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_release_script_round_trip(tmp_path):
    from linmaml.analysis import release_weights as release

    splits = synthetic_splits()
    run = tmp_path / "run"
    train(dict(ways=3, shots=1, query=2, test_query=3, layers=1, hidden=4, meta_batch=3, iterations=4, val_every=2,
               val_tasks=4, checkpoint_every=2, seed=5), run, splits=splits, progress=False, device="cpu")
    folder = tmp_path / "released"
    folder.mkdir()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    entry = release.add("tiny-seed5", run, folder=folder, commit="abc1234", tasks=4, query=3, splits={"test": splits["val"]},
                        stream=open(tmp_path / "log", "w"))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the run folder is only read
    file = folder / "tiny-seed5.pt"
    assert entry["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest() and entry["bytes"] == file.stat().st_size
    source = checkpoint.load(run / "best.pt")
    shipped = torch.load(file, weights_only=True)
    assert "optimizer" not in shipped and shipped["iteration"] == source["iteration"] == entry["iteration"]
    assert all(torch.equal(shipped["learner"][k], v) for k, v in source["learner"].items())
    scored = evaluate_checkpoint(run / "best.pt", tasks=4, query=3, splits={"test": splits["val"]}, device="cpu")
    assert (entry["test"]["accuracy"], entry["test"]["ci95"]) == (scored["accuracy"], scored["ci95"])
    assert entry["trained_commit"] == "abc1234" and entry["command"].startswith("linmaml train --benchmark omniglot")
    release.remove("tiny-seed5", folder=folder)
    assert not file.exists() and pretrained._manifest(folder) == {}
