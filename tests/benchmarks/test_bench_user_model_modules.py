"""A user's model class is the same class whichever module it is imported from: trained in a script
(``__main__.MyCNN``), it is loaded, evaluated and resumed from another script that imports it
(``my_kfo_model.MyCNN``). The check is the qualified class name plus the parameter fingerprint, so a
class of another name, or of the same name with other shapes, is still refused."""
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from linmaml.benchmarks import checkpoint, load_learner
from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.train import train

SOURCE = '''
import torch
from torch import nn


class MyCNN(nn.Module):
    def __init__(self, width=4, ways=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1),
                                  nn.BatchNorm2d(width, track_running_stats=False), nn.ReLU())
        self.classifier = nn.Linear(width * 5 * 5, ways)

    def forward(self, x):
        return self.classifier(self.body(x).flatten(1))


class OtherCNN(MyCNN):
    pass
'''

OPTIONS = dict(ways=3, shots=1, query=2, test_query=3, meta_batch=2, iterations=4, val_every=2, val_tasks=4,
               checkpoint_every=2, seed=1, dtype="float64", batching="loop")


def _module(tmp_path, name):
    """The user's file imported under ``name`` (a fresh module object, hence a distinct class)."""
    path = tmp_path / "my_kfo.py"
    path.write_text(SOURCE)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)  # "__main__" is pytest's own: put it back afterwards
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
    return module


def _splits():
    rng = np.random.default_rng(0)
    out = {}
    for k, name in enumerate(("train", "val", "test")):
        px = rng.random((6, 4, 1, 10, 10)).astype(np.float32)
        out[name] = FewShotSplit("omniglot", name, px, np.arange(6), np.zeros(6, np.int64), 100 * k + np.arange(6),
                                 tuple(map(str, range(6))))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained on ``__main__.MyCNN`` (as when the training script is run as a program)."""
    folder = tmp_path_factory.mktemp("user_model")
    script = _module(folder, "__main__")
    torch.manual_seed(0)
    out = folder / "run"
    result = train({**OPTIONS, "iterations": 2}, out, model=script.MyCNN(), splits=_splits(), progress=False,
                   device="cpu", threads=1)
    assert result.status == "done"
    return folder, out


def test_the_recorded_class_is_the_training_scripts(trained):
    _, out = trained
    assert json.loads((out / "config.json").read_text())["config"]["model"] == "__main__.MyCNN"


def test_load_evaluate_and_resume_from_another_module(trained, tmp_path):
    folder, out = trained
    other = _module(tmp_path, "my_kfo_model")
    assert other.MyCNN is not _module(tmp_path, "__main__").MyCNN  # two distinct class objects
    learner = load_learner(out, model=other.MyCNN())
    saved = checkpoint.load(out / checkpoint.BEST)["learner"]
    # the loaded weights are the checkpoint's, not the fresh model's
    assert all(torch.equal(value, saved[name]) for name, value in learner.state_dict().items())
    scored = evaluate_checkpoint(out, tasks=3, query=2, splits=_splits(), device="cpu", model=other.MyCNN())
    assert scored["tasks"] == 3 and 0.0 <= scored["accuracy"] <= 1.0
    resumed = train({"iterations": 4}, out, model=other.MyCNN(), resume=True, splits=_splits(), progress=False,
                    device="cpu", threads=1)
    assert resumed.status == "done" and resumed.iteration == 4
    # the run keeps the class name it was trained with
    assert json.loads((out / "config.json").read_text())["config"]["model"] == "__main__.MyCNN"


def test_another_class_or_other_shapes_are_still_refused(trained, tmp_path):
    _, out = trained
    other = _module(tmp_path, "my_kfo_model")
    with pytest.raises(ValueError, match="different class or parameter shapes") as caught:
        load_learner(out, model=other.OtherCNN())  # same shapes, another class
    assert caught.value.argument == "model"
    with pytest.raises(ValueError, match="different class or parameter shapes"):
        load_learner(out, model=other.MyCNN(width=5))  # same class, other shapes


def test_evaluate_with_zero_steps_scores_the_trained_start(trained, tmp_path):
    """``evaluate_checkpoint(..., steps=0)``: the accuracy before adaptation, recomputed here with the
    plain model on the same fixed tasks (no engine)."""
    from linmaml.benchmarks import episodes

    _, out = trained
    other = _module(tmp_path, "my_kfo_model")
    splits = _splits()
    scored = evaluate_checkpoint(out, tasks=5, query=2, steps=0, splits=splits, device="cpu", model=other.MyCNN())
    learner = load_learner(out, model=other.MyCNN())
    correct = []
    with torch.no_grad():
        for task in episodes.evaluation_tasks(splits["test"], 3, 1, 2, count=5, seed=0):
            xs, ys, xq, yq = task.to_torch(dtype=torch.float64)
            correct.append(float((learner.model(xq).argmax(1) == yq).double().mean()))
    assert scored["settings"]["steps"] == 0
    assert scored["accuracy"] == pytest.approx(np.mean(correct), abs=1e-12)


@pytest.mark.parametrize("command, route", [("evaluate", "evaluate_checkpoint("), ("analyze", "analyze_run(")])
def test_the_command_line_points_a_user_model_run_to_python(trained, capsys, command, route):
    """``linmaml evaluate``/``analyze`` cannot rebuild a class that the run's config.json does not say
    where to import from (a run of ``train(model=...)``): one line naming the run, the flag to pass
    (``--model``) and the Python call to make."""
    from linmaml.cli import main

    _, out = trained
    threads = torch.get_num_threads()
    try:
        assert main([command, str(out), "--tasks", "2"]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {out}: " in err and route in err and "model=YourModel()" in err, err
    assert "pass --model package.module:Class" in err, err
    assert "pass the same architecture" not in err
