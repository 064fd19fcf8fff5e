"""Every ``linmaml`` subcommand against one table of bad arguments.

Each row is wrong in one way: a wrong type, an unknown option, an impossible value, a missing
file, or an output folder that cannot be written (tests run as root here, where ``chmod`` stops
nothing, so the unwritable places are a path *under a regular file* and a path in ``/proc``).
Every row must end with exit status 2 and exactly one line on stderr, starting with
``linmaml`` and containing the expected text, with no traceback, and must write nothing: the
sandbox the row points into is byte-for-byte the same afterwards.

Most rows run in-process through ``linmaml.cli.main`` (milliseconds); a few run ``python -m
linmaml`` in a subprocess to prove the exit status end to end, and ``--debug`` is shown to give
the traceback instead. The per-command suites (tests/cli/, tests/benchmarks/test_bench_data_cli.py,
tests/plots/test_plot_explorer.py) go deeper into each command; this is the one table across all.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from linmaml.cli import COMMANDS, main

HAS_BENCH = importlib.util.find_spec("linmaml.cli.bench") is not None

STAND_IN = '''
import json, pathlib
NAME = "alpha"
def run(out_dir, quick=False):
    out_dir = pathlib.Path(out_dir)
    record = {"figure": NAME, "settings": {}, "numbers": {"value": 1}}
    (out_dir / "alpha.png").write_bytes(b"png")
    (out_dir / "alpha.json").write_text(json.dumps(record))
    return record
'''

# The benchmark script's stand-in: reaching its run() means the timings would have started, which a
# rejected command must never do (AssertionError is not a user error, so it escapes main and fails
# the row loudly).
BENCH_STAND_IN = '''
def run(out_dir, quick=False, only=None, device="cpu", threads=2, allocator="keep"):
    raise AssertionError("the benchmark ran: a bad argument was not caught before the timings")
def table(record):
    return ""
'''

# (arguments, text the one line must contain). Placeholders: {sandbox} an empty folder, {file} a
# regular file, {unwritable} a path under that file, {missing} a path that does not exist.
# Snapshots cover the whole sandbox, so "nothing written" holds for every row.
TABLE = [
    # the frame
    (["bogus"], "invalid choice: 'bogus'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    # verify
    (["verify", "--seed", "x"], "--seed: invalid int value"),
    (["verify", "--seed", "-1"], "--seed: expected an integer >= 0"),
    (["verify", "--only", "no such identity"], "--only: no identity name contains"),
    (["verify", "--bogus"], "unrecognized arguments: --bogus"),
    # derive
    (["derive", "--depth", "x"], "--depth: invalid int value"),
    (["derive", "--depth", "0"], "--depth: expected an integer >= 1"),
    (["derive", "--steps", "9"], "--steps: expected an integer <= 5"),
    (["derive", "--kind", "tensor"], "--kind: expected scalar or matrix"),
    (["derive", "--kind", "matrix", "--adapt-layers", "a"], "--adapt-layers: expected comma-separated integers"),
    (["derive", "--kind", "matrix", "--adapt-layers", "7"], "--adapt-layers: expected an integer <= 1"),
    (["derive", "--latex=yes"], "ignored explicit argument"),
    # surface
    (["surface", "--lr", "abc"], "--lr: invalid float value"),
    (["surface", "--lr", "nan"], "--lr: expected a finite number"),
    (["surface", "--lr", "-1"], "--lr: expected a non-negative number"),
    (["surface", "--lr", "1e400"], "--lr: expected a finite number"),
    (["surface", "--grid", "1"], "--grid: expected an integer >= 2"),
    (["surface", "--grid", "100000000"], "--grid: expected an integer <= 5000"),
    (["surface", "--steps", "60"], "--steps: depth 2 with 60 inner steps needs more than"),
    (["surface", "--depth", "3"], "--depth: expected 1 or 2"),
    (["surface", "--range", "0"], "--range: expected a positive number"),
    (["surface", "--steps", "1.5"], "--steps: invalid int value"),
    (["surface", "--lr", "1", "--steps", "12", "--range", "4", "--grid", "3", "--json"], "--range: the objective overflows"),
    (["surface", "--lr", "1", "--steps", "12", "--range", "4", "--grid", "3"], "--range: the objective overflows"),
    (["surface", "--lr", "1e308"], "--lr: the objective overflows float64 at all 10201 grid points"),
    (["surface", "--lr", "1e308", "--json"], "--lr: the objective overflows float64 at all 10201 grid points"),
    # reproduce (a stand-in analysis folder: nothing real would run even if a row were accepted)
    (["reproduce", "--out", "{unwritable}"], "Not a directory"),
    (["reproduce", "--out", "{file}"], "--out: "),
    (["reproduce", "--out", "/proc/linmaml-reliability"], "/proc/linmaml-reliability"),
    (["reproduce", "--out", "{sandbox}/figures", "--only", "nope"], "--only: unknown figure 'nope'"),
    (["reproduce", "--only"], "--only: expected one argument"),
    (["reproduce", "--quick=1"], "ignored explicit argument"),
    (["reproduce", "--out", ""], "--out: expected a path, got an empty string"),
    (["reproduce", "--out", " "], "--out: expected a path, got an empty string"),
    # analyze: --out is checked before the run is read
    (["analyze", "{missing}", "--out", ""], "--out: expected a path, got an empty string"),
    (["analyze", "{missing}", "--out", "{file}"], "--out: "),
    # explore (headless: --save)
    (["explore", "--grid", "x", "--save", "{sandbox}/snap.png"], "--grid: invalid int value"),
    (["explore", "--lr", "nan", "--save", "{sandbox}/snap.png"], "--lr: expected a finite number"),
    (["explore", "--x-var", "0", "--save", "{sandbox}/snap.png"], "--x-var: expected a positive number"),
    (["explore", "--meta-steps", "-1", "--save", "{sandbox}/snap.png"], "--meta-steps: expected an integer >= 0"),
    (["explore", "--task-std", "-1", "--save", "{sandbox}/snap.png"], "--task-std: "),
    (["explore", "--range", "0", "--save", "{sandbox}/snap.png"], "--range: expected a positive number"),
    (["explore", "--save", ""], "--save: expected a path, got an empty string"),
    (["explore", "--grid", "3", "--meta-steps", "1", "--save", "{sandbox}"], "is a folder; expected a file name"),
    (["explore", "--start", "a", "b", "--save", "{sandbox}/snap.png"], "--start: invalid float value"),
    (["explore", "--save", "{sandbox}/snap.bmpx"], "--save: expected a file name ending in"),
    (["explore", "--grid", "3", "--meta-steps", "1", "--save", "{unwritable}/snap.png"], "--save: "),
    (["explore", "--grid", "3", "--meta-steps", "1", "--save", "{file}/snap.png"], "/box/file is a file, not a folder"),
    (["explore", "--grid", "3", "--meta-steps", "1", "--save", "/proc/linmaml-reliability.png"], "No such file"),
    # data
    (["data"], "ACTION"),
    (["data", "check", "imagenet"], "invalid choice: 'imagenet'"),
    (["data", "check", "omniglot", "--data-root", "{missing}"], "lacks the background set"),
    (["data", "check", "omniglot", "--data-root", "{file}"], "is not a folder"),
    (["data", "download", "omniglot", "--timeout", "x", "--root", "{sandbox}/data"], "--timeout: invalid float value"),
    (["data", "download", "omniglot", "--timeout", "nan", "--root", "{sandbox}/data"], "--timeout: expected a positive"),
    (["data", "download", "omniglot", "--timeout", "inf", "--root", "{sandbox}/data"], "--timeout: expected at most 86400"),
    (["data", "download", "omniglot", "--timeout", "1e300", "--root", "{sandbox}/data"], "--timeout: expected at most 86400"),
    (["data", "download", "omniglot", "--root", ""], "--root: expected a path, got an empty string"),
    (["data", "check", "omniglot", "--data-root", " "], "--data-root: expected a path, got an empty string"),
    (["data", "download", "omniglot", "--root", "{unwritable}"], "Not a directory"),
    # train (the rows that never read data; tests/cli/test_cli_train_evaluate.py has the full table)
    (["train"], "the following arguments are required: --out"),
    (["train", "--out", "{sandbox}/run", "--ways", "x", "--quiet"], "--ways: invalid int value"),
    (["train", "--out", "{sandbox}/run", "--ways", "1", "--quiet"], "--ways: expected an integer >= 2"),
    (["train", "--out", "{sandbox}/run", "--inner-lr", "inf", "--quiet"], "--inner-lr: expected a finite number"),
    (["train", "--out", "{sandbox}/run", "--algo", "sgd", "--quiet"], "--algo: invalid choice"),
    (["train", "--out", "{sandbox}/run", "--batching", "threads", "--quiet"], "--batching: invalid choice"),
    (["train", "--out", "{sandbox}/run", "--tasks-per-chunk", "0", "--quiet"], "--tasks-per-chunk: expected an integer >= 1"),
    (["train", "--out", "{sandbox}/run", "--compile", "yes", "--quiet"], "unrecognized arguments: yes"),
    (["train", "--out", "{sandbox}/run", "--allocator", "fast", "--quiet"], "--allocator: invalid choice: 'fast'"),
    (["train", "--out", "{unwritable}", "--quiet"], "Not a directory"),
    (["train", "--out", "{file}", "--quiet"], "is not a folder"),
    (["train", "--out", "{sandbox}/run", "--data-root", "{missing}", "--quiet"], "lacks the background set"),
    # plot
    (["plot", "--out", "{sandbox}/x.png"], "the following arguments are required: RUN"),
    (["plot", "{missing}", "--out", "{sandbox}/x.png"], "does not exist"),
    (["plot", "{sandbox}", "--out", "{sandbox}/x.png"], "holds no metrics.jsonl"),
    # analyze
    (["analyze", "{missing}"], "does not exist"),
    (["analyze", "{file}", "--bogus"], "unrecognized arguments: --bogus"),
    (["analyze", "{file}", "--allocator", "mmap"], "--allocator: invalid choice: 'mmap'"),
    # evaluate
    (["evaluate"], "CHECKPOINT: required (a .pt or a run folder; or --pretrained NAME"),
    (["evaluate", "{missing}/best.pt"], "best.pt does not exist"),
    (["evaluate", "{file}"], "is not a linmaml checkpoint"),
    (["evaluate", "{sandbox}"], "holds no checkpoint (best.pt, last.pt or last.prev.pt)"),
    (["evaluate", "{file}", "--tasks", "many"], "--tasks: invalid int value"),
    (["evaluate", "{file}", "--split", "holdout"], "--split: invalid choice"),
    (["evaluate", "{file}", "--allocator", ""], "--allocator: invalid choice: ''"),
]
if HAS_BENCH:  # being built beside this suite; its own tests cover the rest
    TABLE += [
        (["bench", "--only", "bogus", "--out", "{sandbox}/bench"], "--only: expected one of"),
        (["bench", "--threads", "x", "--out", "{sandbox}/bench"], "--threads: invalid int value"),
        (["bench", "--bogus"], "unrecognized arguments: --bogus"),
        (["bench", "--allocator", "Keep", "--out", "{sandbox}/bench"], "--allocator: invalid choice: 'Keep'"),
        (["bench", "--threads", "0", "--out", "{sandbox}/bench"], "--threads: expected an integer >= 1, got 0"),
        (["bench", "--threads", "-2", "--quick", "--out", "{sandbox}/bench"], "--threads: expected an integer >= 1"),
        (["bench", "--out", "{unwritable}"], "--out: cannot write into"),
        (["bench", "--out", "{unwritable}/deeper"], "Not a directory"),
        (["bench", "--out", "{file}"], "--out: "),
        (["bench", "--out", "/proc/linmaml-reliability"], "/proc/linmaml-reliability"),
        (["bench", "--out", ""], "--out: expected a path, got an empty string"),
    ]


def _ids(row):
    argv = row.values[0] if hasattr(row, "values") else row[0]
    return " ".join(argv) or "(none)"


def _snapshot(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    (analysis / "fig_alpha.py").write_text(STAND_IN)
    (analysis / "bench.py").write_text(BENCH_STAND_IN)
    monkeypatch.setenv("LINMAML_ANALYSIS", str(analysis))
    if HAS_BENCH:  # linmaml bench imports linmaml.analysis.bench: its run() is the stand-in's
        namespace = {}
        exec(BENCH_STAND_IN, namespace)
        monkeypatch.setattr("linmaml.analysis.bench.run", namespace["run"])
    box = tmp_path / "box"
    box.mkdir()
    (box / "file").write_text("not a folder, not a checkpoint\n")
    return box


def _fill(argv, box: pathlib.Path):
    places = dict(sandbox=box, file=box / "file", unwritable=box / "file" / "sub", missing=box / "missing")
    return [a.format(**places) for a in argv]


def run_in_process(argv, capsys):
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse errors leave through parser.exit
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv,needle", TABLE, ids=[_ids(r) for r in TABLE])
def test_bad_argument_is_one_line_exit_2_and_writes_nothing(argv, needle, sandbox, capsys):
    before = _snapshot(sandbox)
    status, out, err = run_in_process(_fill(argv, sandbox), capsys)
    assert status == 2, (status, err)
    assert "Traceback" not in err + out
    assert err.count("\n") == 1 and err.startswith("linmaml"), err
    assert needle in err, err
    assert _snapshot(sandbox) == before, "a rejected command wrote into the sandbox"
    assert not pathlib.Path("/proc/linmaml-reliability").exists()


def test_the_table_covers_every_subcommand():
    from linmaml.cli import build_parser

    covered = {(r.values[0] if hasattr(r, "values") else r[0])[0] for r in TABLE}
    registered = {name for action in build_parser()._subparsers._group_actions for name in action.choices}
    expected = set(COMMANDS) & registered  # a command still being built has no parser yet
    expected = expected if HAS_BENCH else expected - {"bench"}
    assert expected <= covered, sorted(expected - covered)


def test_bench_stand_in_is_reached_when_the_output_folder_is_fine(sandbox, capsys):
    """The control for the bench rows: with a writable --out the stand-in's timings do start (so the
    rows above prove the check comes first), and the folder the call created is removed again when
    the run fails, leaving no empty folder behind."""
    target = sandbox / "new" / "bench"
    with pytest.raises(AssertionError, match="the benchmark ran"):
        main(["bench", "--quick", "--out", str(target)])
    assert not (sandbox / "new").exists()
    assert capsys.readouterr().err == ""


def test_surface_grid_limit_matches_the_library():
    from linmaml.cli import surface
    from linmaml.closedform import scalar

    assert surface.MAX_GRID == scalar.MAX_GRID


# --------------------------------------------------------------------------------------------------
# End to end: a real process, and --debug


def _python_m(*argv, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run([sys.executable, "-m", "linmaml", *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)  # hang guard only


SUBPROCESS_ROWS = [
    (["verify", "--seed", "-1"], "linmaml verify: error: --seed: expected an integer >= 0, got -1\n"),
    (["surface", "--grid", "1"], "linmaml surface: error: --grid: expected an integer >= 2, got 1\n"),
    (["derive", "--depth", "9"], "linmaml derive: error: --depth: expected an integer <= 6, got 9\n"),
    (["evaluate", "{missing}/best.pt"], None),
    (["explore", "--grid", "3", "--meta-steps", "1", "--save", "{unwritable}/snap.png"], None),
]


@pytest.mark.parametrize("argv,expected", SUBPROCESS_ROWS, ids=[" ".join(a) for a, _ in SUBPROCESS_ROWS])
def test_a_real_process_exits_2_with_one_line(argv, expected, sandbox):
    before = _snapshot(sandbox)
    proc = _python_m(*_fill(argv, sandbox), cwd=sandbox.parent)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    if expected is not None:
        assert proc.stderr == expected
    assert _snapshot(sandbox) == before


def test_debug_shows_the_traceback(sandbox):
    proc = _python_m("--debug", "surface", "--lr", "nan", cwd=sandbox.parent)
    assert proc.returncode != 0 and proc.returncode != 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "linmaml.errors.ArgumentError: --lr: expected a finite number, got nan"


def test_debug_in_process_raises_instead_of_printing(capsys):
    with pytest.raises(ValueError, match="^--grid: expected an integer >= 2"):
        main(["--debug", "surface", "--grid", "1"])
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------------
# ~ in path options: expanded everywhere (also in --opt=~/x, which the shell leaves alone)


def test_tilde_is_expanded_and_the_path_used_is_printed(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    status, out, err = run_in_process(["explore", "--grid", "3", "--meta-steps", "1", "--save=~/snap.png"], capsys)
    assert status == 0, err
    assert out == f"{home / 'snap.png'}\n" and (home / "snap.png").is_file()
    assert not (tmp_path / "~").exists()
    status, _, err = run_in_process(["data", "check", "omniglot", "--data-root=~/data"], capsys)
    assert status == 2 and f"{home / 'data' / 'omniglot'} lacks the background set" in err
    assert not (tmp_path / "~").exists()


def test_tilde_in_out_of_reproduce_bench_and_analyze_is_expanded(tmp_path, monkeypatch, capsys):
    """--out=~/x (which the shell leaves alone) means the home folder's x: a file there is refused
    naming the expanded path, and no folder literally named ~ appears."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "taken").write_text("a file\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    commands = [["reproduce", "--out=~/taken"], ["analyze", str(tmp_path / "no-run"), "--out=~/taken"]]
    if HAS_BENCH:
        commands.append(["bench", "--quick", "--out=~/taken"])
    for argv in commands:
        status, _, err = run_in_process(argv, capsys)
        assert status == 2 and err.count("\n") == 1, (argv, err)
        assert f"--out: {home / 'taken'}" in err, (argv, err)
    assert not (tmp_path / "~").exists() and (home / "taken").read_text() == "a file\n"
