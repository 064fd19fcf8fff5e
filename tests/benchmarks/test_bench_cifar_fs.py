"""CIFAR-FS reader on a miniature CIFAR-100 written in the exact ``cifar-100-python`` format."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from linmaml.benchmarks.data import DatasetError, cifar_fs, load_splits

TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 1


def shipped(split):
    return (cifar_fs.SPLIT_DIR / f"cifar_fs_{split}.txt").read_text().split()


def make_cifar(seed=0):
    """Python-2-style pickles (bytes keys) as the archive holds them, plus the HWC images they encode."""
    rng = np.random.default_rng(seed)
    names = sorted(shipped("train") + shipped("val") + shipped("test"))
    assert len(names) == 100
    files, images = {}, {}
    for part, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        hwc = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        # one row per image: all red values (row-major 32x32), then green, then blue
        rows = np.concatenate([hwc[..., 0].reshape(len(labels), -1), hwc[..., 1].reshape(len(labels), -1),
                               hwc[..., 2].reshape(len(labels), -1)], axis=1)
        files[part] = pickle.dumps({b"batch_label": f"{part} batch".encode(), b"data": rows,
                                    b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(),
                                    b"filenames": [f"img{i}.png".encode() for i in range(len(labels))]}, protocol=2)
        images[part] = (hwc, labels)
    files["meta"] = pickle.dumps({b"fine_label_names": [n.encode() for n in names],
                                  b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}, protocol=2)
    return files, images, names


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    files, images, names = make_cifar()
    folder = tmp_path / "cifar-fs" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    md5 = tuple((name, hashlib.md5(files[name]).hexdigest()) for name in ("train", "test", "meta"))
    small = dataclasses.replace(cifar_fs.SPEC, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS)
    monkeypatch.setattr(cifar_fs, "SPEC", small)
    return tmp_path, files, images, names, md5


def expected_class_images(images, names, name):
    label = names.index(name)
    out = []
    for part in ("train", "test"):
        hwc, labels = images[part]
        out.extend(hwc[labels == label])
    return np.stack(out).transpose(0, 3, 1, 2).astype(np.float32) / 255  # CHW, in [0, 1]


def test_reads_splits_exactly(cifar_root):
    root, _, images, names, _ = cifar_root
    splits = load_splits("cifar-fs", data_root=root, verify=False)
    seen = set()
    for split, count in (("train", 64), ("val", 16), ("test", 20)):
        s = splits[split]
        assert s.num_classes == count and s.examples_per_class == 6 and s.image_shape == (3, 32, 32)
        assert list(s.class_names) == shipped(split)
        assert [names[i] for i in s.source_ids] == list(s.class_names)
        for c in (0, count - 1):
            assert np.abs(s.class_images(c) - expected_class_images(images, names, s.class_names[c])).max() < 1e-7
        assert not seen & set(s.class_names)
        seen |= set(s.class_names)
    assert len(seen) == 100


def test_tarball_equals_folder(cifar_root, tmp_path):
    root, files, _, _, _ = cifar_root
    tar_root = tmp_path / "tar"
    (tar_root / "cifar-fs").mkdir(parents=True)
    with tarfile.open(tar_root / "cifar-fs" / "cifar-100-python.tar.gz", "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert cifar_fs.locate(tar_root)[0] == "tarball"
    a = cifar_fs.CifarFS.load(root, verify=False)
    b = cifar_fs.CifarFS.load(tar_root, verify=False)
    assert np.array_equal(a.pixels, b.pixels) and a.label_names == b.label_names
    with pytest.raises(DatasetError, match="eb9058c3a382ffc7106e4002c42a8d85"):
        cifar_fs.CifarFS.load(tar_root, verify=True)


def test_checksums(cifar_root, monkeypatch):
    root, _, _, _, md5 = cifar_root
    with pytest.raises(DatasetError) as info:
        cifar_fs.CifarFS.load(root)  # the published md5 of the real files
    assert "cifar-100-python/train" in str(info.value) and "16019d7e3df5f24257cddd939b257f8d" in str(info.value)
    monkeypatch.setattr(cifar_fs, "SPEC", dataclasses.replace(cifar_fs.SPEC, file_md5=md5))
    report = cifar_fs.check_cifar_fs(root)
    assert report["images"] == 600 and report["classes"] == 100
    assert {k: v["classes"] for k, v in report["splits"].items()} == {"train": 64, "val": 16, "test": 20}
    assert report["checksums"]["meta"]["digest"] == dict(md5)["meta"]
    # one altered byte in the training pickle
    train = root / "cifar-fs" / "cifar-100-python" / "train"
    data = bytearray(train.read_bytes())
    data[-100] ^= 1
    train.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=f"{train}: md5 .* expected {dict(md5)['train']}"):
        cifar_fs.CifarFS.load(root)


def test_incomplete_and_truncated(cifar_root):
    root, files, _, _, _ = cifar_root
    folder = root / "cifar-fs" / "cifar-100-python"
    batch = pickle.loads(files["test"])
    batch[b"data"], batch[b"fine_labels"] = batch[b"data"][1:], batch[b"fine_labels"][1:]
    (folder / "test").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match="expected 1 images of every class"):
        cifar_fs.CifarFS.load(root, verify=False)
    (folder / "test").write_bytes(files["test"][:500])
    with pytest.raises(DatasetError, match=r"cifar-100-python/test: not a readable pickle"):
        cifar_fs.CifarFS.load(root, verify=False)
    (folder / "test").write_bytes(files["test"])
    (folder / "meta").unlink()
    with pytest.raises(DatasetError, match="meta is missing"):
        cifar_fs.CifarFS.load(root, verify=False)


def test_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="cifar-100-python.tar.gz from https://www.cs.toronto.edu"):
        cifar_fs.load_cifar_fs("train", tmp_path)
    with pytest.raises(ValueError, match="^split"):
        cifar_fs.load_cifar_fs("training", tmp_path)


def test_shipped_lists_equal_the_published_ones(data_root):
    published = data_root / "cifar-fs"
    if not published.is_dir():
        pytest.skip("no cifar-fs lists beside the data")
    for split in ("train", "val", "test"):
        assert (cifar_fs.SPLIT_DIR / f"cifar_fs_{split}.txt").read_bytes() == (published / f"{split}.txt").read_bytes()
    assert [len(shipped(s)) for s in ("train", "val", "test")] == [64, 16, 20]
