"""``linmaml reproduce``: discovery, --only merging, one-line errors with exit status 2, the
transaction (a failed or interrupted run leaves the previous results exactly as they were), and
re-runs that change nothing leaving every file byte for byte as it was.

Most tests drive the command with small stand-in figure modules in a temporary package (pointed to
by ``reproduce.FIGURE_PACKAGE``), so they take milliseconds; one runs a real figure in quick mode.
"""
from __future__ import annotations

import importlib
import itertools
import json
import pathlib
import sys
import textwrap

import pytest

from linmaml.cli import main
from linmaml.cli import reproduce as reproduce_cli

_PACKAGES = itertools.count()

STAND_IN = textwrap.dedent('''
    import json, pathlib
    NAME = "{name}"
    def run(out_dir, quick=False):
        {body}
        out_dir = pathlib.Path(out_dir)
        record = {{"figure": NAME, "settings": {{"quick": quick}}, "numbers": {{"value": {value}}}}}
        (out_dir / (NAME + ".png")).write_bytes(b"png of " + NAME.encode())
        (out_dir / (NAME + ".json")).write_text(json.dumps(record))
        return record
''')


def _script(folder: pathlib.Path, name: str, value=1, body="pass"):
    (folder / f"fig_{name}.py").write_text(STAND_IN.format(name=name, value=value, body=body))
    # A rewritten module must be imported afresh by the next run (as a new process would).
    sys.modules.pop(f"{folder.name}.fig_{name}", None)
    importlib.invalidate_caches()


@pytest.fixture
def analysis(tmp_path, monkeypatch):
    """A stand-in figure package with fig_alpha and fig_beta (a fresh package name per test)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a rewrite within one second must be seen
    name = f"standin_figures_{next(_PACKAGES)}"
    folder = tmp_path / "pkgs" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "not_a_figure.py").write_text("raise RuntimeError('only fig_* modules are imported')\n")
    _script(folder, "alpha", 1)
    _script(folder, "beta", 2)
    monkeypatch.syspath_prepend(str(folder.parent))
    monkeypatch.setattr(reproduce_cli, "FIGURE_PACKAGE", name)
    monkeypatch.setattr(reproduce_cli, "DEFAULT_JOBS", 1)  # one after the other unless a test asks for --jobs
    return folder


def _snapshot(folder: pathlib.Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_full_run_writes_every_figure_and_results(analysis, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["reproduce", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["alpha.json", "alpha.png", "beta.json", "beta.png", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert list(results["figures"]) == ["alpha", "beta"]
    assert results["figures"]["beta"]["numbers"] == {"value": 2}
    assert results["figures"]["alpha"]["files"] == ["alpha.json", "alpha.png"]
    assert results["figures"]["alpha"]["settings"] == {"quick": False}
    err = capsys.readouterr().err
    assert "[1/2] alpha" in err and "[2/2] beta" in err


def test_only_merges_into_existing_results(analysis, tmp_path):
    out = tmp_path / "figures"
    assert main(["reproduce", "--out", str(out)]) == 0
    _script(analysis, "beta", 20)
    before = (out / "alpha.png").read_bytes()
    assert main(["reproduce", "--out", str(out), "--only", "beta", "--quick"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["figures"]["beta"]["numbers"] == {"value": 20}
    assert results["figures"]["beta"]["settings"] == {"quick": True}
    assert results["figures"]["alpha"]["numbers"] == {"value": 1}  # kept from the first run
    assert (out / "alpha.png").read_bytes() == before


def test_unknown_figure_is_one_line_exit_2_and_writes_nothing(analysis, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["reproduce", "--out", str(out), "--only", "gamma"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gamma" in err and "alpha, beta" in err
    assert not out.exists()


@pytest.mark.parametrize("failure", ['raise ValueError("impossible setting")', "raise KeyboardInterrupt"])
def test_failed_or_interrupted_run_leaves_previous_results_intact(analysis, tmp_path, failure):
    out = tmp_path / "figures"
    assert main(["reproduce", "--out", str(out)]) == 0
    before = _snapshot(out)
    _script(analysis, "alpha", 100)           # would change alpha ...
    _script(analysis, "beta", 2, body=failure)  # ... but beta fails afterwards
    status = main(["reproduce", "--out", str(out)])
    assert status == (2 if "ValueError" in failure else 130)
    assert _snapshot(out) == before  # no new figure, no changed results.json, no staging folder


def test_out_that_is_a_file_is_rejected(analysis, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["reproduce", "--out", str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert target.read_text() == "x"


def test_unreadable_results_are_not_overwritten_by_a_merge(analysis, tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    (out / "results.json").write_text("{not json")
    assert main(["reproduce", "--out", str(out), "--only", "alpha"]) == 2
    assert "results.json" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{not json" and not (out / "alpha.png").exists()


def test_script_breaking_the_interface_is_reported(analysis, tmp_path, capsys):
    (analysis / "fig_broken.py").write_text("NAME = 'broken'\n")
    assert main(["reproduce", "--out", str(tmp_path / "o")]) == 2
    assert "fig_broken" in capsys.readouterr().err


def test_rerun_with_the_same_numbers_leaves_every_file_untouched(analysis, tmp_path):
    out = tmp_path / "figures"
    assert main(["reproduce", "--out", str(out)]) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert main(["reproduce", "--out", str(out)]) == 0  # the "seconds" differ, nothing else
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    _script(analysis, "beta", 2.0000000001)  # within the relative 1e-6: still the same numbers
    assert main(["reproduce", "--out", str(out)]) == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    _script(analysis, "beta", 2.001)  # a real change is written
    assert main(["reproduce", "--out", str(out)]) == 0
    assert json.loads((out / "beta.json").read_text())["numbers"] == {"value": 2.001}
    assert json.loads((out / "results.json").read_text())["figures"]["beta"]["numbers"] == {"value": 2.001}
    assert (out / "alpha.json").stat().st_mtime_ns == before["alpha.json"][1]


@pytest.mark.parametrize("a,b,same", [
    ({"x": 1.0, "seconds": 3}, {"x": 1.0 + 1e-9, "seconds": 4}, True),
    ({"x": 1.0}, {"x": 1.00001}, False),
    ({"x": [0.0, 1]}, {"x": [1e-300, 1]}, True),       # rounding noise around an exact zero
    ({"x": 1.8e-16}, {"x": 6.1e-14}, True),
    ({"x": 1e-9}, {"x": 2e-9}, False),                   # small, but a result
    ({"x": 1.0, "meta_seconds": 6.6}, {"x": 1.0, "meta_seconds": 2.5}, True),
    ({"t": {"seconds_per_model": {"a": 1}}}, {"t": {"seconds_per_model": {"a": 9}}}, True),
    ({"x": "a"}, {"x": "b"}, False),
    ({"x": True}, {"x": 1}, False),
    ({"x": 1}, {"x": 1, "y": 2}, False),
    ([1, 2], [1, 2, 3], False),
])
def test_same_numbers(a, b, same):
    assert reproduce_cli.same_numbers(a, b) is same


def test_figures_are_found_in_the_installed_package_not_by_path():
    figures = reproduce_cli.discover()
    names = [f.name for f in figures]
    assert {"surface", "adaptation", "preconditioner", "remedies", "lr_sweep", "direction"} <= set(names)
    assert all(f.module_name.startswith("linmaml.analysis.fig_") for f in figures)


def test_list_names_the_figures(analysis, capsys):
    assert main(["reproduce", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["alpha", "beta"]


def test_list_aligns_the_module_column_past_the_longest_name(analysis, capsys):
    # a name longer than any fixed column (the real sample_complexity has 17 characters) must not push
    # its module out of line: every row's second column starts at one offset, past the longest name
    _script(analysis, "a_name_longer_than_sixteen_characters", 3)
    assert main(["reproduce", "--list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 3
    starts = {row.index("standin_figures_") for row in rows}
    assert len(starts) == 1, rows
    longest = max(len(row.split()[0]) for row in rows)
    assert starts.pop() > longest
    for row in rows:  # each row is its name, then spaces, then its own module
        name, module = row.split()
        assert module.endswith(f".fig_{name}")


def test_real_figure_in_quick_mode(tmp_path, monkeypatch):
    """A real figure module of linmaml.analysis runs through the command, from another folder."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "figures"
    assert main(["reproduce", "--out", str(out), "--only", "preconditioner", "--quick"]) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["figures"]["preconditioner"]
    assert entry["module"] == "linmaml.analysis.fig_preconditioner" and entry["settings"]["quick"] is True
    assert json.loads((out / "preconditioner.json").read_text())["numbers"] == entry["numbers"]
    assert sorted(p.name for p in out.iterdir()) == ["preconditioner.json", "preconditioner.png", "results.json"]


def test_quick_without_out_never_writes_into_the_default_figures(analysis, tmp_path, monkeypatch, capsys):
    """--quick without --out goes to ./figures-quick and says so; the default figures/ (here a
    stand-in) is written only by a full run or an explicit --out; --out figures takes a quick run."""
    from linmaml.plots import figure

    default = tmp_path / "committed"
    default.mkdir()
    monkeypatch.setattr(figure, "default_out", lambda quick=False: tmp_path / "cwd" / "figures-quick" if quick
                        else default)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["reproduce", "--quick"]) == 0
    assert list(default.iterdir()) == []  # nothing in the default figures/
    quick = tmp_path / "cwd" / "figures-quick"
    assert json.loads((quick / "results.json").read_text())["figures"]["alpha"]["settings"] == {"quick": True}
    assert f"--quick without --out writes to {quick}" in capsys.readouterr().err
    assert main(["reproduce", "--quick", "--out", "figures"]) == 0  # asked for: the folder named
    assert (tmp_path / "cwd" / "figures" / "alpha.png").is_file() and list(default.iterdir()) == []
    assert main(["reproduce", "--only", "alpha"]) == 0  # a full run writes the default folder
    assert sorted(p.name for p in default.iterdir()) == ["alpha.json", "alpha.png", "results.json"]


def test_the_real_default_for_quick_is_figures_quick_in_the_current_folder(tmp_path, monkeypatch):
    from linmaml.plots.figure import default_out

    monkeypatch.chdir(tmp_path)
    assert default_out(quick=True) == tmp_path / "figures-quick"
    assert default_out().name == "figures" and default_out() != tmp_path / "figures-quick"


@pytest.mark.parametrize("failure", ['raise ValueError("beta broke")', "raise KeyboardInterrupt"])
def test_jobs_compute_the_same_results_in_worker_processes(analysis, tmp_path, capsys, failure):
    """--jobs 2 runs each figure in a forked worker: the same files and results as one at a time
    (timings aside), and a figure that fails in a worker fails the whole run with nothing written."""
    _script(analysis, "gamma", 3)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["reproduce", "--out", str(one), "--jobs", "1"]) == 0
    assert main(["reproduce", "--out", str(two), "--jobs", "2"]) == 0
    assert "3 figures, 2 at a time" in capsys.readouterr().err
    assert {k: v for k, v in _snapshot(one).items() if k != "results.json"} == \
           {k: v for k, v in _snapshot(two).items() if k != "results.json"}
    strip = lambda results: {name: {k: v for k, v in entry.items() if k != "seconds"}
                             for name, entry in results["figures"].items()}
    assert strip(json.loads((one / "results.json").read_text())) == strip(json.loads((two / "results.json").read_text()))
    before = _snapshot(two)
    _script(analysis, "beta", 20, body=failure)
    assert main(["reproduce", "--out", str(two), "--jobs", "2"]) == (2 if "ValueError" in failure else 130)
    assert "beta" in capsys.readouterr().err
    assert _snapshot(two) == before  # no new figure, no changed results.json, no staging folder


def test_jobs_is_checked(analysis, tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err
