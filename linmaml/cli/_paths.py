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


def folder_can_hold(path: Path, flag: str) -> None:
    """Refuse (``ArgumentError`` naming ``flag``) an output path below something that is not a folder
    (``--out afile/x.png``): checked before any work, so the error is not "File exists" from
    ``mkdir`` after a whole analysis."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent.is_file() else "is not a folder"
                raise ArgumentError(flag, f"{parent} {where}, so {path} cannot be created below it")
            return
