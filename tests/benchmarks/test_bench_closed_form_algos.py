"""``algo="protonet"`` and ``algo="r2d2"`` in the benchmark pipeline: built on the ConvNet's features,
trained and loaded back by train()/load_learner on tiny synthetic data, refused with a transform,
LinNet layers or your own model."""
import numpy as np
import pytest
import torch

from linmaml import meta
from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.learners import build_learner
from linmaml.benchmarks.loading import load_learner
from linmaml.benchmarks.models import ConvNet
from linmaml.benchmarks.train import train
from linmaml.errors import ArgumentError


def synthetic_splits(size=12, classes=(12, 8), examples=8, seed=0):
    """Each class a fixed random pattern plus per-example noise (as tests/benchmarks/test_bench_train.py)."""
    rng = np.random.default_rng(seed)
    out, offset = {}, 0
    for name, count in zip(("train", "val"), classes):
        prototypes = rng.random((count, 1, 1, size, size)).astype(np.float32)
        pixels = np.clip(prototypes + 0.3 * rng.standard_normal((count, examples, 1, size, size)), 0, 1)
        out[name] = FewShotSplit("omniglot", name, pixels.astype(np.float32), np.arange(count),
                                 np.zeros(count, np.int64), offset + np.arange(count),
                                 tuple(f"c{offset + i}" for i in range(count)))
        offset += count
    return out


TINY = dict(ways=3, shots=2, query=2, test_query=3, layers=1, hidden=4, meta_batch=3, iterations=2, val_every=2,
            val_tasks=4, checkpoint_every=2, seed=5)


@pytest.mark.parametrize("algo, kind", [("protonet", meta.ProtoNet), ("r2d2", meta.R2D2)])
def test_built_on_the_convnet_features_trained_and_loaded(tmp_path, algo, kind):
    learner = build_learner(image_shape=(1, 12, 12), ways=3, algo=algo, layers=1, hidden=4)
    assert isinstance(learner, kind) and learner.ways == 3
    torch.manual_seed(0)
    convnet = ConvNet(in_channels=1, ways=3, blocks=1, filters=4, image_size=12)
    shapes = [tuple(p.shape) for p in convnet.features.parameters()]
    assert [tuple(p.shape) for p in learner.features.parameters()] == shapes  # the features, no head
    result = train({**TINY, "algo": algo}, tmp_path, splits=synthetic_splits(), progress=False, device="cpu")
    assert result.status == "done" and 0 <= result.best["val_accuracy"] <= 1
    state = checkpoint.load(tmp_path / "last.pt")["learner"]
    assert ("log_lambda" in state) == (algo == "r2d2")
    loaded = load_learner(tmp_path)
    assert isinstance(loaded, kind)
    assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())
    split = synthetic_splits()["val"]
    x = torch.as_tensor(split.pixels[:3, :2]).reshape(6, 1, 12, 12)
    y = torch.arange(3).repeat_interleave(2)
    logits = loaded(x, params=loaded.adapt(x, y))
    assert logits.shape == (6, 3) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("algo", ["protonet", "r2d2"])
def test_what_does_not_apply_is_refused_by_name(algo):
    with pytest.raises(ArgumentError, match="^transform: .*no inner loop"):
        build_learner(image_shape=(1, 12, 12), ways=3, algo=algo, transform="kfo")
    with pytest.raises(ArgumentError, match="^linnet: "):
        build_learner(image_shape=(1, 12, 12), ways=3, algo=algo, linnet=1)
    with pytest.raises(ArgumentError, match="^model: .*meta."):
        build_learner(image_shape=(1, 12, 12), ways=3, algo=algo, model=torch.nn.Linear(2, 3))
