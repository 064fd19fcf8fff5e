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


def test_help_loads_no_torch():
    # `linmaml --help` imports every command module (to list them), so what those modules import at
    # the top is what every start of the command line pays; torch and the library behind a command
    # load only when the command runs (DESIGN.md: where imports stay inside functions). A fresh
    # interpreter per command, since this test process has torch loaded already (timeouts: hang guards).
    import subprocess
    import sys

    probe = ("import sys\nfrom linmaml.cli import main\nimport contextlib, io\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    for argv in (["--help"], ["train", "--help"], ["evaluate", "--help"], ["analyze", "--help"]):
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]", f"linmaml {' '.join(argv)} imported {out.stdout.strip()}"
    # the probe can fail: as if a command module imported the training stack at its top
    planted = "import linmaml.benchmarks.config\n" + probe
    out = subprocess.run([sys.executable, "-c", planted, "--help"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "'torch'" in out.stdout, out.stderr
