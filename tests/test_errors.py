"""linmaml.errors: exceptions carrying the argument name, and the CLI's renaming through it."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError, argument_of, renamed


@pytest.mark.parametrize("call,cls,argument", [
    (lambda: _validate.finite_number(float("nan"), "lr"), ArgumentError, "lr"),
    (lambda: _validate.finite_number("x", "lr"), ArgumentTypeError, "lr"),
    (lambda: _validate.integer(-1, "steps", minimum=0), ArgumentError, "steps"),
    (lambda: _validate.integer(1.5, "steps"), ArgumentTypeError, "steps"),
    (lambda: _validate.learning_rates([0.1, np.inf], 2), ArgumentError, "lr[1]"),
    (lambda: _validate.loss_name("hinge"), ArgumentError, "loss"),
    (lambda: _validate.real_matrix([[np.nan]], "X"), ArgumentError, "X"),
    (lambda: _validate.layer_indices([5], 2), ArgumentError, "adapt_layers"),
])
def test_validate_raises_exceptions_that_carry_the_name(call, cls, argument):
    with pytest.raises(cls) as info:
        call()
    error = info.value
    # still the builtin family, so existing `except ValueError` callers keep working
    assert isinstance(error, ValueError if cls is ArgumentError else TypeError)
    assert error.argument == argument
    assert str(error) == f"{argument}: {error.detail}"


def test_pickle_round_trip_keeps_the_fields():
    error = pickle.loads(pickle.dumps(ArgumentError("lr", "expected a finite number, got nan")))
    assert (type(error), error.argument, error.detail) == (ArgumentError, "lr", "expected a finite number, got nan")


def test_argument_of_reads_attributes_then_legacy_messages():
    assert argument_of(ArgumentError("x_var", "too small")) == ("x_var", "too small")
    assert argument_of(ValueError("depth, steps: too big: really")) == ("depth, steps", "too big: really")
    assert argument_of(ValueError("the objective overflows at 3 points")) == (None, "the objective overflows at 3 points")
    assert argument_of(ValueError("Something went wrong: badly")) == (None, "Something went wrong: badly")
    assert argument_of(OSError("lr: not an argument error")) == (None, "lr: not an argument error")


def test_renamed_maps_library_names_to_flags():
    error = renamed(ArgumentError("x_var", "expected a positive number, got 0.0"), {"x_var": "--x-var"})
    assert isinstance(error, ArgumentError) and error.argument == "--x-var"
    assert str(error) == "--x-var: expected a positive number, got 0.0"
    typed = renamed(ArgumentTypeError("lr[2]", "expected a real number"), {"lr": "--lr"})
    assert isinstance(typed, TypeError) and str(typed) == "--lr[2]: expected a real number"
    untouched = ArgumentError("seed", "bad")
    assert renamed(untouched, {"lr": "--lr"}) is untouched
