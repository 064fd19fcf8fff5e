"""pyproject.toml as setuptools reads it without deprecation warnings: ``make setup`` stays quiet (a
``license = {text = ...}`` table printed ~30 lines of setuptools' project.license deprecation)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert data["project"]["license"] == "MIT"  # PEP 639: an SPDX expression, not a table
    (requirement,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement)
    assert minimum and int(minimum.group(1)) >= 77, requirement  # SPDX strings need setuptools 77
