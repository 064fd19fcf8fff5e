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