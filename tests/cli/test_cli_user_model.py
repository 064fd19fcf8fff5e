"""``linmaml train --model package.module:Class --model-kwargs JSON``: the user's own network from the
command line. A tiny model module written into a temporary folder on the import path is trained for a
few iterations through the CLI on synthetic data, evaluated by ``linmaml evaluate`` (which rebuilds it
from what config.json records) and resumed; the weights are compared with the library run of the same
settings (``train(model=...)`` in-process, the model built after seeding torch with the run's seed, as
the CLI documents). Bad ``--model`` values are one line and exit status 2 naming the flag."""
from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from linmaml.benchmarks import checkpoint
from linmaml.benchmarks import data as data_package
from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.train import train
from linmaml.cli import main

MODULE = "linmaml_test_tinynets"
SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        """(n, 1, 28, 28) images -> (n, ways) logits through one hidden layer."""

        def __init__(self, hidden=8, ways=3):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, ways)

        def forward(self, x):
            return self.head(self.body(x))


    def a_function():
        return None


    class NotAModule:
        pass


    class Refuses(nn.Module):
        def __init__(self):
            raise RuntimeError("no")
''')
CLASSES, EXAMPLES = 8, 6
SETTINGS = dict(ways=3, shots=1, query=2, test_query=2, meta_batch=2, iterations=3, val_every=3, val_tasks=2,
                seed=7)


def synthetic_splits():
    rng = np.random.default_rng(0)
    return {name: FewShotSplit("omniglot", name, rng.random((CLASSES, EXAMPLES, 1, 28, 28)).astype(np.float32),
                               np.arange(CLASSES), np.zeros(CLASSES, np.int64), 10 * k + np.arange(CLASSES),
                               tuple(map(str, range(CLASSES))))
            for k, name in enumerate(("train", "val", "test"))}


@pytest.fixture(autouse=True)
def user_module(tmp_path_factory, monkeypatch):
    """The model module in a folder of its own on the import path (as PYTHONPATH would put it), and
    the data package reading synthetic splits (train/evaluate look datasets.load_splits up when they call it)."""
    folder = tmp_path_factory.getbasetemp() / "user_module"
    folder.mkdir(exist_ok=True)
    (folder / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    monkeypatch.setattr(data_package, "load_splits", lambda benchmark, names, data_root=None, **_: {
        name: split for name, split in synthetic_splits().items() if name in tuple(names)})
    threads = torch.get_num_threads()
    yield folder
    torch.set_num_threads(threads)


def cli_flags(settings: dict) -> list[str]:
    return [part for name, value in settings.items() for part in ("--" + name.replace("_", "-"), str(value))]


def weights(run) -> dict:
    return checkpoint.load(run / checkpoint.LAST)["learner"]


def one_line_error(capsys, argv) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.strip(), err
    return status, err


def test_a_cli_run_on_your_own_model_is_the_library_run(tmp_path, capsys):
    cli_run, lib_run = tmp_path / "cli", tmp_path / "lib"
    argv = ["train", "--model", f"{MODULE}:TinyNet", "--model-kwargs", '{"hidden": 6}', *cli_flags(SETTINGS),
            "--out", str(cli_run), "--threads", "1", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err

    # the independent side: the library, the model built by hand after seeding torch with the seed
    import importlib

    module = importlib.import_module(MODULE)
    torch.manual_seed(SETTINGS["seed"])
    model = module.TinyNet(hidden=6)
    train(dict(SETTINGS), lib_run, model=model, splits=synthetic_splits(), progress=False, threads=1)
    cli_weights, lib_weights = weights(cli_run), weights(lib_run)
    assert sorted(cli_weights) == sorted(lib_weights) and len(cli_weights) == 4
    for name in lib_weights:
        assert torch.equal(cli_weights[name], lib_weights[name]), name
    # the run moved away from its initial weights (so equal weights are not equal initial values)
    torch.manual_seed(SETTINGS["seed"])
    initial = dict(module.TinyNet(hidden=6).named_parameters())
    assert any(not torch.equal(lib_weights[n], initial[n.removeprefix("model.")].detach()) for n in lib_weights)

    # config.json records the import path and kwargs, and no setting of the built-in ConvNet
    recorded = json.loads((cli_run / "config.json").read_text())["config"]
    assert recorded["model"] == f"{MODULE}.TinyNet"
    assert recorded["model_import"] == f"{MODULE}:TinyNet" and recorded["model_kwargs"] == {"hidden": 6}
    assert recorded["layers"] is None and recorded["hidden"] is None and recorded["pool"] is None
    assert recorded["model_fingerprint"] == json.loads((lib_run / "config.json").read_text())["config"][
        "model_fingerprint"]

    # linmaml evaluate rebuilds the model from config.json; the same score as the library's run
    capsys.readouterr()
    assert main(["evaluate", str(cli_run), "--tasks", "4", "--query", "2", "--json", "--quiet", "--threads", "1"]) == 0
    scored = json.loads(capsys.readouterr().out)
    torch.manual_seed(0)
    by_hand = evaluate_checkpoint(lib_run, tasks=4, query=2, splits=synthetic_splits(), device="cpu",
                                  model=module.TinyNet(hidden=6))
    assert scored["accuracy"] == by_hand["accuracy"] and scored["tasks"] == 4

    # --config config.json repeats the run: the model rebuilt from the recorded import path and kwargs
    again = tmp_path / "again"
    assert main(["train", "--config", str(cli_run / "config.json"), "--out", str(again), "--threads", "1",
                 "--quiet"]) == 0
    for name, value in weights(again).items():
        assert torch.equal(value, lib_weights[name]), name

    # --resume without --model continues with the recorded model; equal to the library run resumed
    assert main(["train", "--out", str(cli_run), "--resume", "--iterations", "5", "--threads", "1", "--quiet"]) == 0
    torch.manual_seed(0)
    train({"iterations": 5}, lib_run, resume=True, model=module.TinyNet(hidden=6), splits=synthetic_splits(),
          progress=False, threads=1)
    cli_weights, lib_weights = weights(cli_run), weights(lib_run)
    assert checkpoint.load(cli_run / checkpoint.LAST)["iteration"] == 5
    for name in lib_weights:
        assert torch.equal(cli_weights[name], lib_weights[name]), name


def test_a_library_run_on_your_own_model_is_evaluated_with_the_model_flag(tmp_path, capsys):
    import importlib

    module = importlib.import_module(MODULE)
    run = tmp_path / "lib"
    train(dict(SETTINGS, iterations=1), run, model=module.TinyNet(), splits=synthetic_splits(), progress=False,
          threads=1)
    status, err = one_line_error(capsys, ["evaluate", str(run), "--tasks", "2", "--query", "2"])
    assert status == 2 and "pass --model package.module:Class" in err, err
    capsys.readouterr()
    assert main(["evaluate", str(run), "--tasks", "2", "--query", "2", "--model", f"{MODULE}:TinyNet", "--json",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 2
    # the wrong architecture is refused naming the flag
    status, err = one_line_error(capsys, ["evaluate", str(run), "--tasks", "2", "--query", "2", "--model",
                                          f"{MODULE}:TinyNet", "--model-kwargs", '{"hidden": 5}'])
    assert status == 2 and "different class or parameter shapes" in err, err


@pytest.mark.parametrize("extra, expected", [
    (["--model", "no_such_module_xyz:Net"], "--model: cannot import module 'no_such_module_xyz'"),
    (["--model", f"{MODULE}:Missing"], f"--model: module '{MODULE}' has no 'Missing'"),
    (["--model", f"{MODULE}:a_function"], "not a torch.nn.Module class"),
    (["--model", f"{MODULE}:NotAModule"], "not a torch.nn.Module class"),
    (["--model", "just_a_name"], "--model: expected package.module:Class"),
    (["--model", f"{MODULE}:Refuses"], "--model: linmaml_test_tinynets:Refuses(**{}) failed: RuntimeError: no"),
    (["--model", f"{MODULE}:TinyNet", "--model-kwargs", '{"depth": 2}'], "--model-kwargs: "),
    (["--model", f"{MODULE}:TinyNet", "--model-kwargs", "[1, 2]"], "--model-kwargs: "),
    (["--model", f"{MODULE}:TinyNet", "--model-kwargs", "{"], "--model-kwargs: "),
    (["--model-kwargs", '{"hidden": 2}'], "--model-kwargs: "),
    (["--model", f"{MODULE}:TinyNet", "--layers", "6"], "--layers: sets the built-in ConvNet"),
    (["--model", f"{MODULE}:TinyNet", "--hidden", "16"], "--hidden: sets the built-in ConvNet"),
    (["--model", f"{MODULE}:TinyNet", "--head", "nope"], "--head: "),
])
def test_bad_model_options_are_one_line_naming_the_flag(tmp_path, capsys, extra, expected):
    out = tmp_path / "out"
    status, err = one_line_error(capsys, ["train", *extra, *cli_flags(SETTINGS), "--out", str(out), "--quiet",
                                          "--threads", "1"])
    assert status == 2 and expected in err, err
    assert not (out / "config.json").exists()


def test_the_model_is_imported_from_pythonpath(tmp_path, user_module):
    """The real route, in a fresh interpreter: the class is found through PYTHONPATH, and without it
    the one-line error names --model and says where to look (both before any data is read)."""
    import os
    import subprocess

    def linmaml_train(*extra, pythonpath):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH"))
                                                           if p)}
        return subprocess.run([sys.executable, "-m", "linmaml", "train", *extra, "--out", str(tmp_path / "r"),
                               "--data-root", str(tmp_path / "no-data"), "--quiet", "--threads", "1"],
                              capture_output=True, text=True, env=env, timeout=600)

    found = linmaml_train("--model", f"{MODULE}:NotAModule", pythonpath=str(user_module))
    assert found.returncode == 2 and found.stderr.count("\n") == 1, found.stderr
    assert f"--model: {MODULE}:NotAModule is the class NotAModule, not a torch.nn.Module class" in found.stderr
    missing = linmaml_train("--model", f"{MODULE}:TinyNet", pythonpath=None)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert f"--model: cannot import module '{MODULE}'" in missing.stderr and "PYTHONPATH" in missing.stderr
    # with the module found and the data root empty, the run gets as far as the data
    data = linmaml_train("--model", f"{MODULE}:TinyNet", pythonpath=str(user_module))
    assert data.returncode == 2 and "--model" not in data.stderr and "no-data" in data.stderr, data.stderr
    assert not (tmp_path / "r").exists()
