"""Training recipes: ``linmaml train --config`` files shipped inside the package, by name.

    from linmaml.benchmarks import recipes
    recipes.names()                  # ['omniglot-20w1s', 'omniglot-20w5s', 'omniglot-5w1s', ...]
    recipes.path("omniglot-5w1s")    # the installed omniglot-5w1s.json

or from the command line: ``linmaml train --config omniglot-5w1s --out runs/x`` (a recipe's name) or
``--config FILE`` (any settings file, a run's ``config.json`` included). Each recipe is one file in this
folder, ``<name>.json``: a JSON object holding the training settings (fields of
:class:`~linmaml.benchmarks.settings.TrainConfig`) that differ from the defaults. A source checkout
also reaches this folder as ``configs/`` (a relative symbolic link), and its ``README.md`` says what
each recipe is for, where its settings come from and which published rows it gave.
"""
from __future__ import annotations

from pathlib import Path

from linmaml.errors import ArgumentError, ArgumentTypeError

__all__ = ["FOLDER", "names", "path", "resolve"]

#: The folder holding the recipe files (inside the installed package).
FOLDER = Path(__file__).resolve().parent
SUFFIX = ".json"


def names() -> list[str]:
    """The names of the shipped recipes (file names without ``.json``), sorted."""
    return sorted(f.name[: -len(SUFFIX)] for f in FOLDER.glob("*" + SUFFIX) if f.is_file())


def path(name: str) -> Path:
    """The file of the recipe called ``name``. ``ArgumentError`` naming ``name`` if no recipe has that
    name (the message lists the names)."""
    if not isinstance(name, str):
        raise ArgumentTypeError("name", f"expected the name of a recipe (str), got {type(name).__name__}")
    # names() rather than FOLDER / name: a name such as '../x' or 'sub/x' is no recipe
    if name not in names():
        raise ArgumentError("name", f"no recipe is called {name!r} (recipes: {', '.join(names()) or 'none'})")
    return FOLDER / (name + SUFFIX)


def resolve(config, argument: str = "config") -> Path:
    """The settings file that ``config`` means: the path itself when a file (or anything else) exists
    there or cannot be looked at, so an existing path always wins over a recipe of the same name; else the shipped recipe
    called ``config`` (a trailing ``.json`` is allowed: ``omniglot-5w1s.json`` from any folder). Neither:
    ``ArgumentError`` naming ``argument``, listing the recipes."""
    given = Path(config).expanduser()
    try:
        given.stat()
        return given
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing there: perhaps a recipe's name
    except OSError:
        # something is there but cannot be looked at (no permission, a link loop, a name too long): the
        # reader says why, rather than this calling it missing
        return given
    name = str(config)
    if name.endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    if name in names():
        return FOLDER / (name + SUFFIX)
    raise ArgumentError(argument, f"cannot read {config} (no such file, nor a recipe of that name; recipes: "
                                  f"{', '.join(names())})")
