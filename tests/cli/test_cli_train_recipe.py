"""`linmaml train`'s recipe options at the command line: bad combinations get one line naming the
flag (or the --config file) and exit status 2, before any folder is made or data read."""
from __future__ import annotations

import json
import re

import pytest

from linmaml.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--msl-iterations", "3"], "--msl-iterations: the multi-step loss .* with steps 1"),
    (["--msl-iterations", "-1", "--steps", "2"], "--msl-iterations: "),
    (["--first-order-iterations", "3", "--algo", "fomaml"], "--first-order-iterations: anneals"),
    (["--bn-per-step", "--steps", "2", "--algo", "anil"], "--bn-per-step: is built for the ConvNet"),
    (["--bn-per-step"], "--bn-per-step: one BatchNorm set per inner step is plain BatchNorm with steps 1"),
    (["--class-split", "alphabets", "--benchmark", "cifar-fs"], "--class-split: the alphabet split is Omniglot's"),
])
def test_bad_recipe_options_name_the_flag(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["train", *argv, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(f"error: {message}", err), err
    assert not out.exists()


def test_a_config_file_with_a_bad_recipe_names_the_file(tmp_path, capsys):
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"steps": 1, "msl_iterations": 100}))
    status = main(["train", "--config", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and f"--config: {config}: msl_iterations: " in err, err
