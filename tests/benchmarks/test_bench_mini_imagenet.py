"""mini-ImageNet readers on miniatures in the pickle-cache and the Ravi & Larochelle CSV layouts."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from PIL import Image

from linmaml.benchmarks.data import DatasetError, load_splits, mini_imagenet

CLASSES = {"train": ["n01532829", "n01558993", "n01704323", "n01749939"],
           "val": ["n01855672", "n02091244"], "test": ["n01930112", "n01981276", "n02099601"]}
PER_CLASS = 5


@pytest.fixture(autouse=True)
def small_spec(monkeypatch):
    monkeypatch.setattr(mini_imagenet, "SPEC", mini_imagenet.MiniImageNetSpec(
        classes=tuple((k, len(v)) for k, v in CLASSES.items()), images_per_class=PER_CLASS))


def write_pickles(folder, seed=0):
    """One pickle per split: image_data (N, 84, 84, 3) uint8, class_dict name -> row indices (shuffled)."""
    rng = np.random.default_rng(seed)
    truth = {}
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in CLASSES.items():
        n = len(names) * PER_CLASS
        data = rng.integers(0, 256, (n, 84, 84, 3), dtype=np.uint8)
        rows = rng.permutation(n)
        class_dict = {name: rows[i * PER_CLASS:(i + 1) * PER_CLASS].tolist() for i, name in enumerate(names)}
        with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as handle:
            pickle.dump({"image_data": data, "class_dict": class_dict}, handle, protocol=4)
        truth[split] = {name: data[idx] for name, idx in class_dict.items()}
    return truth


def test_pickle_cache(tmp_path):
    truth = write_pickles(tmp_path / "mini-imagenet")
    splits = load_splits("mini-imagenet", data_root=tmp_path)
    ids = {}
    for split, s in splits.items():
        assert list(s.class_names) == sorted(CLASSES[split])
        assert s.image_shape == (3, 84, 84) and s.examples_per_class == PER_CLASS
        for c, name in enumerate(s.class_names):
            expected = truth[split][name].transpose(0, 3, 1, 2).astype(np.float32) / 255
            assert np.abs(s.class_images(c) - expected).max() < 1e-7
        assert s.source_ids.tolist() == [int(n[1:]) for n in s.class_names]
        ids[split] = set(s.source_ids.tolist())
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    report = mini_imagenet.check_mini_imagenet(tmp_path)
    assert {k: v["classes"] for k, v in report["splits"].items()} == {"train": 4, "val": 2, "test": 3}


def test_pickle_problems_are_named(tmp_path):
    folder = tmp_path / "mini-imagenet"
    write_pickles(folder)
    path = folder / "mini-imagenet-cache-val.pkl"
    cache = pickle.loads(path.read_bytes())
    cache["class_dict"]["n01855672"] = cache["class_dict"]["n01855672"][:-1]
    path.write_bytes(pickle.dumps(cache))
    with pytest.raises(DatasetError, match=f"{path}: expected 5 images of every class, found 4 of 'n01855672'"):
        mini_imagenet.load_mini_imagenet("val", tmp_path)
    path.write_bytes(pickle.dumps({"image_data": cache["image_data"]}))
    with pytest.raises(DatasetError, match="lacks the entries class_dict"):
        mini_imagenet.load_mini_imagenet("val", tmp_path)
    path.write_bytes(b"\x80\x04truncated")
    with pytest.raises(DatasetError, match=f"{path}: not a readable pickle"):
        mini_imagenet.load_mini_imagenet("val", tmp_path)
    with pytest.raises(DatasetError, match="no test split"):
        (folder / "mini-imagenet-cache-test.pkl").unlink()
        mini_imagenet.load_mini_imagenet("test", tmp_path)


def write_ravi(folder, seed=1):
    """images/ + train.csv, val.csv, test.csv (filename,label); JPEG files, one not yet 84x84."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    files = {}
    for split, names in CLASSES.items():
        lines = ["filename,label"]
        for name in names:
            for e in range(PER_CLASS):
                filename = f"{name}{e + 1:08d}.jpg"
                size = (100, 90) if (name, e) == ("n01704323", 2) else (84, 84)
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / "images" / filename, quality=95)
                lines.append(f"{filename},{name}")
                files[filename] = name
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return files


def decoded(path):
    """Independent decoding: Pillow, RGB, LANCZOS to 84x84 when needed, CHW float in [0, 1]."""
    image = Image.open(path).convert("RGB")
    if image.size != (84, 84):
        image = image.resize((84, 84), Image.LANCZOS)
    return np.asarray(image).transpose(2, 0, 1).astype(np.float32) / 255


def test_ravi_csv_layout(tmp_path):
    folder = tmp_path / "mini-imagenet"
    write_ravi(folder)
    s = mini_imagenet.load_mini_imagenet("train", tmp_path)
    assert mini_imagenet.locate("train", tmp_path)[0] == "csv"
    assert list(s.class_names) == CLASSES["train"]
    for c, name in enumerate(s.class_names):
        got = s.class_images(c)
        for e in range(PER_CLASS):
            assert np.abs(got[e] - decoded(folder / "images" / f"{name}{e + 1:08d}.jpg")).max() < 1e-7


def test_ravi_problems_are_named(tmp_path):
    folder = tmp_path / "mini-imagenet"
    write_ravi(folder)
    # a class in two splits would leak
    with open(folder / "val.csv", "a") as handle:
        handle.write("n0153282900000001.jpg,n01532829\n")
    with pytest.raises(DatasetError, match="n01532829 is in both val.csv and train.csv"):
        mini_imagenet.load_mini_imagenet("val", tmp_path)
    (folder / "images" / "n0193011200000003.jpg").unlink()
    with pytest.raises(DatasetError, match="n0193011200000003.jpg: listed in the CSV but missing"):
        mini_imagenet.load_mini_imagenet("test", tmp_path)
    (folder / "train.csv").write_text("name,class\nx.jpg,n1\n")
    with pytest.raises(DatasetError, match="expected the header 'filename,label'"):
        mini_imagenet.load_mini_imagenet("train", tmp_path)


def test_missing_and_bad_split(tmp_path):
    with pytest.raises(DatasetError, match="mini-imagenet-cache-train.pkl"):
        load_splits("mini-imagenet", "train", data_root=tmp_path)
    with pytest.raises(ValueError, match="^split"):
        mini_imagenet.load_mini_imagenet("dev", tmp_path)
    with pytest.raises(TypeError, match="^size: not an option of mini-imagenet"):
        load_splits("mini-imagenet", "train", data_root=tmp_path, size=28)


# --------------------------------------------------------------------------------------------------
# No code runs from a pickle cache


class _Planted:
    """An object whose unpickling runs a shell command (the attack a crafted cache carries)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _plant(folder, marker, split="val"):
    path = folder / f"mini-imagenet-cache-{split}.pkl"
    cache = pickle.loads(path.read_bytes())
    cache["class_dict"] = {"payload": _Planted(marker), **cache["class_dict"]}
    path.write_bytes(pickle.dumps(cache, protocol=4))
    return path


def test_a_cache_that_would_run_code_is_refused_by_name(tmp_path):
    write_pickles(tmp_path / "mini-imagenet")
    marker = tmp_path / "marker"
    path = _plant(tmp_path / "mini-imagenet", marker)
    refusal = f"refused to load posix.system from {path}"
    with pytest.raises(DatasetError, match=refusal):
        mini_imagenet.load_mini_imagenet("val", tmp_path)
    with pytest.raises(DatasetError, match=refusal):
        mini_imagenet.check_mini_imagenet(tmp_path)
    assert not marker.exists()
    # the control: the same file read with plain pickle does run the command, so the test can fail
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_data_check_refuses_the_planted_cache_in_one_line(tmp_path, capsys):
    from linmaml.cli import main

    write_pickles(tmp_path / "mini-imagenet")
    marker = tmp_path / "marker"
    path = _plant(tmp_path / "mini-imagenet", marker, split="train")
    status = main(["data", "check", "mini-imagenet", "--data-root", str(tmp_path), "--json"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert f"refused to load posix.system from {path}" in err
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_loads_under_every_protocol(tmp_path, protocol):
    """Arrays (several dtypes, non-contiguous), numpy scalars, bytes, nested lists/tuples/dicts."""
    from linmaml.benchmarks.data._pickles import load_pickle

    rng = np.random.default_rng(protocol)
    data = {"u8": rng.integers(0, 256, (3, 4, 5), dtype=np.uint8), "f64": rng.standard_normal((4, 3)).T,
            "i64": np.arange(7, dtype=np.int64), "scalar": np.float32(1.5), "count": np.int64(3),
            b"raw": b"\x00\xffbytes", "nested": [1, 2.5, ("a", None, True), {"k": [np.uint16(9)]}]}
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    with open(path, "rb") as handle:
        loaded = load_pickle(handle, str(path))
    assert set(loaded) == set(data)
    for key in ("u8", "f64", "i64"):
        assert loaded[key].dtype == data[key].dtype and np.array_equal(loaded[key], data[key])
    assert loaded[b"raw"] == data[b"raw"] and loaded["nested"][2] == ("a", None, True)
    assert type(loaded["scalar"]) is np.float32 and loaded["scalar"] == 1.5
    assert loaded["nested"][3]["k"][0] == 9 and loaded["count"] == 3
