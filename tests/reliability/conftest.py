"""What the reliability tests share: the check that an error names an argument that is actually wrong
(the property tests), and pure-noise Omniglot splits in place of the dataset (the command tests)."""
from __future__ import annotations

import pytest
from hypothesis import event

import linmaml.benchmarks.data as data_package
from linmaml.benchmarks.data.fewshot import noise_splits


def _assert_names(error, names):
    """``error`` is a one-line message that starts with one of ``names`` (the arguments at fault)."""
    assert error is not None, f"expected an error naming one of {sorted(names)}"
    event(f"error naming {str(error).split(':', 1)[0]}")
    message = str(error)
    assert any(message.startswith(name) for name in names), f"{message!r} names none of {sorted(names)}"
    assert "\n" not in message


@pytest.fixture(scope="session")
def assert_names():
    return _assert_names


@pytest.fixture
def fake_data(monkeypatch):
    """train/evaluate read :func:`~linmaml.benchmarks.data.fewshot.noise_splits` instead of a dataset
    (they look datasets.load_splits up when they call it); a module opts in with ``usefixtures("fake_data")``."""
    monkeypatch.setattr(data_package, "load_splits", lambda benchmark, names, data_root=None, **_: {
        name: split for name, split in noise_splits().items() if name in tuple(names)})
