"""Fixtures shared by every test folder: where the real Omniglot is; the malloc policy of the tests.

The command-line tools keep freed memory in the process by default (``--allocator keep``,
:mod:`linmaml.benchmarks.allocator`), a setting of the whole process that cannot be undone. Many
tests call the CLI's ``main`` inside the pytest process, so the suite sets ``$LINMAML_ALLOCATOR`` to
"system" (its processes and their children keep glibc's own settings, whatever the test order);
tests/benchmarks/test_bench_allocator.py checks the "keep" default in fresh processes without it.

The real data is found through ``$LINMAML_DATA`` or ``../shared/data`` beside the repository (the
Makefile exports the latter). When neither holds ``omniglot/``, the tests that need it fail under CI
(``$CI`` set) and are skipped elsewhere.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ["LINMAML_ALLOCATOR"] = "system"


def real_data_root() -> Path | None:
    """The first of ``$LINMAML_DATA``, ``../shared/data`` that holds ``omniglot/``, or None."""
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
    """The data root holding the real Omniglot (``<root>/omniglot/``); fails under CI, skips elsewhere."""
    root = real_data_root()
    if root is None:
        message = "real Omniglot not found: set LINMAML_DATA or provide ../shared/data/omniglot"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session", autouse=True)
def _preprocessed_data_cache(tmp_path_factory):
    """The suite's cache of preprocessed data (:mod:`linmaml.benchmarks.data.cache`) lives in a session
    folder, never in the user's ~/.cache; set for the CLI's subprocesses too. An explicit
    ``$LINMAML_CACHE`` (e.g. ``off``) is kept."""
    if os.environ.get("LINMAML_CACHE", "").strip():
        yield
        return
    os.environ["LINMAML_CACHE"] = str(tmp_path_factory.mktemp("preprocessed-cache"))
    try:
        yield
    finally:
        os.environ.pop("LINMAML_CACHE", None)


@pytest.fixture(scope="session")
def sigterm_after():
    """``sigterm_after(n)``: an ``on_iteration`` callback for ``train`` that sends this process SIGTERM
    when iteration ``n`` is logged — a run stopped the way a user or a scheduler stops it (train's own
    handler ends it after that iteration, its checkpoint written), for the resume tests."""
    def make(n: int):
        def callback(record):
            if record["iteration"] == n:
                os.kill(os.getpid(), signal.SIGTERM)
        return callback
    return make
