"""``linmaml reproduce``: discovery, --only merging, one-line errors with exit status 2, and the
transaction (a failed or interrupted run leaves the previous results exactly as they were).

Most tests drive the command with small stand-in scripts in a temporary analysis folder
($LINMAML_ANALYSIS), so they take milliseconds; one runs a real figure in quick mode.
"""
from __future__ import annotations

import json
import pathlib
import textwrap

import pytest

from linmaml.cli import main

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


@pytest.fixture
def analysis(tmp_path, monkeypatch):
    folder = tmp_path / "analysis"
    folder.mkdir()
    _script(folder, "alpha", 1)
    _script(folder, "beta", 2)
    monkeypatch.setenv("LINMAML_ANALYSIS", str(folder))
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
    assert "fig_broken.py" in capsys.readouterr().err


def test_missing_analysis_folder_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LINMAML_ANALYSIS", str(tmp_path / "nowhere"))
    assert main(["reproduce", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "analysis scripts not found" in err and len(err.strip().splitlines()) == 1


def test_list_names_the_figures(analysis, capsys):
    assert main(["reproduce", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["alpha", "beta"]


def test_real_figure_in_quick_mode(tmp_path, monkeypatch):
    """The real analysis folder is found beside the package and a real script runs through it."""
    monkeypatch.delenv("LINMAML_ANALYSIS", raising=False)
    out = tmp_path / "figures"
    assert main(["reproduce", "--out", str(out), "--only", "preconditioner", "--quick"]) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["figures"]["preconditioner"]
    assert entry["script"] == "analysis/fig_preconditioner.py" and entry["settings"]["quick"] is True
    assert json.loads((out / "preconditioner.json").read_text())["numbers"] == entry["numbers"]
    assert sorted(p.name for p in out.iterdir()) == ["preconditioner.json", "preconditioner.png", "results.json"]
