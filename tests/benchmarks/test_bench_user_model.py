"""Training the user's own model on real Omniglot: train(model=...), bitwise resume, load_learner,
torch.load(weights_only=True) of the checkpoints, and bad input named by argument."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linmaml.benchmarks import checkpoint, episodes, load_learner
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.models import ConvNet
from linmaml.benchmarks.train import CLOCK_FIELDS, train

OPTIONS = dict(ways=5, shots=1, query=2, test_query=3, meta_batch=2, iterations=6, val_every=3, val_tasks=4,
               checkpoint_every=2, seed=1, inner_lr=0.3, dtype="float64")


class SmallCNN(nn.Module):
    """A user's CNN: two stride-2 conv blocks (BatchNorm on batch statistics), flattened with .view —
    which needs contiguous images, as the user wrote it — and a head called ``classifier``."""

    def __init__(self, width=6, ways=5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1),
                                  nn.BatchNorm2d(width, track_running_stats=False), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1),
                                  nn.BatchNorm2d(width, track_running_stats=False), nn.ReLU())
        self.classifier = nn.Linear(width * 7 * 7, ways)

    def forward(self, x):
        z = self.body(x)
        return self.classifier(z.view(z.shape[0], -1))


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    return SmallCNN(**kw)


@pytest.fixture(scope="module")
def splits(omniglot_data):
    return {name: omniglot_data.split(name) for name in ("train", "val", "test")}


def run(out, splits, model, **kw):
    options = {**OPTIONS, **kw.pop("options", {})}
    return train(options, out, model=model, splits={k: splits[k] for k in ("train", "val")}, progress=False,
                 device="cpu", threads=1, **kw)


def metrics(path):
    return [{k: v for k, v in json.loads(line).items() if k not in CLOCK_FIELDS} for line in path.read_text().splitlines()]


@pytest.mark.parametrize("algo", ["maml", "anil"])
def test_user_cnn_trains_resumes_bitwise_loads_and_torch_loads(tmp_path, splits, algo):
    extra = {"algo": algo, **({"head": "classifier"} if algo == "anil" else {})}
    reference = tmp_path / "reference"
    done = run(reference, splits, make_model(0), options=extra)
    assert done.status == "done" and done.iteration == 6

    out = tmp_path / "run"
    assert run(out, splits, make_model(0), options={**extra, "iterations": 3}).iteration == 3
    # Resume with a freshly built model of another initialisation: the checkpoint's weights replace it.
    assert run(out, splits, make_model(123), options=extra, resume=True).status == "done"
    for name in (checkpoint.LAST, checkpoint.BEST):
        a, b = checkpoint.load(reference / name), checkpoint.load(out / name)
        assert a["iteration"] == b["iteration"] and a["learner"].keys() == b["learner"].keys()
        for key in a["learner"]:
            assert torch.equal(a["learner"][key], b["learner"][key]), (name, key)
    assert metrics(reference / "metrics.jsonl") == metrics(out / "metrics.jsonl")

    # A plain torch.load reads both checkpoints, and gives what the verified loader gives.
    for name in (checkpoint.LAST, checkpoint.BEST):
        plain, verified = torch.load(out / name, weights_only=True), checkpoint.load(out / name)
        assert plain["iteration"] == verified["iteration"] and plain["config"] == verified["config"]
        assert all(torch.equal(plain["learner"][k], verified["learner"][k]) for k in verified["learner"])
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["model"] == f"{__name__}.SmallCNN" and len(saved["model_fingerprint"]) == 16

    # load_learner: the best weights in a learner around the user's module, ready for adapt.
    mine = make_model(7)
    learner = load_learner(out, model=mine)
    assert learner.model is mine and learner.training
    best = torch.load(out / "best.pt", weights_only=True)["learner"]
    assert learner.state_dict().keys() == best.keys()
    assert all(torch.equal(learner.state_dict()[k], best[k]) for k in best)
    adapted = ["classifier.weight", "classifier.bias"] if algo == "anil" else [n for n, _ in mine.named_parameters()]
    assert learner.adapted_names == adapted
    # Scored by hand, task by task, it gives linmaml evaluate's accuracy on the same fixed tasks.
    tasks = episodes.evaluation_tasks(splits["test"], 5, 1, 3, count=4, seed=0)
    by_hand = []
    for task in tasks:
        xs, ys, xq, yq = task.to_torch(dtype=torch.float64)
        fast = learner.adapt(xs, ys, F.cross_entropy, steps=3)
        with torch.no_grad():
            by_hand.append(float((learner(xq, params=fast).argmax(1) == yq).double().mean()))
    result = evaluate_checkpoint(out, tasks=4, query=3, splits={"test": splits["test"]}, device="cpu",
                                 model=make_model(8))
    assert result["accuracy"] == pytest.approx(float(np.mean(by_hand)), abs=1e-12)
    # linmaml analyze's library call takes the model too; its "all" row is the same score (the
    # user's .view() needs its images contiguous: no channels-last layout for a user's model).
    from linmaml.benchmarks import layerwise as analyze

    analyzed = analyze.analyze_run(out, tasks=4, steps=3, spectrum_tasks=0, splits={"test": splits["test"]},
                                   model=make_model(9))
    row = next(r for r in analyzed["ablation"] if r["label"] == "all")
    assert row["accuracy"] == pytest.approx(100 * float(np.mean(by_hand)), abs=1e-9)
    with pytest.raises(ValueError, match="^model: "):
        analyze.analyze_run(out, tasks=4, splits={"test": splits["test"]})


@pytest.mark.parametrize("algo", ["maml", "anil"])
def test_the_builtin_convnet_given_as_a_user_model_trains_like_the_builtin_one(tmp_path, splits, algo):
    """The learner around a user model is the one built around the ConvNet: the same weights after 3
    iterations (float64; the built-in path lays images out channels-last, so equal up to rounding).
    ANIL's built-in learner computes the features once; around a user model it is head-only MAML."""
    options = {"algo": algo, "layers": 1, "hidden": 4, "pool": "stride", "iterations": 3, "val_every": 3}
    train({**OPTIONS, **options}, tmp_path / "builtin", splits={k: splits[k] for k in ("train", "val")},
          progress=False, device="cpu", threads=1)
    torch.manual_seed(OPTIONS["seed"])  # as the built-in path seeds before building its ConvNet
    model = ConvNet(in_channels=1, ways=5, blocks=1, filters=4, image_size=28, pool="stride")
    head = {"head": "head"} if algo == "anil" else {}
    convnet_only = ("layers", "hidden", "pool")  # a user-model run takes (and records) no ConvNet settings
    run(tmp_path / "user", splits, model,
        options={k: v for k, v in {**options, **head}.items() if k not in convnet_only})
    a = checkpoint.load(tmp_path / "builtin" / "last.pt")["learner"]
    b = checkpoint.load(tmp_path / "user" / "last.pt")["learner"]
    b = {k[len("model."):] if algo == "anil" else k: v for k, v in b.items()}
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("conv.bias"):
            # BatchNorm cancels a conv bias: its gradient is 0 up to rounding noise, which Adam's
            # normalised step turns into moves of any size; the function does not depend on it.
            continue
        torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-11, msg=key)
    # ... and training moved them: the head differs from the seeded initial ConvNet's.
    torch.manual_seed(OPTIONS["seed"])
    initial = ConvNet(in_channels=1, ways=5, blocks=1, filters=4, image_size=28, pool="stride").state_dict()
    assert not torch.allclose(a["head.weight"] if algo == "anil" else a["model.head.weight"],
                              initial["head.weight"].double())


def test_resume_and_load_refuse_another_model_by_name(tmp_path, splits):
    out = tmp_path / "run"
    run(out, splits, make_model(0), options={"iterations": 2, "val_every": 2})
    with pytest.raises(ValueError, match=r"^model: .*SmallCNN.*fingerprint"):
        run(out, splits, make_model(0, width=5), resume=True, options={"iterations": 3})
    with pytest.raises(ValueError, match=r"^model: .*pass the same architecture"):
        train({"iterations": 3}, out, resume=True, splits=splits, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"^model: .*trained on your own model"):
        load_learner(out)
    with pytest.raises(ValueError, match=r"^model: .*fingerprint"):
        load_learner(out, model=make_model(0, width=5))
    with pytest.raises(TypeError, match=r"^map_location: "):
        load_learner(out, model=make_model(0), map_location=3)
    with pytest.raises(ValueError, match=r"^map_location: "):
        load_learner(out, model=make_model(0), map_location="nowhere")
    with pytest.raises(TypeError, match=r"^checkpoint: "):
        load_learner(3)
    with pytest.raises(FileNotFoundError, match=r"^checkpoint: "):
        load_learner(tmp_path / "missing")
    # A built-in run refuses a model.
    builtin = tmp_path / "builtin"
    train({**OPTIONS, "layers": 1, "hidden": 4, "iterations": 1}, builtin, splits=splits, progress=False,
          device="cpu", threads=1)
    with pytest.raises(ValueError, match=r"^model: .*built-in ConvNet"):
        load_learner(builtin, model=make_model(0))


class Wide(nn.Module):
    def __init__(self, outputs=5, norm=None, dropout=0.0):
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(28 * 28, outputs)

    def forward(self, x):
        return self.out(self.drop(self.norm(x).reshape(len(x), -1)))


@pytest.mark.parametrize("model, options, error, pattern", [
    ("not a module", {}, TypeError, r"^model: expected a torch.nn.Module"),
    (Wide(outputs=4), {}, ValueError, r"^model: expected logits of shape \(n, 5\)"),
    # running-stat BatchNorm and Dropout under split are accepted (test_bench_user_model_policies.py);
    # Dropout is refused only where the run says randomness 'error'
    (Wide(dropout=0.5), {"randomness": "error"}, ValueError, r"^randomness: drop \(Dropout\) draws random numbers"),
    (Wide(), {"algo": "anil", "head": "nope"}, ValueError, r"^head: the model has no submodule 'nope'"),
    (Wide(), {"head": "out"}, ValueError, r"^head: "),
    (Wide(), {"model": "other.Class", "model_fingerprint": "0" * 16}, ValueError, r"^model: these settings: trained on other.Class"),
    (None, {"model": "other.Class", "model_fingerprint": "0" * 16}, ValueError, r"^model: these settings"),
    (None, {"head": "out", "algo": "anil"}, ValueError, r"^head: "),
])
def test_bad_models_are_refused_naming_the_argument(tmp_path, splits, model, options, error, pattern):
    out = tmp_path / "run"
    with pytest.raises(error, match=pattern):
        train({**OPTIONS, "iterations": 1, **options}, out, model=model, splits=splits, progress=False, device="cpu")
    assert not out.exists()  # bad input leaves no trace


def test_dropout_trains_with_the_loop_strategy(tmp_path, splits):
    result = run(tmp_path / "run", splits, Wide(dropout=0.2), options={"iterations": 2, "batching": "loop"})
    assert result.status == "done"
