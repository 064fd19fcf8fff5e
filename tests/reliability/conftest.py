"""What the property tests of the closed forms and of ``linmaml.meta`` share: the check that an error
names an argument that is actually wrong."""
from __future__ import annotations

import pytest
from hypothesis import event


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
