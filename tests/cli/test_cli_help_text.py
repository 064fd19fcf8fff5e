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
