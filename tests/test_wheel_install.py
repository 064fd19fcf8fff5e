"""The package works from an installed wheel, away from the source tree.

A wheel is built from a copy of the project's packaging files (``pyproject.toml``, ``README.md``,
``linmaml/``: nothing else of the source tree goes in, and the shared tree gets no build folders),
installed into a fresh virtual environment, and ``linmaml reproduce --quick`` and ``linmaml bench
--quick`` run there from a temporary folder. The fresh environment has no pip and no packages of its
own: a ``.pth`` file lends it the test interpreter's site-packages for the dependencies (torch,
numpy, …; nothing is downloaded), which does not make the source tree importable — an editable
install is itself a ``.pth`` file there, and ``.pth`` files of a folder added that way are not read.
The test checks that ``linmaml`` is imported from the environment, not from the source tree.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(command, cwd, env, timeout=1200):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command[:4]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's python, its linmaml script, an environment for subprocesses)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "linmaml", source / "linmaml", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LINMAML_ANALYSIS", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    wheels = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels),
          str(source)], cwd=work, env=env)
    (wheel,) = wheels.glob("linmaml-*.whl")
    venv = work / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work, env=env)
    python = venv / "bin" / "python"
    site = pathlib.Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=work, env=env).stdout.strip())
    (site / "lend_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: pip sees the lent site-packages' editable linmaml and must not uninstall it.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--ignore-installed",
          "--no-index", "--quiet", str(wheel)], cwd=work, env=env)
    return python, venv / "bin" / "linmaml", env, work


def test_the_wheel_is_imported_from_the_environment(installed):
    python, script, env, work = installed
    where = _run([str(python), "-c", "import linmaml, linmaml.bench.harness; print(linmaml.__file__)"],
                 cwd=work, env=env).stdout.strip()
    assert pathlib.Path(where).resolve().is_relative_to((work / "env").resolve()), where
    assert not pathlib.Path(where).resolve().is_relative_to(ROOT)
    assert script.is_file()
    # the package data the benchmarks need (the fixed class splits) is in the wheel
    splits = _run([str(python), "-c", "import linmaml, pathlib; "
                   "print(len(list((pathlib.Path(linmaml.__file__).parent / 'benchmarks' / 'splits').iterdir())))"],
                  cwd=work, env=env).stdout.strip()
    assert int(splits) > 0
    # and the training recipes (linmaml train --config NAME): every file of the source tree's folder
    shipped = _run([str(python), "-c", "from linmaml.benchmarks import recipes; print(*recipes.names())"],
                   cwd=work, env=env).stdout.split()
    assert shipped == sorted(f.stem for f in (ROOT / "linmaml" / "benchmarks" / "recipes").glob("*.json")), shipped
    # the analyses of trained runs train into and write to the current folder, never site-packages
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    defaults = _run([str(python), "-c", "from linmaml.analysis import depth_width, layers; "
                     "print(layers.DEFAULT_RUNS, layers.DEFAULT_OUT, depth_width.DEFAULT_RUNS, depth_width.DEFAULT_OUT)"],
                    cwd=elsewhere, env=env).stdout.split()
    assert defaults == [str(elsewhere.resolve() / p) for p in ("runs/layers", "figures", "runs/depth-width", "figures")]


def test_bench_quick_from_another_folder(installed):
    python, script, env, work = installed
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    out = work / "bench-out"
    done = _run([str(script), "bench", "--quick", "--out", str(out)], cwd=elsewhere, env=env)
    record = json.loads((out / "bench.json").read_text())
    assert record["quick"] is True and {"surface", "deep_linear", "sinusoid", "maml"} <= set(record["cases"])
    assert record["cases"]["sinusoid"]["targets"]["met_agreement"]
    assert "sinusoid" in done.stdout


def test_reproduce_quick_from_another_folder(installed):
    python, script, env, work = installed
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    out = work / "figures-out"
    _run([str(script), "reproduce", "--quick", "--out", str(out)], cwd=elsewhere, env=env, timeout=2400)
    results = json.loads((out / "results.json").read_text())
    assert results and any(out.glob("*.png"))


def test_the_wheel_without_extras_needs_only_torch_numpy_scipy_and_runs_an_example(installed):
    """The wheel's metadata asks for torch, numpy and scipy unconditionally (figures, symbolic
    derivations and image files are extras), and with matplotlib and Pillow absent (simulated:
    ``sys.modules[name] = None``) the installed library imports and runs the sinusoid example."""
    import zipfile

    python, script, env, work = installed
    (wheel,) = (work / "dist").glob("linmaml-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    requires = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    unconditional = {r.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip().lower()
                     for r in requires if "extra ==" not in r}
    assert unconditional == {"torch", "numpy", "scipy"}, requires
    for extra in ("plots", "symbolic", "images", "all"):
        assert any(f'extra == "{extra}"' in r for r in requires), (extra, requires)
    example = ROOT / "examples" / "sinusoid_maml.py"
    code = ("import sys, runpy\nfor m in ('matplotlib', 'PIL'): sys.modules[m] = None\n"
            f"sys.argv = ['x', '--quick']\nrunpy.run_path({str(example)!r}, run_name='__main__')\n")
    done = _run([str(python), "-c", code], cwd=work, env=env)
    assert done.stdout.strip()
