"""Omniglot readers on small fixtures written in the official folder, zip and npz layouts."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from linmaml.benchmarks.data import DatasetError, Omniglot, omniglot

# (alphabet, character folder number, char_id): deliberately not in char_id order
FIXTURE_CHARS = [("Greek", 2, 3), ("Greek", 1, 2), ("Armenian", 1, 1), ("Armenian", 10, 4)]


def fixture_images(seed=0):
    """Random 'drawings': bool (chars, 20, 105, 105), True = background, ~8% ink."""
    rng = np.random.default_rng(seed)
    return rng.random((len(FIXTURE_CHARS), 20, 105, 105)) > 0.08


def write_tree(root, images, set_name="background", mode="1"):
    folder = root / f"images_{set_name}"
    for (alphabet, number, char_id), drawings in zip(FIXTURE_CHARS, images):
        char_dir = folder / alphabet / f"character{number:02d}"
        char_dir.mkdir(parents=True)
        for d, image in enumerate(drawings):
            picture = Image.fromarray(image)  # mode "1", like the official PNGs
            if mode == "L":
                picture = picture.convert("L")
            picture.save(char_dir / f"{char_id:04d}_{d + 1:02d}.png")
    return folder


def zip_tree(folder, target):
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, path.relative_to(folder.parent).as_posix())
    return target


def expected_order():
    """Storage order: sorted by (alphabet, character folder name)."""
    return sorted(range(len(FIXTURE_CHARS)), key=lambda i: (FIXTURE_CHARS[i][0], f"character{FIXTURE_CHARS[i][1]:02d}"))


def check_matches(omniset, images):
    order = expected_order()
    assert omniset.char_id.tolist() == [FIXTURE_CHARS[i][2] for i in order]
    assert omniset.alphabet_names == ("Armenian", "Greek")
    assert omniset.char_folder.tolist() == [FIXTURE_CHARS[i][1] for i in order]
    assert np.array_equal(omniset.images, images[order])


@pytest.mark.parametrize("mode", ["1", "L"])
def test_folder_layout(tmp_path, mode):
    images = fixture_images()
    folder = write_tree(tmp_path, images, mode=mode)
    check_matches(omniglot.read_set("folder", folder, "background", verify=False), images)


def test_zip_layout_and_md5(tmp_path, monkeypatch):
    images = fixture_images(1)
    target = zip_tree(write_tree(tmp_path / "tree", images), tmp_path / "images_background.zip")
    check_matches(omniglot.read_set("zip", target, "background", verify=False), images)
    # against the official md5 the fixture is "altered": named, with the expected checksum
    with pytest.raises(DatasetError) as info:
        omniglot.read_set("zip", target, "background")
    assert str(target) in str(info.value) and "68d2efa1b9178cc56df9314c21c6e718" in str(info.value)
    # with the fixture's own md5 and counts, verification passes and records the digest
    md5 = hashlib.md5(target.read_bytes()).hexdigest()
    spec = dataclasses.replace(omniglot.SETS["background"], alphabets=2, characters=4, zip_md5=md5)
    monkeypatch.setitem(omniglot.SETS, "background", spec)
    assert omniglot.read_set("zip", target, "background").checksum == ("md5", md5)


def test_incomplete_folder_names_what_is_missing(tmp_path):
    folder = write_tree(tmp_path, fixture_images())
    (folder / "Greek" / "character01" / "0002_07.png").unlink()
    with pytest.raises(DatasetError) as info:
        omniglot.read_set("folder", folder, "background", verify=False)
    message = str(info.value)
    assert "Greek/character01" in message and "missing 07" in message and "\n" not in message


def test_counts_are_verified(tmp_path):
    folder = write_tree(tmp_path, fixture_images())
    with pytest.raises(DatasetError, match="expected 964 characters"):
        omniglot.read_set("folder", folder, "background", verify=True)


def test_unreadable_png_is_named(tmp_path):
    folder = write_tree(tmp_path, fixture_images())
    broken = folder / "Armenian" / "character10" / "0004_20.png"
    broken.write_bytes(broken.read_bytes()[:30])
    with pytest.raises(DatasetError, match="0004_20.png"):
        omniglot.read_set("folder", folder, "background", verify=False)


def test_wrong_image_size_is_named(tmp_path):
    folder = write_tree(tmp_path, fixture_images())
    Image.new("1", (50, 50), 1).save(folder / "Greek" / "character02" / "0003_05.png")
    with pytest.raises(DatasetError, match=r"0003_05.png: expected 105x105"):
        omniglot.read_set("folder", folder, "background", verify=False)


def write_npz(path, images, char_ids, alphabets, char_alphabet, char_folder):
    np.savez_compressed(path, images=images, char_id=np.asarray(char_ids, np.int16),
                        alphabet_names=np.asarray(alphabets), char_alphabet=np.asarray(char_alphabet, np.int16),
                        char_folder=np.asarray(char_folder, np.int16), drawer=np.arange(1, 21, dtype=np.int8))


@pytest.fixture
def small_omniglot(tmp_path, monkeypatch):
    """A complete miniature Omniglot: background as a folder tree, evaluation as a zip."""
    root = tmp_path / "root"
    background = fixture_images(2)
    write_tree(root / "omniglot", background, "background")
    evaluation = fixture_images(3)[:2]
    eval_tree = tmp_path / "eval"
    for i, (alphabet, number, char_id) in enumerate([("Angelic", 1, 5), ("Angelic", 2, 6)]):
        char_dir = eval_tree / "images_evaluation" / alphabet / f"character{number:02d}"
        char_dir.mkdir(parents=True)
        for d in range(20):
            Image.fromarray(evaluation[i, d]).save(char_dir / f"{char_id:04d}_{d + 1:02d}.png")
    zip_path = zip_tree(eval_tree / "images_evaluation", root / "omniglot" / "images_evaluation.zip")
    monkeypatch.setitem(omniglot.SETS, "background", dataclasses.replace(
        omniglot.SETS["background"], alphabets=2, characters=4, first_char_id=1))
    monkeypatch.setitem(omniglot.SETS, "evaluation", dataclasses.replace(
        omniglot.SETS["evaluation"], alphabets=1, characters=2, first_char_id=5,
        zip_md5=hashlib.md5(zip_path.read_bytes()).hexdigest()))
    return root, background, evaluation


def test_full_pipeline_on_mixed_formats(small_omniglot):
    root, background, evaluation = small_omniglot
    found = omniglot.locate(root)
    assert {k: v[0] for k, v in found.items()} == {"background": "folder", "evaluation": "zip"}
    data = Omniglot.load(root, size=28)
    assert data.char_id.tolist() == [1, 2, 3, 4, 5, 6]
    # char 5 is evaluation drawing set 0; its image 4 resized by Pillow BOX
    ink = np.logical_not(evaluation[0, 4]).astype(np.float32)
    expected = np.asarray(Image.fromarray(ink, mode="F").resize((28, 28), Image.BOX))
    assert np.abs(data.pixels[4, 4, 0] - expected).max() <= 1e-6
    table = {"train": np.array([1, 2, 5]), "val": np.array([3]), "test": np.array([4, 6])}
    train = data.split("train", table=table)
    assert train.num_classes == 12 and set(train.source_ids.tolist()) == {1, 2, 5}
    with pytest.raises(DatasetError, match="absent from the data"):
        data.split("train")  # the shipped table names characters this miniature lacks


def test_npz_layout(tmp_path, monkeypatch):
    images = fixture_images(4)
    order = expected_order()
    path = tmp_path / "omniglot_background.npz"
    write_npz(path, images[order], [FIXTURE_CHARS[i][2] for i in order], ["Armenian", "Greek"],
              [0 if FIXTURE_CHARS[i][0] == "Armenian" else 1 for i in order], [FIXTURE_CHARS[i][1] for i in order])
    check_matches(omniglot.read_set("npz", path, "background", verify=False), images)
    with pytest.raises(DatasetError, match="251acf82f14614e799c0ee9c2893478d2692ce58bd4ba8e5f4b8416f4ea6ee7b"):
        omniglot.read_set("npz", path, "background")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(omniglot.SETS, "background", dataclasses.replace(
        omniglot.SETS["background"], alphabets=2, characters=4, npz_sha256=sha, npz_size=path.stat().st_size))
    assert omniglot.read_set("npz", path, "background").checksum == ("sha256", sha)
    # a truncated copy: verify names the file and the expected checksum; without verify it is unreadable
    short = tmp_path / "short" / "omniglot_background.npz"
    short.parent.mkdir()
    short.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=f"{short}.*{sha}"):
        omniglot.read_set("npz", short, "background")
    with pytest.raises(DatasetError, match=str(short)):
        omniglot.read_set("npz", short, "background", verify=False)


def test_npz_with_wrong_arrays(tmp_path):
    path = tmp_path / "omniglot_background.npz"
    np.savez(path, images=np.zeros((2, 20, 105, 105), np.uint8))
    with pytest.raises(DatasetError, match="lacks the arrays char_id"):
        omniglot.read_set("npz", path, "background", verify=False)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as info:
        omniglot.locate(tmp_path)
    message = str(info.value)
    assert "background set" in message and "evaluation set" in message
    assert "linmaml data download omniglot" in message and "\n" not in message
    # one set present, the other missing: only the missing one is named
    shutil.copytree(write_tree(tmp_path / "x", fixture_images()), tmp_path / "omniglot" / "images_background")
    with pytest.raises(DatasetError) as info:
        omniglot.locate(tmp_path)
    assert "evaluation set" in str(info.value) and "background set" not in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="^name"):
        omniglot.read_set("npz", "x.npz", "training")
    with pytest.raises(ValueError, match="^fmt"):
        omniglot.read_set("tar", "x.npz", "background")
