"""Path options of the command line: one rule for every subcommand.

``~`` is expanded everywhere (the shell does it for ``--out ~/x`` but not for ``--out=~/x``, which
would otherwise create a folder literally named ``~``), and an empty path is refused naming the
flag (``Path("")`` is the current folder, which nobody means by ``--out ''``). The commands print
the path they used, so what was expanded is visible.
"""
from __future__ import annotations

from pathlib import Path

from linmaml.errors import ArgumentError, ModelRequiredError


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


def user_model_error(run, error: BaseException, function: str = "evaluate_checkpoint",
                     module: str = "linmaml.benchmarks.evaluate") -> ArgumentError:
    """The command line's answer to a run trained on the user's own model class that its config.json
    does not say where to import from (a run of ``train(model=...)``): an error naming the run that
    names the flag to pass (``--model package.module:Class``) and the Python route
    (``function(run, model=...)``)."""
    detail = getattr(error, "detail", str(error))
    if isinstance(error, ModelRequiredError):
        return ArgumentError(str(run), f"{detail.split(';')[0]}, and its config.json does not say where to import it "
                                       f"from: pass --model package.module:Class (and --model-kwargs JSON), or score "
                                       f"it from Python: from {module} import {function}; "
                                       f"{function}({str(run)!r}, model=YourModel()) (README: Using the library)")
    return ArgumentError(str(run), f"{detail} (the command line scores the built-in ConvNet, or your own with --model)")
