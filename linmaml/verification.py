"""The verification table: one row per identity, two runners (pytest and ``linmaml verify``).

A row is an :class:`Identity`: a name, a tolerance and a ``check(rng)`` callable that draws its own
random instances, computes the two sides independently and returns a :class:`CheckResult` with the
number of instances and the largest relative error (or, for statistical rows, the largest error in
the row's own unit, which the name and ``note`` state, e.g. "Monte Carlo standard errors").

Relative error has one meaning across the table, :data:`linmaml.checks._common.RELATIVE_ERROR`
(‖a − b‖_F / ‖b‖_F, b the reference side), printed in the table's header and in the JSON report.

What a row checks is written in its docstring: every fully qualified name ``linmaml.…`` there
(e.g. "checks linmaml.closedform.deep_linear.maml_grad") is collected into :attr:`Identity.checks`
and shown by ``linmaml verify --json``. A row whose two sides share the code under test (true by
construction, e.g. a transform at its identity initialisation) is a *smoke* row: its name starts
with "smoke:", it is run and must hold like any other, but the table labels it as plumbing, not as
an identity.

Rows live in ``linmaml/checks/``, one module per part of the toolkit (``closedform.py``,
``gaussian.py``, ``symbolic.py``, ``simulator.py``, ``meta.py``), and register themselves with
:func:`identity`. ``all_identities`` imports every module there, so adding an identity is adding one
decorated function.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import time
from typing import Callable

import numpy as np

from linmaml.checks._common import RELATIVE_ERROR
from linmaml.errors import ArgumentError

#: Row modules in the order of the printed table; any other module in linmaml/checks/ follows.
ROW_ORDER = ("closedform", "gaussian", "symbolic", "simulator", "meta")
#: Rows whose name starts with this are smoke checks (true by construction), not identities.
SMOKE_PREFIX = "smoke:"
_QUALIFIED_NAME = re.compile(r"\blinmaml(?:\.\w+)+")


def checked_names(doc: str) -> tuple[str, ...]:
    """The fully qualified names ``linmaml.…`` in a row's docstring, in order, without repeats."""
    return tuple(dict.fromkeys(_QUALIFIED_NAME.findall(doc or "")))


@dataclasses.dataclass(frozen=True)
class CheckResult:
    instances: int
    max_rel_error: float
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Identity:
    name: str
    tolerance: float
    check: Callable[[np.random.Generator], CheckResult]
    group: str
    description: str
    #: Fully qualified names of the functions this row checks (from its docstring).
    checks: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """"smoke" for rows true by construction (name starts with "smoke:"), else "identity"."""
        return "smoke" if self.name.startswith(SMOKE_PREFIX) else "identity"

    def run(self, seed: int = 0) -> dict:
        start = time.perf_counter()
        result = self.check(np.random.default_rng(seed))
        error = float(result.max_rel_error)
        return {
            "name": self.name,
            "kind": self.kind,
            "group": self.group,
            "checks": list(self.checks),
            "instances": int(result.instances),
            "max_rel_error": error,
            "tolerance": self.tolerance,
            # NaN never passes: a comparison with NaN is False.
            "passed": bool(error <= self.tolerance),
            "seconds": time.perf_counter() - start,
            "note": result.note,
        }


_REGISTRY: dict[str, Identity] = {}


def identity(name: str, tolerance: float):
    """Decorator: register ``check(rng) -> CheckResult`` as a row of the table. The docstring's
    first line describes the row; the ``linmaml.…`` names in it say what the row checks."""

    def register(check):
        if name in _REGISTRY:
            raise ArgumentError("name", f"identity {name!r} is registered twice")
        group = check.__module__.rsplit(".", 1)[-1]
        doc = (check.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = Identity(name, tolerance, check, group, doc, checked_names(check.__doc__))
        return check

    return register


def all_identities() -> list[Identity]:
    import linmaml.checks

    found = [m.name for m in pkgutil.iter_modules(linmaml.checks.__path__) if not m.name.startswith("_")]
    order = [m for m in ROW_ORDER if m in found] + sorted(set(found) - set(ROW_ORDER))
    for module in order:
        importlib.import_module(f"linmaml.checks.{module}")
    rank = {m: i for i, m in enumerate(order)}
    return sorted(_REGISTRY.values(), key=lambda ident: rank.get(ident.group, len(order)))


def run_all(seed: int = 0, only: str | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Run every row (or those whose name contains ``only``); return the report as a dict."""
    rows = []
    for ident in all_identities():
        if only and only not in ident.name:
            continue
        if progress:
            progress(ident.name)
        rows.append(ident.run(seed))
    return {"relative_error": RELATIVE_ERROR, "identities": rows,
            "passed": all(r["passed"] for r in rows) and bool(rows)}


def format_table(report: dict) -> str:
    """The printed table: a header line with the relative-error definition, one line per row (kind
    "smoke" marked), and a summary line."""
    rows = report["identities"]
    width = max([len(r["name"]) for r in rows] + [8])
    lines = [report.get("relative_error", RELATIVE_ERROR) + "; statistical rows: standard errors",
             f"{'row':<{width}}  {'kind':<8}  {'n':>5}  {'max error':>10}  {'tolerance':>9}  result"]
    for r in rows:
        mark = "pass" if r["passed"] else "FAIL"
        kind = r.get("kind", "identity")
        lines.append(f"{r['name']:<{width}}  {kind:<8}  {r['instances']:>5}  {r['max_rel_error']:>10.2e}  "
                     f"{r['tolerance']:>9.1e}  {mark}")
    passed = sum(r["passed"] for r in rows)
    smoke = sum(r.get("kind") == "smoke" for r in rows)
    lines.append(f"{passed} of {len(rows)} rows hold ({len(rows) - smoke} identities, {smoke} smoke checks)")
    lines.append(MAX_ERROR_NOTE)
    return "\n".join(lines)


#: Printed under the table: the errors are the worst of random instances, not constants.
MAX_ERROR_NOTE = ("max error: the largest error over this seed's random instances; it changes with --seed "
                  "(only its order of magnitude against the tolerance means anything)")


def format_markdown(report: dict, seconds: float | None = None) -> str:
    """The table as the README shows it: one Markdown row per identity (``|`` in names escaped) and
    the headline that counts identities and smoke checks apart. ``seconds``: the run's wall time."""
    rows = report["identities"]
    lines = ["| row | kind | instances | max error | tolerance |", "|---|---|---:|---:|---:|"]
    for r in rows:
        name = r["name"].replace("|", "\\|")
        lines.append(f"| {name} | {r.get('kind', 'identity')} | {r['instances']} | {r['max_rel_error']:.1e} | "
                     f"{r['tolerance']:.0e} |" + ("" if r["passed"] else " **FAILS** |"))
    smoke = [r for r in rows if r.get("kind") == "smoke"]
    ident = [r for r in rows if r.get("kind") != "smoke"]
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    lines += ["", f"`linmaml verify` (seed {report.get('seed', 0)}): **{sum(r['passed'] for r in ident)} of {len(ident)} "
                  f"identities hold**, each with two independent sides, **and {sum(r['passed'] for r in smoke)} of "
                  f"{len(smoke)} smoke checks** (plumbing whose sides share the code under test, counted apart): "
                  f"{len(rows)} rows{took} (`linmaml verify --markdown`, which printed this table)."]
    return "\n".join(lines)
