"""Every command's --help reads as written: argparse formats %-escapes in option help but not in a
description, so a literal "%%" (or an unformatted "%(") shows through there."""
import argparse

from linmaml.cli import build_parser


def test_no_command_help_shows_a_percent_escape():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = {"linmaml": parser.format_help(), **{name: p.format_help() for name, p in sub.choices.items()}}
    assert len(texts) > 10
    shown = {name: text for name, text in texts.items() if "%%" in text or "%(" in text}
    assert not shown, f"a percent escape shows in the help of {sorted(shown)}"
    assert "95% CI" in texts["plot"]


def test_help_loads_no_torch_scipy_matplotlib_or_sympy():
    # `linmaml --help` imports every command module (to list them), so what those modules import at
    # the top is what every start of the command line pays; torch and the library behind a command
    # load only when the command runs (DESIGN.md: where imports stay inside functions). Measured with
    # `python -X importtime -c "import linmaml.cli, torch"` (and so on) on a loaded 2-core machine:
    # torch 1.3-1.7 s, linmaml.closedform (scipy) 0.58 s, matplotlib.pyplot 0.44-0.66 s, sympy 0.22-0.31 s,
    # against 0.2 s of wall time for the whole of `linmaml --help`; none loads for any command's --help.
    # A fresh interpreter (this test process has torch loaded already) runs every --help in turn and
    # reports what each one loaded; the timeout is a hang guard.
    import json
    import subprocess
    import sys

    probe = """import contextlib, io, json, sys
from linmaml.cli import build_parser, main
HEAVY = ("torch", "matplotlib", "sympy", "scipy")
parser = build_parser()
commands = [[]]
for name, sub in parser._subparsers._group_actions[0].choices.items():
    commands.append([name])
    commands += [[name, inner] for action in sub._actions if action.nargs == "A..." for inner in action.choices]
loaded = {}
for argv in commands:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*argv, "--help"])
        except SystemExit:
            pass
    loaded[" ".join(argv + ["--help"])] = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps(loaded))
"""

    def run(source):
        out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    loaded = run(probe)
    assert len(loaded) > 11 and "train --help" in loaded and "data check --help" in loaded, sorted(loaded)
    heavy = {argv: sorted({m.split(".")[0] for m in modules}) for argv, modules in loaded.items() if modules}
    assert not heavy, f"--help imported: {heavy}"
    # the probe can fail: as if a command module imported the training stack, or a drawing, at its top
    for planted, module in (("import linmaml.benchmarks.config", "torch"), ("import matplotlib.pyplot", "matplotlib"),
                            ("import linmaml.closedform", "scipy"), ("import linmaml.closedform.symbolic", "sympy")):
        loaded = run(probe.replace("from linmaml.cli import", f"{planted}\nfrom linmaml.cli import", 1))
        assert module in loaded["--help"], (planted, loaded["--help"])

def _parsers():
    """Every parser of the command line by its command ("linmaml", "train", "data check", ...)."""
    found = {}

    def walk(name, parser):
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for inner, sub in action.choices.items():
                    if sub not in found.values():  # "data info" is an alias of "data check"
                        walk(inner if name == "linmaml" else f"{name} {inner}", sub)

    walk("linmaml", build_parser())
    return found


def test_every_command_has_a_plain_text_description():
    # `linmaml verify --help` and others printed no description line, and `linmaml --help` opened with
    # the module docstring's reST ("The ``linmaml`` command line"); argparse prints a description as is
    parsers = _parsers()
    assert {"linmaml", "verify", "derive", "surface", "train", "data check", "data download"} <= set(parsers)
    missing = sorted(name for name, parser in parsers.items() if not (parser.description or "").strip())
    assert not missing, f"no description: {missing}"
    for name, parser in parsers.items():
        for markup in ("``", ":mod:", ":func:", ":class:", ":data:"):
            assert markup not in parser.description, (name, markup)
        # the description is what --help shows (compared without white space: argparse re-wraps it)
        assert "".join(parser.description.split()) in "".join(parser.format_help().split()), name


def _metavar(action) -> str:
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper()


#: Metavars that say what kind of value an option takes (a folder, a file), not which quantity it is,
#: so several options of one command may share them.
KINDS = {"DIR", "FILE", "PATH", "NAME", "JSON", "URL"}


def test_a_metavar_names_one_quantity_per_command():
    # train showed --train-shots S, --steps S and --snapshot-every S, and --layers B beside --inner-batch B
    # (the help texts use the letters as names: "every S-th iteration", "minibatches of B")
    for name, parser in _parsers().items():
        options = {}
        for action in parser._actions:
            if action.option_strings and action.nargs != 0:
                options.setdefault(_metavar(action), []).append(action.option_strings[-1])
        shared = {metavar: flags for metavar, flags in options.items() if len(flags) > 1 and metavar not in KINDS}
        assert not shared, f"linmaml {name}: one metavar for different options: {shared}"


def test_threads_and_device_read_alike_in_every_command():
    # bench showed --threads THREADS and a free-form --device DEVICE where the others show N and choices
    with_threads, with_device = {}, {}
    for name, parser in _parsers().items():
        for action in parser._actions:
            if "--threads" in action.option_strings:
                with_threads[name] = action
            if "--device" in action.option_strings:
                with_device[name] = action
    assert {"train", "evaluate", "analyze", "reproduce", "bench"} <= set(with_threads)
    assert {"train", "evaluate", "bench"} <= set(with_device)
    assert {name: action.metavar for name, action in with_threads.items()} == dict.fromkeys(with_threads, "N")
    for name, action in with_device.items():
        assert action.choices is not None and {"cpu", "cuda"} <= set(action.choices) <= {"auto", "cpu", "cuda"}, name
    bench = _parsers()["bench"]
    for good in ("cpu", "cuda"):
        assert bench.parse_args(["--device", good]).device == good
    import contextlib
    import io

    import pytest

    stderr = io.StringIO()
    with pytest.raises(SystemExit) as stopped, contextlib.redirect_stderr(stderr):
        bench.parse_args(["--device", "gpu"])  # refused by the parser, before any timing
    assert stopped.value.code == 2
    assert stderr.getvalue().count("\n") == 1 and "--device: invalid choice: 'gpu'" in stderr.getvalue()


def test_batching_help_names_each_mode():
    # it described three modes in order without naming them, so a reader could not tell which is which
    import re

    train = _parsers()["train"]
    action = next(a for a in train._actions if "--batching" in a.option_strings)
    assert len(action.choices) == 3
    for mode in action.choices:
        assert re.search(rf"(^|[;:] ){mode}\b", action.help), mode  # each description starts with its name
