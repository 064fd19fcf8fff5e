"""The cache of preprocessed data (linmaml.benchmarks.data.cache): a hit returns the arrays of a fresh
preprocessing, a changed source byte misses, a damaged entry is rebuilt and never trusted; on a tiny
Omniglot in the npz format (read with verify=False: the counts of the real sets are not there) and
on an image folder."""
import json

import numpy as np
import pytest

from linmaml.benchmarks.data import cache
from linmaml.benchmarks.data.omniglot import DRAWERS, IMAGE_SIZE, Omniglot
from linmaml.benchmarks.data.own import folder_splits


def write_set(folder, name, first_id, count, rng, flip=None):
    images = rng.random((count, DRAWERS, IMAGE_SIZE, IMAGE_SIZE)) < 0.9
    if flip is not None:
        images[flip] = ~images[flip]
    np.savez(folder / f"omniglot_{name}.npz", images=images, char_id=np.arange(first_id, first_id + count),
             alphabet_names=np.array(["Alpha"]), char_alphabet=np.zeros(count, np.int64),
             char_folder=np.arange(1, count + 1), drawer=np.arange(1, DRAWERS + 1))


@pytest.fixture
def tiny_root(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    root = tmp_path / "data"
    (root / "omniglot").mkdir(parents=True)
    write_set(root / "omniglot", "background", 1, 3, np.random.default_rng(0))
    write_set(root / "omniglot", "evaluation", 4, 2, np.random.default_rng(1))
    return root


def load(root, **kw):
    return Omniglot.load(root, verify=False, size=14, **kw)


def entries(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_hit_returns_the_arrays_of_a_fresh_preprocessing(tiny_root, tmp_path):
    first = load(tiny_root)
    assert not first.cached and len(entries(tmp_path / "cache")) == 2  # the .npz and its record
    second = load(tiny_root)
    fresh = load(tiny_root, cache=False)
    assert second.cached and not fresh.cached
    for data in (first, second):
        np.testing.assert_array_equal(data.pixels, fresh.pixels)
        np.testing.assert_array_equal(data.char_id, fresh.char_id)
        assert data.character_names == fresh.character_names
    assert second.pixels.dtype == np.float32 and second.pixels.shape == (5, DRAWERS, 1, 14, 14)
    # the split handed out is the same too
    table = {"train": np.array([1, 2, 4]), "val": np.array([3]), "test": np.array([5])}
    a, b = second.split("train", table=table), fresh.split("train", table=table)
    np.testing.assert_array_equal(a.images([0, 5], [[0, 1], [2, 3]]), b.images([0, 5], [[0, 1], [2, 3]]))
    # other settings are another key
    assert not load(tiny_root, resize="area").cached


def test_a_changed_source_byte_misses(tiny_root):
    before = load(tiny_root)
    # one pixel of one drawing changed: a new key, so the new content is preprocessed afresh
    write_set(tiny_root / "omniglot", "evaluation", 4, 2, np.random.default_rng(1), flip=(1, 7, 50, 50))
    after = load(tiny_root)
    fresh = load(tiny_root, cache=False)
    assert not after.cached
    np.testing.assert_array_equal(after.pixels, fresh.pixels)
    assert not np.array_equal(after.pixels, before.pixels)
    assert load(tiny_root).cached


def test_the_key_is_the_content_not_the_file_times(tiny_root):
    load(tiny_root)
    path = tiny_root / "omniglot" / "omniglot_background.npz"
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)  # a new file (new inode and time), the same bytes
    assert load(tiny_root).cached


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "drop the record", "garble the record",
                                    "another digest"])
def test_a_damaged_entry_is_rebuilt_not_trusted(tiny_root, tmp_path, damage):
    fresh = load(tiny_root, cache=False)
    load(tiny_root)
    npz = next((tmp_path / "cache").glob("omniglot-*.npz"))
    record = npz.with_suffix(".json")
    if damage == "flip a byte":
        data = bytearray(npz.read_bytes())
        data[len(data) - 200] ^= 0x40  # inside the pixel data: the archive still parses
        npz.write_bytes(bytes(data))
    elif damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:1000])
    elif damage == "drop the record":
        record.unlink()
    elif damage == "garble the record":
        record.write_text("{not json")
    else:
        content = json.loads(record.read_text())
        content["sha256"] = "0" * 64
        record.write_text(json.dumps(content))
    rebuilt = load(tiny_root)
    assert not rebuilt.cached
    np.testing.assert_array_equal(rebuilt.pixels, fresh.pixels)
    again = load(tiny_root)  # the entry was written again, intact
    assert again.cached
    np.testing.assert_array_equal(again.pixels, fresh.pixels)


def test_the_cache_can_be_turned_off_and_writes_only_its_folder(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, "off")
    assert cache.cache_dir() is None
    assert not load(tiny_root).cached and not load(tiny_root).cached
    assert not (tmp_path / "cache").exists()
    assert entries(tiny_root / "omniglot") == ["omniglot_background.npz", "omniglot_evaluation.npz"]


def test_an_unwritable_cache_still_returns_the_data(tiny_root, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv(cache.ENV_VAR, str(blocker / "cache"))  # below a file: cannot be created
    fresh = load(tiny_root, cache=False)
    np.testing.assert_array_equal(load(tiny_root).pixels, fresh.pixels)


def test_image_folders_are_cached_by_content(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    for split, names in (("train", "abc"), ("val", "de")):
        for name in names:
            (tmp_path / "pics" / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (4, 6), dtype=np.uint8)).save(tmp_path / "pics" / split / name /
                                                                                    f"{i}.png")
    fresh = folder_splits(tmp_path / "pics", cache=False)
    first = folder_splits(tmp_path / "pics")
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1
    second = folder_splits(tmp_path / "pics")
    for split in ("train", "val"):
        np.testing.assert_array_equal(first[split].pixels, fresh[split].pixels)
        np.testing.assert_array_equal(second[split].pixels, fresh[split].pixels)
    # a changed picture is a new entry with the new pixels
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "pics" / "val" / "e" / "1.png")
    changed = folder_splits(tmp_path / "pics")
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 2
    assert not changed["val"].class_images(1)[1].any()
