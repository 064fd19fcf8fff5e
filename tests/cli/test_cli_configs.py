"""Every ``linmaml train --config`` recipe shipped in ``linmaml/benchmarks/recipes/`` (``configs/`` in a
checkout, a symbolic link to that folder): read by the train command's own parser and config reader,
accepted by TrainConfig's validation, and sized for the real Omniglot splits — without training. The
recipes' settings are written out here, so a changed file fails. Then the recipes by name
(``--config omniglot-5w1s``): the same settings as the file, an existing path winning over a name, one
line and exit status 2 for a name that is neither, and every recipe in the wheel's package data."""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import tomllib
import types
from pathlib import Path

import pytest

from linmaml.benchmarks import recipes
from linmaml.benchmarks.config import TrainConfig, check_splits
from linmaml.cli import build_parser, main
from linmaml.cli.train import read_config

REPO = Path(__file__).resolve().parents[2]

CONFIGS = REPO / "configs"
FILES = sorted(CONFIGS.glob("*.json"))

#: What each file must say: every other setting is TrainConfig's default.
RECIPES = {
    "omniglot-5w1s.json": dict(ways=5, shots=1),
    "omniglot-5w5s.json": dict(ways=5, shots=5),
    # Finn et al. 2017's 20-way settings: inner rate 0.1, 5 inner steps in training and at test, meta-batch 16;
    # lengths sized to about 3 hours on one loaded core (2.2 s and 7.1 s per iteration measured)
    "omniglot-20w1s.json": dict(ways=20, shots=1, inner_lr=0.1, steps=5, test_steps=5, meta_batch=16,
                                iterations=5000, val_every=250),
    "omniglot-20w5s.json": dict(ways=20, shots=5, inner_lr=0.1, steps=5, test_steps=5, meta_batch=16,
                                iterations=1500, val_every=100),
    # MAML++'s inner loop (5 steps of 0.1, 5 at test) with its per-step BatchNorm weights and biases, on
    # linmaml's recipe; 10,000 iterations (about 90 minutes on one core beside one other run)
    "omniglot-5w1s-bn.json": dict(ways=5, shots=1, steps=5, inner_lr=0.1, test_steps=5, bn_per_step=True,
                                  iterations=10000),
    # the textbook recipe of the time-to-accuracy comparison (Finn et al. 2017, Omniglot 5-way 1-shot: one
    # query image per class in training, meta-batch 32, Adam 1e-3 without a schedule), the per-task loop
    "omniglot-5w1s-textbook.json": dict(ways=5, shots=1, query=1, steps=1, test_steps=3, inner_lr=0.4, outer_lr=0.001,
                                        outer_lr_schedule="constant", meta_batch=32, batching="loop",
                                        iterations=60000, val_every=500),
    # Nichol et al. 2018's transductive Omniglot 5-way 1-shot Reptile (supervised-reptile): 10 training
    # shots per class, 5 inner Adam steps (beta1 0, rate 0.001) on minibatches of 10, meta-batch 5, outer
    # SGD of 1 annealed linearly, 100,000 iterations; 50 inner steps at test
    "omniglot-5w1s-reptile.json": dict(ways=5, shots=1, train_shots=10, algo="reptile", transform="adam",
                                       adam_beta1=0.0, adam_beta2=0.999, adam_eps=1e-8, inner_lr=0.001, steps=5,
                                       inner_batch=10, test_steps=50, reptile_scale="none", outer_optimizer="sgd",
                                       outer_lr=1.0, outer_lr_schedule="linear", meta_batch=5, iterations=100000,
                                       val_every=5000),
    # Rajeswaran et al. 2019's Omniglot 5-way 1-shot iMAML (imaml_dev's example command and code): one query
    # per class, 16 inner steps of 0.1 then a pull-back with lambda 2, 5 CG steps on the damped operator
    # 2I + H/12, meta-batch 32, Adam 1e-3 with eps 1e-3, 20,000 meta-steps; 16 steps of 0.1 at test
    "omniglot-5w1s-imaml.json": dict(ways=5, shots=1, query=1, algo="imaml", inner_lr=0.1, steps=16, test_steps=16,
                                     imaml_solver="pullback", imaml_lambda=2.0, cg_steps=5, cg_damping=1.0,
                                     cg_lambda_damping=10.0, meta_batch=32, outer_optimizer="adam", outer_lr=0.001,
                                     outer_eps=0.001, outer_lr_schedule="constant", iterations=20000,
                                     val_every=1000),
}
COMMON = dict(benchmark="omniglot", algo="maml", outer_lr_schedule="cosine", iterations=16000, val_every=1000)


def test_the_folder_holds_exactly_the_recipes():
    assert [f.name for f in FILES] == sorted(RECIPES)


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_a_config_file_is_accepted_by_the_train_command(file, tmp_path):
    args = build_parser().parse_args(["train", "--config", str(file), "--out", str(tmp_path / "run")])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = read_config(args.config, fields)
    config = TrainConfig.from_dict(settings)
    want = {**COMMON, **RECIPES[file.name]}
    assert settings == want  # nothing else in the file: the rest is the default
    default = TrainConfig()
    for name in fields - set(want):
        assert getattr(config, name) == getattr(default, name), name
    # The real Omniglot splits' sizes (standard split: 4,400 training and 400 validation classes of 20
    # drawings each; splits/README.md) fit the tasks, training and validation query sizes included.
    splits = {name: types.SimpleNamespace(name=name, num_classes=classes, examples_per_class=20)
              for name, classes in (("train", 4400), ("val", 400))}
    check_splits(config, splits)


# --- the recipes by name -------------------------------------------------------------------------------

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def test_configs_is_a_relative_link_to_the_package_folder_of_recipes():
    # one copy of each file: configs/ in a checkout is the package's folder itself, and the link is
    # relative, so a clone anywhere keeps it
    assert CONFIGS.is_symlink() and not os.path.isabs(os.readlink(CONFIGS))
    assert CONFIGS.resolve() == (REPO / "linmaml" / "benchmarks" / "recipes").resolve() == recipes.FOLDER
    # the names are the files' names without .json, as listed by the operating system
    assert recipes.names() == sorted(n[:-5] for n in os.listdir(CONFIGS) if n.endswith(".json"))
    assert recipes.names() == sorted(n[:-5] for n in RECIPES)


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.name)
def test_a_recipe_by_name_reads_the_settings_of_its_file(file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: no file of the name's to find instead
    name = file.name[:-5]
    settings = read_config(name, FIELDS)
    assert settings == json.loads(file.read_text(encoding="utf-8")) == read_config(str(file), FIELDS)
    assert read_config(file.name, FIELDS) == settings  # the file's name from any folder: the recipe too
    assert recipes.path(name).samefile(file)


def test_a_recipe_by_name_trains_with_the_settings_of_its_file(tmp_path, monkeypatch, capsys):
    """Through the command: a run started with ``--config NAME`` records the settings of a run started
    with ``--config PATH`` (on the in-memory synthetic set, one iteration), and those are the file's."""
    monkeypatch.chdir(tmp_path)
    file = CONFIGS / "omniglot-5w1s-textbook.json"
    recorded = {}
    for how, config in (("name", "omniglot-5w1s-textbook"), ("path", str(file))):
        out = tmp_path / how
        assert main(["train", "--config", config, "--benchmark", "synthetic", "--iterations", "1", "--val-tasks", "2",
                     "--out", str(out), "--threads", "1", "--quiet"]) == 0
        recorded[how] = json.loads((out / "config.json").read_text())["config"]
    capsys.readouterr()
    assert recorded["name"] == recorded["path"]
    overridden = {"benchmark": "synthetic", "iterations": 1, "val_tasks": 2}
    for key, value in json.loads(file.read_text(encoding="utf-8")).items():
        assert recorded["name"][key] == overridden.get(key, value), key
    assert recorded["name"]["batching"] == "loop" != TrainConfig().batching  # the file was read: not the default


def test_an_existing_path_wins_over_a_recipe_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "omniglot-5w1s").write_text('{"ways": 3}', encoding="utf-8")
    (tmp_path / "omniglot-5w5s.json").write_text('{"ways": 4}', encoding="utf-8")
    assert read_config("omniglot-5w1s", FIELDS) == {"ways": 3}
    assert read_config("omniglot-5w5s.json", FIELDS) == {"ways": 4}
    assert read_config("omniglot-5w5s", FIELDS)["shots"] == 5  # the recipe: no file of that name here


@pytest.mark.parametrize("config", ["no-such-recipe", "omniglot-5w1s.jsn", "../recipes/omniglot-5w1s",
                                    "./nothing", "configs/omniglot-5w1s.json"])
def test_a_name_that_is_neither_a_file_nor_a_recipe_is_one_line_and_exit_status_2(config, tmp_path, monkeypatch,
                                                                                   capsys):
    monkeypatch.chdir(tmp_path)  # configs/ is not here: a checkout's path means nothing in another folder
    out = tmp_path / "run"
    assert main(["train", "--config", config, "--out", str(out), "--threads", "1", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert "--config" in captured.err and config in captured.err
    for name in sorted(n[:-5] for n in RECIPES):
        assert name in captured.err, name
    assert not out.exists()  # nothing half-written


def test_recipes_path_refuses_what_is_no_recipe():
    from linmaml.errors import ArgumentError, ArgumentTypeError

    for bad in ("no-such-recipe", "omniglot-5w1s.json", "../recipes/omniglot-5w1s", "README"):
        with pytest.raises(ArgumentError) as caught:
            recipes.path(bad)
        assert caught.value.argument == "name" and "omniglot-5w1s-textbook" in str(caught.value)
    with pytest.raises(ArgumentTypeError):
        recipes.path(Path("omniglot-5w1s"))


def test_train_help_names_the_recipes(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--config FILE|NAME" in text and "an existing file of that name wins" in text
    for name in sorted(n[:-5] for n in RECIPES):
        assert name in text, name


def test_the_package_data_holds_every_recipe():
    # pip install linmaml ships exactly what pyproject.toml's package-data patterns match (the wheel test,
    # tests/test_wheel_install.py, reads the names from an installed wheel)
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["linmaml"]
    for file in FILES:
        relative = file.resolve().relative_to((REPO / "linmaml").resolve()).as_posix()
        assert relative.startswith("benchmarks/recipes/")
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
