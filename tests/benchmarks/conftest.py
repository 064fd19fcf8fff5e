"""Shared fixtures for the benchmark tests: the real Omniglot read once per session (its data root
comes from ``data_root`` in tests/conftest.py)."""
from __future__ import annotations

import time

import pytest


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
