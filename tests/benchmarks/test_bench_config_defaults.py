"""Defaults a new user meets: a learned transform is validated and tested at the steps it is
trained for (no "beyond training" note from the defaults), plain MAML at 3."""
from __future__ import annotations

import pytest

from linmaml.benchmarks.config import TrainConfig, build_from_config
from linmaml.benchmarks.scoring import steps_note


@pytest.mark.parametrize("transform", ["kfo", "metasgd", "metacurvature", "rates"])
def test_a_learned_transform_tests_at_its_training_steps_by_default(transform):
    assert TrainConfig(transform=transform).test_steps == 1
    assert TrainConfig(transform=transform, steps=2).test_steps == 2
    assert TrainConfig(transform=transform, test_steps=5).test_steps == 5  # asked for: kept
    config = TrainConfig(transform=transform, layers=1, hidden=4)
    learner = build_from_config(config, (1, 28, 28))
    assert steps_note(learner, config.test_steps, config.steps) is None  # the defaults say no note
    assert steps_note(learner, 3, config.steps) is not None  # the note itself still fires when it should


def test_plain_maml_keeps_three_test_steps_and_a_saved_value_is_kept():
    assert TrainConfig().test_steps == 3 and TrainConfig(algo="anil").test_steps == 3
    saved = TrainConfig(transform="kfo", test_steps=3).to_dict()
    assert TrainConfig.from_dict(saved).test_steps == 3  # an older run's config reads as it was
