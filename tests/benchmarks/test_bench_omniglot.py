"""Real Omniglot: counts, checksums, ink fractions, resizing against Pillow, the split, per-class rotations."""
from __future__ import annotations

import csv
import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from linmaml.benchmarks.data import DatasetError, omniglot
from linmaml.benchmarks.episodes import EpisodeSampler

# From ../shared/data/omniglot/README.md (independent of this package).
FILE_SHA256 = {"background": "251acf82f14614e799c0ee9c2893478d2692ce58bd4ba8e5f4b8416f4ea6ee7b",
               "evaluation": "3d1dd2b330ca6b0615077fc5af16b858413cebb15f9891a105f8bfe75a3cd4ec"}
CONTENT_SHA256 = {"background": "5136181e46a5c4481987a003a75de2f4cf3f818021561dc11172103e93786500",
                  "evaluation": "7d185baeb97389a40b707202ec2d5748c285d5bc14f99203039b1f1532988399"}
INK_FRACTION = {"background": 0.0779, "evaluation": 0.0843}
COUNTS = {"background": (30, 964, 1), "evaluation": (20, 659, 965)}


def pillow_box(bool_image: np.ndarray, size: int = 28) -> np.ndarray:
    """Independent reference: ink = 1 as a float image, resized by Pillow's BOX filter."""
    ink = np.logical_not(bool_image).astype(np.float32)
    return np.asarray(Image.fromarray(ink, mode="F").resize((size, size), Image.BOX))


def raw_image(sets, char_id: int, drawer_index: int) -> np.ndarray:
    for s in sets.values():
        hit = np.flatnonzero(s.char_id == char_id)
        if hit.size:
            return s.images[hit[0], drawer_index]
    raise KeyError(char_id)


def test_counts_and_char_ids(omniglot_sets):
    total = 0
    for name, (alphabets, characters, first) in COUNTS.items():
        s = omniglot_sets[name]
        assert s.images.shape == (characters, 20, 105, 105) and s.images.dtype == bool
        assert len(s.alphabet_names) == alphabets
        assert sorted(s.char_id.tolist()) == list(range(first, first + characters))
        total += s.images.shape[0] * s.images.shape[1]
    assert total == 32460


def test_file_and_content_checksums(omniglot_sets, data_root):
    for name, s in omniglot_sets.items():
        if s.format == "npz":
            assert s.checksum == ("sha256", FILE_SHA256[name])
            assert hashlib.sha256(s.path.read_bytes()).hexdigest() == FILE_SHA256[name]
            # the arrays handed out are exactly the stored ones (README's container-free hash)
            assert hashlib.sha256(s.images.astype(np.uint8).tobytes()).hexdigest() == CONTENT_SHA256[name]
        elif s.format == "zip":
            assert s.checksum == ("md5", omniglot.SETS[name].zip_md5)


def test_ink_fraction_matches_readme(omniglot_sets):
    for name, s in omniglot_sets.items():
        direct = float((~s.images).mean())
        assert abs(direct - INK_FRACTION[name]) < 5e-5
        assert abs(s.ink_fraction - direct) < 1e-12


def test_resize_equals_pillow_box_on_real_images(omniglot_sets, omniglot_data):
    rng = np.random.default_rng(1)
    worst_f, worst_l = 0.0, 0.0
    for name, s in omniglot_sets.items():
        for c in rng.choice(len(s.char_id), 40, replace=False):
            d = int(rng.integers(20))
            ours = omniglot_data.pixels[np.searchsorted(omniglot_data.char_id, s.char_id[c]), d, 0]
            worst_f = max(worst_f, float(np.abs(ours - pillow_box(s.images[c, d])).max()))
            as_l = Image.fromarray(np.logical_not(s.images[c, d]).astype(np.uint8) * 255).resize((28, 28), Image.BOX)
            worst_l = max(worst_l, float(np.abs(ours - np.asarray(as_l) / 255.0).max()))
    assert worst_f <= 1e-6          # float32 rounding only
    # 8-bit mode rounds after each of its two passes: at most half a level each
    assert worst_l <= 1 / 255 + 1e-6


def test_preprocessed_layout(omniglot_data):
    assert omniglot_data.pixels.shape == (1623, 20, 1, 28, 28)
    assert omniglot_data.pixels.dtype == np.float32
    assert omniglot_data.char_id.tolist() == list(range(1, 1624))
    assert 0.0 <= omniglot_data.pixels.min() and omniglot_data.pixels.max() <= 1.0
    # resizing by averaging keeps the mean: the ink fraction survives (up to edge weighting)
    assert abs(float(omniglot_data.pixels.mean()) - (0.0779 * 964 + 0.0843 * 659) / 1623) < 2e-3


def test_shipped_split_file(omniglot_sets):
    table = omniglot.split_table()
    sizes = {k: len(v) for k, v in table.items()}
    assert sizes == {"train": 1100, "val": 100, "test": 423}
    every = np.concatenate(list(table.values()))
    assert sorted(every.tolist()) == list(range(1, 1624))  # disjoint and complete
    # the documented recipe, recomputed here
    order = np.random.default_rng(0).permutation(1623) + 1
    assert set(table["train"].tolist()) == set(order[:1100].tolist())
    assert set(table["val"].tolist()) == set(order[1100:1200].tolist())
    assert set(table["test"].tolist()) == set(order[1200:].tolist())
    # the descriptive columns agree with the data
    where = {}
    for s in omniglot_sets.values():
        for cid, name in zip(s.char_id.tolist(), s.character_names()):
            where[cid] = (s.name, name)
    with open(omniglot.SPLIT_FILE, newline="") as handle:
        for row in csv.DictReader(handle):
            assert where[int(row["char_id"])] == (row["set"], f"{row['alphabet']}/{row['character']}")


def test_splits_hold_only_their_characters(omniglot_data):
    table = omniglot.split_table()
    seen = set()
    for split in ("train", "val", "test"):
        s = omniglot_data.split(split)
        assert set(s.source_ids.tolist()) == set(table[split].tolist())
        assert s.num_classes == 4 * len(table[split]) and s.pixels.shape[0] == len(table[split])
        assert not seen & set(s.source_ids.tolist())
        seen |= set(s.source_ids.tolist())


def test_each_class_has_its_own_fixed_rotation(omniglot_sets, omniglot_data):
    split = omniglot_data.split("val")
    # every character appears once per angle
    for cid in np.unique(split.source_ids)[:10]:
        rows = np.flatnonzero(split.source_ids == cid)
        assert sorted(split.quarter_turns[rows].tolist()) == [0, 1, 2, 3]
    # the images of each class in an episode are its character turned by the class's own angle,
    # computed here from the raw 105x105 image with Pillow and numpy
    sampler = EpisodeSampler(split, ways=20, shots=1, query=1, seed=3)
    angles_seen = set()
    for index in range(3):
        task = sampler.task(index)
        for label, cls in enumerate(task.classes):
            name = split.class_names[cls]
            angle = int(name.rsplit("@rot", 1)[1])
            char_id = int(name.split()[0])
            assert char_id == split.source_ids[cls]
            for row, d in zip(np.flatnonzero(task.y_support == label), task.support_examples[label]):
                expected = np.rot90(pillow_box(raw_image(omniglot_sets, char_id, d)), angle // 90)
                assert np.abs(task.x_support[row, 0] - expected).max() <= 1e-6
            angles_seen.add(angle)
        # a late-binding closure would give one angle to every class of the task
        assert len({int(split.class_names[c].rsplit("@rot", 1)[1]) for c in task.classes}) > 1
    assert angles_seen == {0, 90, 180, 270}


def test_no_rotation_option(omniglot_data):
    split = omniglot_data.split("test", rotations=(0,))
    assert split.num_classes == 423 and not split.quarter_turns.any()
    with pytest.raises(ValueError, match="^rotations"):
        omniglot_data.split("test", rotations=(45,))
    with pytest.raises(ValueError, match="^split"):
        omniglot_data.split("testing")


def test_corrupt_npz_is_named_with_expected_checksum(data_root, tmp_path):
    source = data_root / "omniglot"
    if not (source / "omniglot_background.npz").is_file():
        pytest.skip("the real data here is not in the npz format")
    (tmp_path / "omniglot").mkdir()
    good = source / "omniglot_evaluation.npz"
    shutil.copyfile(good, tmp_path / "omniglot" / "omniglot_evaluation.npz")
    truncated = tmp_path / "omniglot" / "omniglot_background.npz"
    truncated.write_bytes((source / "omniglot_background.npz").read_bytes()[:1_000_000])
    with pytest.raises(DatasetError) as info:
        omniglot.read_omniglot(tmp_path)
    message = str(info.value)
    assert "omniglot_background.npz" in message and FILE_SHA256["background"] in message
    assert "\n" not in message
    # one flipped byte is caught as well
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered = tmp_path / "omniglot" / "omniglot_evaluation.npz"
    altered.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=FILE_SHA256["evaluation"]):
        omniglot.read_set("npz", altered, "evaluation")


def test_check_report(data_root):
    report = omniglot.check_omniglot(data_root)
    assert report["images"] == 32460
    assert {k: v["characters"] for k, v in report["sets"].items()} == {"background": 964, "evaluation": 659}
    assert report["sets"]["background"]["ink_fraction"] == 0.0779
    assert report["splits"]["val"]["characters"] == 100
