"""Path options of the command line: one rule for every subcommand.

``~`` is expanded everywhere (the shell does it for ``--out ~/x`` but not for ``--out=~/x``, which
would otherwise create a folder literally named ``~``), and an empty path is refused naming the
flag (``Path("")`` is the current folder, which nobody means by ``--out ''``). The commands print
the path they used, so what was expanded is visible.
"""
from __future__ import annotations

from pathlib import Path

from linmaml.errors import ArgumentError


def path_option(value, flag: str) -> Path | None:
    """``value`` as a Path with ``~`` expanded; None stays None; ArgumentError naming ``flag`` if empty."""
    if value is None:
        return None
    text = str(value)
    if not text.strip():
        raise ArgumentError(flag, "expected a path, got an empty string")
    return Path(text).expanduser()
