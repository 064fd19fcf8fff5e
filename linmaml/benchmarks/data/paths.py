"""Where datasets live: the data root and the per-user cache folder.

Every benchmark is read from a sub-folder of one *data root*: ``<root>/omniglot/``,
``<root>/cifar-fs/``, ``<root>/mini-imagenet/``. The root is, in this order of precedence,

1. the ``data_root`` argument (the CLI's ``--data-root DIR``),
2. the environment variable ``LINMAML_DATA``,
3. the per-user cache folder :func:`user_cache_dir` (``$XDG_CACHE_HOME/linmaml``, else
   ``~/.cache/linmaml``; ``%LOCALAPPDATA%\\linmaml`` on Windows).

The readers never write into the data root: a shared copy may be read-only. Only
``linmaml data download`` writes, and only into the root it is given.
"""
from __future__ import annotations

import os
from pathlib import Path

from linmaml.errors import ArgumentNotADirectoryError, ArgumentTypeError

#: Environment variable naming the data root.
ENV_VAR = "LINMAML_DATA"


def user_cache_dir() -> Path:
    """The per-user cache folder of linmaml (not created here)."""
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "linmaml"
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "linmaml"


def default_data_root() -> Path:
    """``$LINMAML_DATA`` if set and non-empty, else :func:`user_cache_dir`."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else user_cache_dir()


def resolve_data_root(data_root=None) -> Path:
    """The data root to use: ``data_root`` if given (str or path), else :func:`default_data_root`.

    The folder need not exist (the readers then say what is missing and how to get it), but a path
    that exists and is not a folder is an error.
    """
    if data_root is None or (isinstance(data_root, str) and not data_root.strip()):
        root = default_data_root()
    elif isinstance(data_root, (str, os.PathLike)):
        root = Path(data_root).expanduser()
    else:
        raise ArgumentTypeError("data_root", f"expected a path, got {type(data_root).__name__}")
    if root.exists() and not root.is_dir():
        raise ArgumentNotADirectoryError("data_root", f"{root} is not a folder")
    return root


def benchmark_dir(benchmark_folder: str, data_root=None) -> Path:
    """``<data root>/<benchmark_folder>`` (e.g. ``omniglot``), not created here."""
    return resolve_data_root(data_root) / benchmark_folder
