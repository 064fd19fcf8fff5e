"""Lake et al.'s alphabet split of Omniglot (``class_split="alphabets"``): background alphabets train
(5 of the 30 held out to validate), evaluation alphabets test. Checked against the official layout
as the data itself records it (each character's alphabet in the npz files, char ids 1..964 background
and 965..1623 evaluation), and the standard split against the recipe that made the shipped file."""
from __future__ import annotations

import numpy as np
import pytest

from linmaml.benchmarks.data import load_splits, omniglot
from linmaml.benchmarks.data.omniglot import (ALPHABET_VAL, Omniglot, alphabet_split_recipe, alphabet_split_table,
                                              split_recipe, split_table, split_tables)
from linmaml.errors import ArgumentError


def test_the_validation_alphabets_are_the_recipe_s():
    assert ALPHABET_VAL == alphabet_split_recipe()
    assert len(ALPHABET_VAL) == 5


def test_sizes_and_sets_by_char_id():
    """Official numbering: 1..964 background (30 alphabets), 965..1623 evaluation (20 alphabets)."""
    table = alphabet_split_table()
    assert {k: len(v) for k, v in table.items()} == {"train": 815, "val": 149, "test": 659}
    np.testing.assert_array_equal(table["test"], np.arange(965, 1624))
    np.testing.assert_array_equal(np.sort(np.concatenate([table["train"], table["val"]])), np.arange(1, 965))


def test_no_alphabet_in_two_splits_by_the_data_s_own_alphabet_names(omniglot_data):
    """Each character's alphabet as the data files record it (the npz's alphabet names, not the
    shipped csv the table is read from): 25 / 5 / 20 alphabets, pairwise disjoint; the classes are
    the characters' four rotations."""
    table = alphabet_split_table()
    alphabet_of = dict(zip(omniglot_data.char_id.tolist(),
                           (name.split("/")[0] for name in omniglot_data.character_names)))
    alphabets = {split: {alphabet_of[int(c)] for c in ids} for split, ids in table.items()}
    assert {k: len(v) for k, v in alphabets.items()} == {"train": 25, "val": 5, "test": 20}
    assert not (alphabets["train"] & alphabets["val"] or alphabets["train"] & alphabets["test"]
                or alphabets["val"] & alphabets["test"])
    assert alphabets["val"] == set(ALPHABET_VAL)
    for split, ids in table.items():
        data = omniglot_data.split(split, table=table)
        assert data.num_classes == 4 * len(ids)
        assert {alphabet_of[int(c)] for c in data.source_ids} == alphabets[split]


def test_load_splits_reads_the_alphabet_split_and_the_default_is_unchanged(omniglot_data, monkeypatch):
    """load_splits(class_split=...) hands out the tables' classes; without it, the shipped split,
    which is still the recipe's seeded character permutation (the classes of before)."""
    monkeypatch.setattr(Omniglot, "load", classmethod(lambda cls, *a, **k: omniglot_data))
    recipe = split_recipe()
    for split, ids in split_table().items():
        np.testing.assert_array_equal(ids, recipe[split])
    names = ("train", "val", "test")
    default = load_splits("omniglot", names)
    standard = load_splits("omniglot", names, class_split="standard")
    alphabets = load_splits("omniglot", names, class_split="alphabets")
    for split in names:
        np.testing.assert_array_equal(np.unique(default[split].source_ids), recipe[split])
        assert default[split].class_names == standard[split].class_names
        np.testing.assert_array_equal(np.unique(alphabets[split].source_ids), alphabet_split_table()[split])
    assert split_tables("standard").keys() == split_table().keys()
    with pytest.raises(ArgumentError, match="^class_split: expected one of standard, alphabets"):
        load_splits("omniglot", names, class_split="lake")
    with pytest.raises(ArgumentError, match="^class_split: expected one of standard, alphabets"):
        omniglot.split_tables("lake")
