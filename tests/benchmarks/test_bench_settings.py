"""The run settings are declared once (:mod:`linmaml.benchmarks.settings`): every field of TrainConfig
is one ``linmaml train`` option with the field's help, ``--config`` takes exactly the fields, the
identity set (what a resumed run must keep) is the hand-written list of settings that change the
weights, and the choice tuples are the ones the acting code checks."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest

from linmaml.benchmarks import config as config_module
from linmaml.benchmarks import data as data_package
from linmaml.benchmarks import learners, settings
from linmaml.benchmarks.settings import IDENTITY, TrainConfig, resume_config
from linmaml.cli import build_parser, data as cli_data, main
from linmaml.meta import engine

#: An independent statement of which settings change the sequence of weights (a resumed run must keep
#: them): everything but the run's length, validation, checkpointing/snapshots, test-time steps and
#: queries, and what to do on a non-finite step.
EXPECTED_IDENTITY = {
    "benchmark", "ways", "shots", "query", "algo", "transform", "linnet", "linnet_width", "layers", "hidden", "pool",
    "steps", "inner_lr", "outer_lr", "outer_lr_schedule", "msl_iterations", "first_order_iterations", "bn_per_step",
    "class_split", "meta_batch", "seed", "dtype", "batching", "tasks_per_chunk", "compile", "model",
    "model_fingerprint", "model_import", "model_kwargs", "head", "truncate", "imaml_lambda", "cg_steps",
    "inner_tolerance", "es_population", "es_sigma", "fd_delta",
    # the published Reptile and iMAML recipes (configs/omniglot-5w1s-reptile.json, -imaml.json)
    "train_shots", "inner_batch", "adam_beta1", "adam_beta2", "adam_eps", "outer_optimizer", "outer_eps",
    "reptile_scale", "imaml_solver", "cg_damping", "cg_lambda_damping",
    # your own data: its name and the randomness of random layers (the data's paths may move)
    "data_name", "randomness"}
#: Fields the library records from the model given, which no option sets.
NOT_OPTIONS = {"model", "model_fingerprint"}
#: ``linmaml train``'s options before the settings were declared once (all kept, same spelling).
OPTIONS_BEFORE = {
    "--benchmark", "--algo", "--transform", "--class-split", "--pool", "--dtype", "--on-nonfinite",
    "--outer-lr-schedule", "--batching", "--ways", "--shots", "--query", "--test-query", "--linnet", "--linnet-width",
    "--layers", "--hidden", "--steps", "--test-steps", "--inner-lr", "--outer-lr", "--meta-batch", "--iterations",
    "--val-every", "--val-tasks", "--checkpoint-every", "--snapshot-every", "--seed", "--msl-iterations",
    "--first-order-iterations", "--tasks-per-chunk", "--truncate", "--imaml-lambda", "--cg-steps", "--inner-tolerance",
    "--es-population", "--es-sigma", "--fd-delta", "--bn-per-step", "--compile", "--config", "--out", "--resume",
    "--overwrite", "--device", "--data-root", "--threads", "--allocator", "--quiet"}
#: Options of the command that are not settings.
COMMAND_OPTIONS = {"help", "config", "out", "resume", "overwrite", "device", "data_root", "threads", "allocator", "log",
                   "quiet"}


def train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def field_names() -> list[str]:
    return [field.name for field in dataclasses.fields(TrainConfig)]


def test_every_setting_is_one_train_option_with_its_help():
    actions = train_parser()._actions
    options = {option for action in actions for option in action.option_strings}
    assert OPTIONS_BEFORE <= options  # no option renamed or lost
    by_dest = {}
    for action in actions:
        by_dest.setdefault(action.dest, []).append(action)
    assert set(by_dest) == (set(field_names()) - NOT_OPTIONS) | COMMAND_OPTIONS
    for field in dataclasses.fields(TrainConfig):
        declared = field.metadata["setting"]
        if field.name in NOT_OPTIONS:
            assert field.name not in by_dest and declared.flag is None
            continue
        (action,) = by_dest[field.name]  # exactly once
        assert action.help == declared.help and action.help, field.name
        assert action.default is None, field.name  # not given: from --config, the resumed run, or the default
        assert action.choices == declared.choices
        assert len(action.option_strings) == 1
    spelled = {a.dest: a.option_strings[0] for a in actions if a.option_strings}
    assert spelled["model_import"] == "--model" and spelled["model_kwargs"] == "--model-kwargs"
    assert spelled["meta_batch"] == "--meta-batch"


def test_the_defaults_the_help_states_are_the_defaults():
    """Each numeric setting's help says "default N": N is TrainConfig's value (independent of the
    declaration's wiring: the text is read back as a number)."""
    default = TrainConfig()
    checked = 0
    for field in dataclasses.fields(TrainConfig):
        declared = field.metadata["setting"]
        if declared.kind not in (int, float):
            continue
        found = re.search(r"default (\d[\d.e+-]*)", declared.help)
        if found is None:
            # "default: the number of ways", "default: --shots", "default: all of them at every step"
            assert field.name in ("linnet_width", "train_shots", "inner_batch"), field.name
            continue
        assert float(found.group(1).rstrip(".")) == getattr(default, field.name), field.name
        checked += 1
    assert checked >= 25


def test_config_files_take_exactly_the_fields(tmp_path, capsys, monkeypatch):
    """Through the command: every field in a --config file reaches train() as written, and a key that is
    not a field is refused (one line, exit 2, naming --config)."""
    import linmaml.benchmarks.train as train_module

    seen = {}

    def fake_train(options, out, **kwargs):
        seen.update(options=dict(options), model=kwargs.get("model"))
        raise train_module.ArgumentError("ways", "stop here")  # nothing is trained

    monkeypatch.setattr(train_module, "train", fake_train)
    values = {name: value for name, value in TrainConfig().to_dict().items() if value is not None}
    assert set(values) == set(field_names()) - {"linnet_width", "train_shots", "inner_batch", "model", "model_fingerprint", "model_import",
                                                "model_kwargs", "head", "data", "data_name", "data_splits"}
    file = tmp_path / "all.json"
    file.write_text(json.dumps(values))
    assert main(["train", "--config", str(file), "--out", str(tmp_path / "r")]) == 2
    assert seen["options"] == values
    assert "--config: " in capsys.readouterr().err  # the file said ways
    for wrapped in (False, True):
        bad = tmp_path / "bad.json"
        content = {"ways": 3, "widht": 2}
        bad.write_text(json.dumps({"config": content} if wrapped else content))
        try:
            status = main(["train", "--config", str(bad), "--out", str(tmp_path / "r")])
        except SystemExit as exit_:
            status = exit_.code
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and "--config: " in err and "'widht' is not a training" in err


def test_the_identity_settings_are_the_ones_that_change_the_weights():
    assert set(IDENTITY) == EXPECTED_IDENTITY
    assert TrainConfig.IDENTITY == IDENTITY and len(IDENTITY) == len(set(IDENTITY))
    assert set(field_names()) - EXPECTED_IDENTITY == {"test_query", "test_steps", "iterations", "val_every",
                                                      "val_tasks", "checkpoint_every", "snapshot_every",
                                                      "on_nonfinite", "data", "data_splits"}
    # the resume check acts on it: a resumed run takes new non-identity values and refuses identity ones
    saved = TrainConfig().to_dict()
    resumed = resume_config(saved, {"test_query": 3, "test_steps": 2, "iterations": 9, "val_every": 3, "val_tasks": 4,
                                    "checkpoint_every": 2, "snapshot_every": 5, "on_nonfinite": "skip"})
    assert (resumed.iterations, resumed.test_steps, resumed.on_nonfinite) == (9, 2, "skip")
    for name, other in (("ways", 3), ("seed", 1), ("batching", "loop"), ("tasks_per_chunk", 2), ("hidden", 8),
                        ("dtype", "float64"), ("compile", True), ("es_sigma", 0.5)):
        with pytest.raises(ValueError, match=f"^{name}: the run being resumed used"):
            resume_config(saved, {name: other})


def test_each_choice_is_one_tuple_shared_with_the_code_that_acts_on_it():
    choices = {name: s.choices for name, s in settings.declared().items() if s.choices is not None}
    assert choices == {"benchmark": data_package.BENCHMARKS, "algo": learners.ALGOS, "transform": learners.TRANSFORMS,
                       "pool": learners.POOLS, "outer_lr_schedule": settings.SCHEDULES,
                       "class_split": settings.CLASS_SPLITS, "dtype": settings.DTYPES,
                       "on_nonfinite": settings.ON_NONFINITE, "batching": engine.STRATEGIES,
                       "randomness": engine.RANDOMNESS, "outer_optimizer": settings.OUTER_OPTIMIZERS,
                       "reptile_scale": settings.REPTILE_SCALES, "imaml_solver": settings.IMAML_SOLVERS}
    assert choices["batching"] is engine.STRATEGIES and choices["algo"] is learners.ALGOS
    assert choices["benchmark"] is data_package.BENCHMARKS is cli_data.BENCHMARKS
    assert not hasattr(config_module, "BATCHING") and not hasattr(settings, "BATCHING")
    # the values themselves, written out: the engine's strategies and the algorithms the CLI offered
    assert engine.STRATEGIES == ("loop", "split", "vmap")
    assert data_package.BENCHMARKS == ("omniglot", "cifar-fs", "mini-imagenet", "arrays", "folder", "synthetic")
    assert choices["randomness"] is engine.RANDOMNESS == ("different", "same", "error")
    with pytest.raises(ValueError, match=r"^batching: expected one of loop, split, vmap, got 'x'"):
        TrainConfig(batching="x")


def test_a_user_model_config_records_no_convnet_settings():
    user = dict(model="pkg.Net", model_fingerprint="0" * 16)
    config = TrainConfig(**user)
    assert (config.layers, config.hidden, config.pool) == (None, None, None)
    assert (TrainConfig().layers, TrainConfig().hidden, TrainConfig().pool) == (4, 64, "stride")
    assert (TrainConfig(benchmark="cifar-fs").hidden, TrainConfig(benchmark="cifar-fs").pool) == (32, "max")
    # a config.json written before the rule recorded the ConvNet's defaults on a user-model run: read as None
    old = TrainConfig.from_dict({**TrainConfig().to_dict(), **user, "model_import": None})
    assert (old.layers, old.hidden, old.pool) == (None, None, None)
    with pytest.raises(ValueError, match="^hidden: sets the built-in ConvNet"):
        TrainConfig(**user, hidden=16)
    with pytest.raises(ValueError, match="^model_import: expected package.module:Class"):
        TrainConfig(**user, model_import="pkg.Net")
    with pytest.raises(ValueError, match="^model_kwargs: "):
        TrainConfig(**user, model_kwargs={"a": 1})
