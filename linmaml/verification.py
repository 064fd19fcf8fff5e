"""The verification table: one row per identity, two runners (pytest and ``linmaml verify``).

A row is an :class:`Identity`: a name, a tolerance and a ``check(rng)`` callable that draws its own
random instances, computes the two sides independently and returns a :class:`CheckResult` with the
number of instances and the largest relative error (or, for statistical rows, the largest error in
the row's own unit, which the name and ``note`` state, e.g. "Monte Carlo standard errors").

Rows live in ``linmaml/checks/``, one module per part of the toolkit (``closedform.py``,
``gaussian.py``, ``symbolic.py``, ``simulator.py``, ``meta.py``), and register themselves with
:func:`identity`. ``all_identities`` imports every module there, so adding an identity is adding one
decorated function.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import time
from typing import Callable

import numpy as np

#: Row modules in the order of the printed table; any other module in linmaml/checks/ follows.
ROW_ORDER = ("closedform", "gaussian", "symbolic", "simulator", "meta")


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

    def run(self, seed: int = 0) -> dict:
        start = time.perf_counter()
        result = self.check(np.random.default_rng(seed))
        error = float(result.max_rel_error)
        return {
            "name": self.name,
            "group": self.group,
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
    """Decorator: register ``check(rng) -> CheckResult`` as a row of the table."""

    def register(check):
        if name in _REGISTRY:
            raise ValueError(f"identity {name!r} is registered twice")
        group = check.__module__.rsplit(".", 1)[-1]
        doc = (check.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = Identity(name, tolerance, check, group, doc)
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
    return {"identities": rows, "passed": all(r["passed"] for r in rows) and bool(rows)}


def format_table(report: dict) -> str:
    rows = report["identities"]
    width = max([len(r["name"]) for r in rows] + [8])
    lines = [f"{'identity':<{width}}  {'n':>5}  {'max error':>10}  {'tolerance':>9}  result"]
    for r in rows:
        mark = "pass" if r["passed"] else "FAIL"
        lines.append(
            f"{r['name']:<{width}}  {r['instances']:>5}  {r['max_rel_error']:>10.2e}  {r['tolerance']:>9.1e}  {mark}"
        )
    passed = sum(r["passed"] for r in rows)
    lines.append(f"{passed} of {len(rows)} identities hold")
    return "\n".join(lines)
