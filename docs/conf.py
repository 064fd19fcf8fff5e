"""Sphinx configuration of linmaml's documentation: the API reference is built from the package's own
docstrings (autodoc + autosummary, recursive), the tutorials include the examples as they are, and
``make docs`` builds with warnings as errors (``-W -n``), so a broken cross-reference to a linmaml
name fails the build. No network: no intersphinx; references to torch/numpy/scipy types are not
checked (``nitpick_ignore_regex``)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "linmaml"
author = "the linmaml developers"
copyright = "2026, the linmaml developers"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "sphinx.ext.viewcode",
              "myst_parser"]
# The guide pages (docs/guide/*.md) are Markdown, read by MyST; the reference pages are reStructuredText.
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
# Every public name is documented (autosummary's tables link to each); a package page describes the
# package and lists its modules, and leaves the names it re-exports to the modules that define them
# ("ignore-module-all"), so no object is described twice.
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True,
                           "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes:" sections as fields, not a second description of dataclass fields
templates_path = ["_templates"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
# Only linmaml's own names are checked: anything else (torch.Tensor, np.ndarray, Callable, ...) is
# outside this documentation and would need a network inventory.
nitpick_ignore_regex = [(r"py:.*", r"(?!linmaml\b).*"),
                        # private names (a leading underscore) are not part of the reference
                        (r"py:.*", r"linmaml(\.\w+)*\._\w+.*")]
suppress_warnings = []


def _resolve_reexport(app, env, node, contnode):
    """Resolve a reference through a re-export (``linmaml.meta.MAML``) to the page of the module that
    defines the object (``linmaml.meta.learners.MAML``); a name that does not import stays broken."""
    import importlib

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("linmaml."):
        return None
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not module or not qualname or f"{module}.{qualname}" == target:
            return None
        domain = env.get_domain("py")
        return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], f"{module}.{qualname}",
                                   node, contnode)
    return None


#: Where the one-page-per-module sources are written at each build (ignored by git).
GENERATED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_generated")


def _write_module_pages(app):
    """One page per public module of linmaml (found with pkgutil, so a new module is documented
    without editing anything), each an ``automodule``. Written by hand rather than by autosummary:
    autosummary finds a module through its package's attributes, and where a package re-exports a
    function under its module's name (``linmaml.closedform.preconditioner``) it documents the
    function and loses the module."""
    import importlib
    import pkgutil

    import linmaml

    os.makedirs(GENERATED, exist_ok=True)
    names = ["linmaml"] + [m.name for m in pkgutil.walk_packages(linmaml.__path__, "linmaml.")
                           if not any(part.startswith("_") for part in m.name.split("."))]
    # LINMAML_DOCS_MODULES="linmaml.meta,linmaml.tasks": only these modules (and their submodules), for
    # a quick partial build (the tests use it); unset, every module.
    only = [m for m in os.environ.get("LINMAML_DOCS_MODULES", "").split(",") if m]
    if only:
        names = [n for n in names if any(n == m or n.startswith(m + ".") for m in only)]
    wanted = set()
    for name in names:
        importlib.import_module(name)  # a module that does not import fails the build here
        page = os.path.join(GENERATED, name + ".rst")
        wanted.add(page)
        text = f"{name}\n{'=' * len(name)}\n\n.. automodule:: {name}\n"
        if not os.path.exists(page) or open(page, encoding="utf-8").read() != text:
            with open(page, "w", encoding="utf-8") as handle:
                handle.write(text)
    for stale in set(os.path.join(GENERATED, f) for f in os.listdir(GENERATED)) - wanted:
        os.remove(stale)


def setup(app):
    app.connect("builder-inited", _write_module_pages)
    app.connect("missing-reference", _resolve_reexport)
