"""``algo="protonet"`` and ``algo="r2d2"`` in the benchmark pipeline: built on the ConvNet's features,
trained and loaded back by train()/load_learner on tiny synthetic data, refused with a transform,
LinNet layers or your own model."""
import pytest
import torch

from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml import meta
from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.learners import build_learner
from linmaml.benchmarks.loading import load_learner
from linmaml.benchmarks.models import ConvNet
from linmaml.benchmarks.train import train
from linmaml.errors import ArgumentError




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
