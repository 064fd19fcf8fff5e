"""Your own data (linmaml.benchmarks.data.own): arrays (.npz files, numpy arrays) and image folders as
few-shot splits, their checks (ArgumentError naming the argument; one line and exit 2 at the CLI),
training on them (non-square multi-channel images with the ConvNet, feature vectors with the MLP),
and the classes of unequal sizes that tasks draw from."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from linmaml.benchmarks import episodes
from linmaml.benchmarks.data import load_splits
from linmaml.benchmarks.data.own import array_splits, folder_splits
from linmaml.benchmarks.learners import build_learner
from linmaml.benchmarks.models import ConvNet
from linmaml.benchmarks.train import train
from linmaml.errors import ArgumentError

TINY = dict(ways=3, shots=1, query=2, test_query=2, meta_batch=2, iterations=2, val_every=2, val_tasks=2,
            checkpoint_every=2, layers=2, hidden=4)


def labelled(rng, classes, per, shape, labels=None):
    """``(x, y)``: ``per`` noisy copies of a random prototype per class (float32), labels ``labels``."""
    labels = list(range(classes)) if labels is None else labels
    protos = rng.random((classes,) + shape)
    x = np.concatenate([protos[c] + 0.1 * rng.standard_normal((per,) + shape) for c in range(classes)])
    return x.astype(np.float32), np.repeat(np.array(labels), per)


def test_npz_per_split_groups_examples_by_label_in_order(tmp_path):
    rng = np.random.default_rng(0)
    tx, ty = labelled(rng, 4, 5, (3, 10, 14))
    vx, vy = labelled(rng, 3, 5, (3, 10, 14))  # labels restart at 0: other classes than train's
    order = rng.permutation(len(tx))
    np.savez(tmp_path / "mine.npz", train_x=tx[order], train_y=ty[order], val_x=vx, val_y=vy)
    splits = array_splits(tmp_path / "mine.npz")
    train_split = splits["train"]
    assert train_split.name == "mine/train" and train_split.image_shape == (3, 10, 14)
    assert train_split.num_classes == 4 and train_split.examples_per_class == 5
    for c in range(4):  # class c holds exactly the examples labelled c, in the file's order
        expected = tx[order][ty[order] == c]
        np.testing.assert_array_equal(train_split.class_images(c), expected)
    assert set(splits["val"].source_ids).isdisjoint(train_split.source_ids)


def test_npz_with_class_lists_and_split_files_and_numpy_arrays_agree(tmp_path):
    rng = np.random.default_rng(1)
    x, y = labelled(rng, 6, 4, (7,), labels=["a", "b", "c", "d", "e", "f"])
    np.savez(tmp_path / "all.npz", x=x, y=y, train_classes=np.array(["d", "a", "f"]), val_classes=np.array(["b", "c"]))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("# train classes\nd\na\n\nf\n")
    (tmp_path / "lists" / "val.txt").write_text("b\nc\n")
    from_file = array_splits(tmp_path / "all.npz", splits=("train", "val"))
    from_lists = array_splits((x, y), split_dir=tmp_path / "lists", splits=("train", "val"), name="all")
    from_classes = array_splits((x, y), classes={"train": ["d", "a", "f"], "val": ["b", "c"]}, name="all",
                                splits=("train", "val"))
    for split in ("train", "val"):
        for other in (from_lists, from_classes):
            np.testing.assert_array_equal(from_file[split].pixels, other[split].pixels)
            assert from_file[split].class_names == other[split].class_names
    assert from_file["train"].class_names == ("d", "a", "f")
    np.testing.assert_array_equal(from_file["train"].class_images(1), x[y == "a"])


def test_classes_of_unequal_sizes_are_sampled_within_their_own_examples():
    rng = np.random.default_rng(2)
    sizes = [3, 7, 4, 5]
    x = np.concatenate([np.full((n, 2), 10 * c + np.arange(n)[:, None], np.float32) for c, n in enumerate(sizes)])
    y = np.repeat(np.arange(4), sizes)
    split = array_splits({"train": (x, y), "val": (x, y)}, splits=("train",))["train"]
    assert split.examples_per_class == 3 and list(split.counts) == sizes
    sampler = episodes.EpisodeSampler(split, ways=4, shots=1, query=2, seed=0)
    seen = {c: set() for c in range(4)}
    for i in range(200):
        task = sampler.task(i)
        for row, c in enumerate(task.classes):
            picks = np.concatenate([task.support_examples[row], task.query_examples[row]])
            assert len(set(picks)) == 3 and picks.max() < sizes[c]  # distinct, never the padding
            seen[c].update(picks.tolist())
            values = np.concatenate([task.x_support[row:row + 1], task.x_query[2 * row:2 * row + 2]])[:, 0]
            np.testing.assert_array_equal(values, 10 * c + picks)  # the examples themselves
    assert all(seen[c] == set(range(n)) for c, n in enumerate(sizes))  # every example is reachable
    del rng


def test_the_built_in_models_take_non_square_images_and_feature_vectors():
    torch.manual_seed(0)
    net = ConvNet(in_channels=3, ways=5, blocks=3, filters=4, image_size=(10, 14), pool="stride")
    x = torch.rand(2, 3, 10, 14)
    # stride-2 sides round up: 10 -> 5 -> 3 -> 2 and 14 -> 7 -> 4 -> 2
    assert net.features(x).shape == (2, 4 * 2 * 2) and net(x).shape == (2, 5)
    with pytest.raises(ArgumentError, match=r"^blocks: "):
        ConvNet(image_size=(4, 40), blocks=3, pool="max")
    learner = build_learner(image_shape=(7,), ways=3, layers=2, hidden=5)
    assert learner(torch.rand(4, 7)).shape == (4, 3)
    with pytest.raises(ArgumentError, match=r"^model: the built-in models take images"):
        build_learner(image_shape=(2, 3, 4, 5), ways=3)


@pytest.mark.parametrize("shape", [(3, 10, 14), (12,), (9, 6)])
def test_training_on_arrays_records_the_name_and_the_data(tmp_path, shape):
    rng = np.random.default_rng(3)
    tx, ty = labelled(rng, 5, 4, shape)
    vx, vy = labelled(rng, 4, 4, shape)
    np.savez(tmp_path / "feats.npz", train_x=tx, train_y=ty, val_x=vx, val_y=vy)
    result = train({**TINY, "benchmark": "arrays", "data": str(tmp_path / "feats.npz")}, tmp_path / "run",
                   progress=False, device="cpu", threads=1)
    assert result.status == "done", result.message
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["data_name"] == "feats" and config["config"]["data"] == str(tmp_path / "feats.npz")
    expected = list(shape) if len(shape) != 2 else [1, *shape]  # (H, W) images get a channel axis
    assert config["image_shape"] == expected and config["data_root"] is None
    # resumed from another run's record: the same data, read again from config.json
    more = train({"iterations": 3}, tmp_path / "run", resume=True, progress=False, device="cpu", threads=1)
    assert more.status == "done" and more.iteration == 3


def write_images(folder, pixels):
    """PNG files ``0.png, 1.png …`` of uint8 ``(n, H, W)`` (grey) or ``(n, H, W, 3)`` (RGB) pixels."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i}.png")


def image_tree(root, layout, rng, shape=(6, 9, 3), sizes=None):
    """A folder tree of RGB pictures; returns ``{(split, class): uint8 (n, H, W, C)}``."""
    written = {}
    classes = {"train": ["cat", "dog", "emu", "fox"], "val": ["gnu", "hen", "ibis"]}
    for split, names in classes.items():
        for k, name in enumerate(names):
            n = 4 if sizes is None else sizes[k]
            pixels = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
            folder = root / split / name if layout == "splits" else root / name
            write_images(folder, pixels)
            written[(split, name)] = pixels
        if layout == "files":
            (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return written


@pytest.mark.parametrize("layout", ["splits", "files"])
def test_image_folders_in_both_layouts_hold_the_pixels_written(tmp_path, layout):
    rng = np.random.default_rng(4)
    written = image_tree(tmp_path / "pets", layout, rng, sizes=[4, 5, 4, 6])
    splits = folder_splits(tmp_path / "pets", splits=("train", "val"))
    assert splits["train"].name == "pets/train" and splits["train"].image_shape == (3, 6, 9)
    for split, s in splits.items():
        for c, name in enumerate(s.class_names):
            expected = np.moveaxis(written[(split, name)], -1, 1).astype(np.float32) / 255
            np.testing.assert_allclose(s.class_images(c), expected, rtol=0, atol=1e-7)
    result = train({**TINY, "benchmark": "folder", "data": str(tmp_path / "pets"), "data_name": "my-pets"},
                   tmp_path / "run", progress=False, device="cpu", threads=1)
    assert result.status == "done"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["data_name"] == "my-pets"


def test_grey_pictures_are_one_channel(tmp_path):
    rng = np.random.default_rng(5)
    for split, names in (("train", "abc"), ("val", "de")):
        for name in names:
            write_images(tmp_path / split / name, rng.integers(0, 256, (3, 5, 8), dtype=np.uint8))
    assert folder_splits(tmp_path, splits=("train", "val"))["train"].image_shape == (1, 5, 8)


@pytest.mark.parametrize("case, argument, pattern", [
    ("other size", "data", r"7x6 pixels with 3 channels, but .* has 9x6 pixels with 3 channels"),
    ("empty class", "data", r"an empty class"),
    ("unknown class", "data_splits", r"train.txt names 1 classes without a folder"),
    ("class twice", "data_splits", r"class 'cat' is listed in val.txt and train.txt|class 'cat' is listed"),
    ("no split", "data_splits", r"neither train/ and val/ folders nor split files"),
])
def test_bad_image_folders_are_refused_naming_the_argument(tmp_path, case, argument, pattern):
    rng = np.random.default_rng(6)
    root = tmp_path / "pets"
    image_tree(root, "splits" if case in ("other size", "empty class") else "files", rng)
    if case == "other size":
        write_images(root / "val" / "hen", rng.integers(0, 256, (1, 6, 7, 3), dtype=np.uint8))
    elif case == "empty class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    elif case == "unknown class":
        (root / "train.txt").write_text("cat\nyak\n")
    elif case == "class twice":
        (root / "val.txt").write_text("gnu\ncat\n")
    elif case == "no split":
        (root / "train.txt").unlink()
        (root / "val.txt").unlink()
    with pytest.raises(ArgumentError, match=pattern) as caught:
        folder_splits(root, splits=("train", "val"), cache=False)
    assert caught.value.argument == argument and "\n" not in str(caught.value)


@pytest.mark.parametrize("arrays, pattern", [
    ({"train_x": np.zeros((4, 3)), "train_y": np.zeros(5), "val_x": np.zeros((4, 3)), "val_y": np.zeros(4)},
     r"^data: mine/train: expected 4 labels"),
    ({"train_x": np.zeros((4, 3)), "train_y": np.zeros(4), "val_x": np.zeros((4, 2)), "val_y": np.zeros(4)},
     r"^data: the val examples of mine have shape \(2,\), the train ones \(3,\)"),
    ({"train_x": np.zeros((4, 3)), "train_y": np.zeros(4)}, r"^data: the data of mine has no val split"),
    ({"x": np.zeros((4, 3)), "y": np.zeros(4)}, r"^data_splits: the examples of mine are not split"),
    ({"train_x": np.full((4, 3), np.nan), "train_y": np.zeros(4), "val_x": np.zeros((4, 3)), "val_y": np.zeros(4)},
     r"^data: mine/train: holds NaN"),
    ({"images": np.zeros((4, 3))}, r"^data: .*expected arrays train_x, train_y, val_x, val_y"),
])
def test_bad_arrays_are_refused_naming_the_argument(tmp_path, arrays, pattern):
    np.savez(tmp_path / "mine.npz", **arrays)
    with pytest.raises(ArgumentError, match=pattern):
        load_splits("arrays", ("train", "val"), data=tmp_path / "mine.npz")


def test_too_few_classes_or_examples_are_named_and_the_cli_says_one_line(tmp_path):
    rng = np.random.default_rng(7)
    tx, ty = labelled(rng, 4, 3, (5,))
    np.savez(tmp_path / "small.npz", train_x=tx, train_y=ty, val_x=tx, val_y=ty)
    base = {**TINY, "benchmark": "arrays", "data": str(tmp_path / "small.npz")}
    with pytest.raises(ArgumentError, match=r"^ways: expected at most 4 \(the classes of small/train\)"):
        train({**base, "ways": 5}, tmp_path / "a", progress=False, device="cpu")
    with pytest.raises(ArgumentError, match=r"^query: expected at most 2 \(each class of small/train holds 3"):
        train({**base, "query": 3}, tmp_path / "b", progress=False, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    for flags, expected in ((["--ways", "5"], "linmaml train: error: --ways: expected at most 4"),
                            (["--data", str(tmp_path / "none.npz")], "linmaml train: error: --data: "),
                            (["--data-name", "a b"], "linmaml train: error: --data-name: expected 1-64 letters")):
        done = subprocess.run([sys.executable, "-m", "linmaml", "train", "--benchmark", "arrays", "--data",
                               str(tmp_path / "small.npz"), "--out", str(tmp_path / "cli"), "--iterations", "1",
                               "--quiet", *flags], capture_output=True, text=True, timeout=600)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(expected) and done.stderr.count("\n") == 1, done.stderr


def test_arrays_in_memory_train_under_their_own_name(tmp_path):
    rng = np.random.default_rng(8)
    splits = array_splits({"train": labelled(rng, 5, 4, (2, 6, 5)), "val": labelled(rng, 4, 4, (2, 6, 5))},
                          name="in-memory")
    result = train({**TINY, "benchmark": "arrays"}, tmp_path / "run", splits=splits, progress=False, device="cpu",
                   threads=1)
    assert result.status == "done"
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (config["benchmark"], config["data_name"], config["data"]) == ("arrays", "in-memory", None)
    # without the splits there is nothing to read: the error names data
    with pytest.raises(ArgumentError, match=r"^data: benchmark 'arrays' reads your own data"):
        train({"iterations": 3}, tmp_path / "run", resume=True, progress=False, device="cpu", threads=1)
