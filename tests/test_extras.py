"""Light installs: the core needs torch, numpy and scipy only; figures, symbolic derivations and image
files are extras, and whatever needs a missing one says which extra to install, in one line.

The missing packages are simulated in fresh interpreters by ``sys.modules[name] = None`` (Python then
raises ``ModuleNotFoundError`` for any import of that package, exactly as when it is not installed);
the test environment itself has every extra."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from linmaml._extras import EXTRAS, MissingExtraError, missing_extra, require

REPO = Path(__file__).resolve().parents[1]
BLOCK = "import sys\nfor _m in {mods!r}: sys.modules[_m] = None\n"


def run_without(modules, code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    source = BLOCK.format(mods=tuple(modules)) + code
    return subprocess.run([sys.executable, "-c", source, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_core_dependencies_are_torch_numpy_scipy_and_every_extra_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {requirement.split(">")[0].split("=")[0].split("<")[0].strip().lower()
            for requirement in project["dependencies"]}
    assert core == {"torch", "numpy", "scipy"}
    extras = project["optional-dependencies"]
    distribution = {"matplotlib": "matplotlib", "sympy": "sympy", "PIL": "pillow", "tensorboard": "tensorboard"}
    for module, extra in EXTRAS.items():
        assert any(r.lower().startswith(distribution[module]) for r in extras[extra]), (module, extra)
        assert any(r.lower().startswith(distribution[module]) for r in extras["all"]), module


def test_missing_extra_recognises_a_missing_optional_module_and_nothing_else():
    found = missing_extra(ModuleNotFoundError("No module named 'matplotlib.pyplot'", name="matplotlib.pyplot"))
    assert isinstance(found, MissingExtraError) and found.extra == "plots" and "linmaml[plots]" in str(found)
    assert missing_extra(ModuleNotFoundError("No module named 'nosuch'", name="nosuch")) is None
    assert missing_extra(ValueError("matplotlib")) is None
    with pytest.raises(ModuleNotFoundError) as caught:
        require("linmaml_no_such_module_xyz")
    assert not isinstance(caught.value, MissingExtraError)


def test_the_library_runs_an_example_without_any_extra(tmp_path):
    """linmaml.meta, the closed forms, the simulator and the sinusoid example need no extra. (sympy
    cannot be blocked here: torch itself imports it, so every torch installation has it.)"""
    code = ("import runpy, linmaml.meta, linmaml.closedform, linmaml.simulator, linmaml.tasks\n"
            "sys.argv = [sys.argv[0], '--quick']\n"
            f"runpy.run_path({str(REPO / 'examples' / 'sinusoid_maml.py')!r}, run_name='__main__')\n"
            "assert not {'matplotlib', 'PIL'} & {k for k, v in sys.modules.items() if v is not None}\n")
    done = run_without(("matplotlib", "PIL"), code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()


@pytest.mark.parametrize("blocked, argv, extra", [
    ("matplotlib", ["reproduce", "--quick", "--only", "surface", "--out", "{tmp}/figs"], "plots"),
    ("sympy", ["derive", "--depth", "2", "--steps", "1"], "symbolic"),
])
def test_a_command_that_needs_a_missing_extra_says_which_in_one_line(tmp_path, blocked, argv, extra):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = "from linmaml.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
    done = run_without((blocked,), code, tmp_path, *argv)
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"linmaml[{extra}]" in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "figs").exists() or not any((tmp_path / "figs").glob("*.png"))


def test_reading_png_images_without_pillow_names_the_images_extra(tmp_path):
    code = ("from linmaml.benchmarks.data.omniglot import _decode_png\n"
            "try:\n    _decode_png(b'not read', 'x.png')\n"
            "except ImportError as e:\n    print(type(e).__name__, e)\n")
    done = run_without(("PIL",), code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("MissingExtraError") and "linmaml[images]" in done.stdout
