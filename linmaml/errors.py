"""Exceptions that carry what was wrong as values, not as text to parse.

``ArgumentError`` (a ``ValueError``) and ``ArgumentTypeError`` (a ``TypeError``) hold the argument's
name in ``.argument`` and what was wrong with it in ``.detail``; their message is
``"<argument>: <detail>"``, so code that catches ``ValueError``/``TypeError`` and prints the message
keeps working. The command line maps ``.argument`` to its flag (``lr`` → ``--lr``) with
:func:`renamed` instead of parsing messages. ``ArgumentExistsError`` and ``ArgumentNotADirectoryError``
are the same for an output folder that already holds something, or is not a folder (``FileExistsError``
and ``NotADirectoryError``, so ``except OSError`` callers keep working).

``FileContentError`` (a ``ValueError``) is for a file whose content a reader refuses (not UTF-8, not
JSON, a crafted pickle): it names the file in ``.where`` (a path, or a path and line) and what is
wrong in ``.detail``.

Every public function raises these for bad input; tests/test_errors.py walks the package and fails
on a plain ``raise ValueError(...)``/``raise TypeError(...)`` outside its commented allow-list.
"""
from __future__ import annotations

__all__ = ["ArgumentError", "ArgumentTypeError", "ArgumentExistsError", "ArgumentNotADirectoryError",
           "FileContentError", "argument_of", "renamed", "ModelRequiredError"]


class _CarriesArgument:
    """Mixin: ``argument`` (the name, e.g. ``"lr"`` or ``"--lr"``) and ``detail`` (the rest)."""

    def __init__(self, argument: str, detail: str):
        self.argument = str(argument)
        self.detail = str(detail)
        super().__init__(f"{self.argument}: {self.detail}")

    def __reduce__(self):  # picklable (multiprocessing, distributed workers) despite two arguments
        return type(self), (self.argument, self.detail)


class ArgumentError(_CarriesArgument, ValueError):
    """A value out of range or otherwise impossible; ``str(e) == f"{e.argument}: {e.detail}"``."""


class ModelRequiredError(ArgumentError):
    """A run trained on the user's own model, opened without that model (``argument`` is ``"model"``):
    the command line answers it by naming ``--model``; Python callers pass ``model=...``."""


class ArgumentTypeError(_CarriesArgument, TypeError):
    """A value of the wrong type; ``str(e) == f"{e.argument}: {e.detail}"``."""


class ArgumentExistsError(_CarriesArgument, FileExistsError):
    """An output folder argument that already holds something it may not replace (``errno`` is None)."""


class ArgumentNotADirectoryError(_CarriesArgument, NotADirectoryError):
    """A folder argument that names something other than a folder (``errno`` is None)."""


class FileContentError(ValueError):
    """A file a reader refuses for its content; ``.where`` names it, ``.detail`` says why.

    ``str(e) == f"{e.where}{e.separator}{e.detail}"``: the separator is ``": "`` unless the sentence
    reads on from the name (``"x.json is not valid JSON (…)"``).
    """

    def __init__(self, where: str, detail: str, separator: str = ": "):
        self.where, self.detail, self.separator = str(where), str(detail), separator
        super().__init__(f"{self.where}{separator}{self.detail}")

    def __reduce__(self):
        return type(self), (self.where, self.detail, self.separator)


def argument_of(error: BaseException) -> tuple[str | None, str]:
    """``(error.argument, error.detail)`` for the exceptions above that carry an argument, else
    ``(None, str(error))``: messages are never parsed for a name."""
    if isinstance(error, _CarriesArgument):
        return error.argument, error.detail
    return None, str(error)


def renamed(error: BaseException, names: dict[str, str]) -> BaseException:
    """``error`` with its argument renamed through ``names`` (e.g. ``{"lr": "--lr"}``), same class.

    Returns ``error`` itself when it carries no argument or one not in ``names``.
    """
    if not isinstance(error, _CarriesArgument):
        return error
    # "lr[2]" is the third entry of lr: rename the base, keep the index
    base, _, rest = error.argument.partition("[")
    if base not in names:
        return error
    return type(error)(names[base] + (f"[{rest}" if rest else ""), error.detail)
