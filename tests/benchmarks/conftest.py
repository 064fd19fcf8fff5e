"""Shared fixtures for the benchmark tests: where the real Omniglot is, and one load per session.

The real data is found through ``$LINMAML_DATA`` or ``../shared/data`` beside the repository (the
Makefile exports the latter). When neither holds ``omniglot/``, the tests that need it fail under CI
(``$CI`` set) and are skipped elsewhere.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def real_data_root() -> Path | None:
    candidates = []
    if os.environ.get("LINMAML_DATA", "").strip():
        candidates.append(Path(os.environ["LINMAML_DATA"]).expanduser())
    candidates.append(REPO.parent / "shared" / "data")
    for root in candidates:
        if (root / "omniglot").is_dir():
            return root
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data root holding the real Omniglot (``<root>/omniglot/``)."""
    root = real_data_root()
    if root is None:
        message = "real Omniglot not found: set LINMAML_DATA or provide ../shared/data/omniglot"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def omniglot_sets(data_root):
    """Both official sets as stored (bool 105x105, True = background), read and verified once."""
    from linmaml.benchmarks.data import omniglot

    start = time.perf_counter()
    sets = omniglot.read_omniglot(data_root, verify=True)
    print(f"\n[omniglot] read + verify: {time.perf_counter() - start:.2f} s")
    return sets


@pytest.fixture(scope="session")
def omniglot_data(omniglot_sets):
    """The preprocessed :class:`Omniglot` (28x28, box, ink = 1), built once from the raw sets."""
    from linmaml.benchmarks.data import Omniglot

    data = Omniglot(omniglot_sets)
    print(f"\n[omniglot] resize 32,460 images: {data.seconds['resize']:.2f} s")
    return data
