"""Optional dependencies ("extras") and the one-line message that names the extra to install.

``pip install linmaml`` brings what the meta-learning library, the closed forms and the simulator
need (torch, numpy, scipy). Drawing needs matplotlib (``linmaml[plots]``), symbolic derivations
need sympy (``linmaml[symbolic]``; torch itself depends on sympy, so it is usually there), reading
image files needs Pillow (``linmaml[images]``), the TensorBoard logger of ``linmaml train --log``
needs tensorboard (``linmaml[tensorboard]``); ``linmaml[all]`` brings every one.

:func:`require` imports an optional module or raises :class:`MissingExtraError`, an ``ImportError``
whose message names the extra; :func:`missing_extra` recognises a plain ``ModuleNotFoundError``
for one of those modules (raised deep inside a figure module, say) so the command line can turn it
into the same one line.
"""
from __future__ import annotations

import importlib

__all__ = ["EXTRAS", "MissingExtraError", "require", "missing_extra"]

#: Top-level module → the extra of linmaml that installs it.
EXTRAS = {"matplotlib": "plots", "sympy": "symbolic", "PIL": "images", "tensorboard": "tensorboard"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; ``.extra`` names the extra that brings it."""

    def __init__(self, module: str, extra: str, purpose: str | None = None):
        self.module, self.extra = module, extra
        needed = f" for {purpose}" if purpose else ""
        super().__init__(f"{module} is needed{needed} and is not installed: pip install 'linmaml[{extra}]' "
                         f"(or 'linmaml[all]')", name=module)


def require(module: str, purpose: str | None = None):
    """Import and return ``module`` (e.g. ``"matplotlib.pyplot"``); if its top-level package is one
    of :data:`EXTRAS` and is missing, raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        found = missing_extra(error)
        if found is None:
            raise
        raise found from None


def missing_extra(error: BaseException) -> MissingExtraError | None:
    """The :class:`MissingExtraError` that ``error`` amounts to, or None: ``error`` itself if it is
    one, a ``ModuleNotFoundError`` for a module of an extra (by its top-level name), else None."""
    if isinstance(error, MissingExtraError):
        return error
    if isinstance(error, ModuleNotFoundError) and error.name:
        top = error.name.split(".")[0]
        if top in EXTRAS:
            return MissingExtraError(top, EXTRAS[top])
    return None
