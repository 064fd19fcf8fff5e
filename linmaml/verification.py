"""The verification table: one row per identity, two runners (pytest and ``linmaml verify``).

A row is an :class:`Identity`: a name, a tolerance and a ``check(rng)`` callable that draws its own
random instances, computes the two sides independently and returns a :class:`CheckResult` with the
number of instances and the largest relative error (or, for statistical rows, the largest error in
the row's own unit, which the name and ``note`` state, e.g. "Monte Carlo standard errors").

Rows live next to the code they check (``linmaml/closedform/checks.py``, ``linmaml/meta/checks.py``,
``linmaml/simulator/checks.py``) and register themselves with :func:`identity`. ``all_identities``
imports those modules, so adding an identity is adding one decorated function.
"""
from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Callable

import numpy as np

#: Modules whose import registers rows. Order is the order of the printed table.
ROW_MODULES = (
    "linmaml.closedform.checks",
    "linmaml.simulator.checks",
    "linmaml.meta.checks",
)


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
        group = check.__module__.rsplit(".", 2)[-2] if "." in check.__module__ else check.__module__
        doc = (check.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = Identity(name, tolerance, check, group, doc)
        return check

    return register


def all_identities() -> list[Identity]:
    for module in ROW_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            # A row module that does not exist yet is fine; a broken import inside one is not.
            if error.name != module:
                raise
    return list(_REGISTRY.values())


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
