"""The red team's file attacks: a run folder is never lost or corrupted, and no file the
toolkit reads can hang it, crash the interpreter or cost more than a small multiple of its size.

Each test builds the hostile file itself (a crafted checkpoint re-digested so that its sha256 is
valid, a pickle of a 2,000,000-deep tuple, a FIFO, a sparse giant) and checks the contract: one line
naming the file (exit status 2 at the command line, a ``ValueError``/``OSError`` in Python), and
every file of the folder byte for byte as it was. The data is synthetic (put in place of
``load_splits``), so the runs take milliseconds.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from linmaml.benchmarks.data.fewshot import noise_splits
from linmaml import _io
from linmaml.benchmarks import checkpoint, run_folder
from linmaml.benchmarks.data import DatasetError
from linmaml.benchmarks.progress import Progress
from linmaml.benchmarks.train import train
from linmaml.cli import main

CLASSES, EXAMPLES = 6, 20
SETTINGS = dict(ways=3, shots=1, query=2, test_query=2, layers=1, hidden=2, meta_batch=1, iterations=6,
                val_every=3, val_tasks=2, checkpoint_every=1)
FLAGS = ["--threads", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("fake_data")  # pure-noise Omniglot (conftest.py)


def synthetic_splits(names=("train", "val", "test")) -> dict:
    return noise_splits(names, classes=CLASSES, examples=EXAMPLES)


@pytest.fixture
def finished(tmp_path) -> Path:
    out = tmp_path / "run"
    result = train(SETTINGS, out, splits=synthetic_splits(("train", "val")), progress=False)
    assert result.status == "done"
    return out


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
            if p.name != checkpoint.LOCK}


def one_line_error(capsys, argv) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.strip(), err
    return status, err


def signed(archive: bytes) -> bytes:
    """A torch.save archive with linmaml's sha256 record, computed here (the red team's re-digesting)."""
    body = archive[:-2] + checkpoint.RECORD_SIZE.to_bytes(2, "little")
    return body + checkpoint.RECORD_PREFIX + hashlib.sha256(body).hexdigest().encode()


def torch_archive(pickled: bytes | None = None, compression=zipfile.ZIP_STORED, payload=None) -> bytes:
    """A torch.save archive of ``payload`` whose data.pkl is replaced by ``pickled`` (if given), its
    members written with ``compression``."""
    buffer = io.BytesIO()
    torch.save({"a": 1} if payload is None else payload, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as archive:
        for info in source.infolist():
            data = source.read(info.filename)
            archive.writestr(info.filename, pickled if pickled is not None and info.filename.endswith("data.pkl")
                             else data)
    return out.getvalue()


#: A pickle of a tuple nested 2,000,000 deep used as a dict key: unpickling it hashes the key, and
#: CPython's tuple hash recurses without a limit (SIGSEGV before the fix).
DEEP_KEY = b"\x80\x02}" + b"N" + b"\x85" * 2_000_000 + b"Ns."


def never_hangs(call, *args):
    """Run ``call(*args)`` in a thread; return ``(value, error)`` (a hang fails the test, not the suite)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call(*args)
        except BaseException as error:  # noqa: BLE001
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(120)  # a bound on a hang, not a timing: the calls below return in milliseconds
    assert not thread.is_alive(), f"{call.__name__} blocked"
    return outcome.get("value"), outcome.get("error")


# -- the run folder: never lost, never written by a process that lost it -------------------------------------


def test_resume_without_a_checkpoint_refuses_and_changes_nothing(finished, capsys):
    for name in (checkpoint.LAST, checkpoint.LAST_PREV):
        (finished / name).unlink(missing_ok=True)
    before = snapshot(finished)
    assert len((finished / "metrics.jsonl").read_text().splitlines()) == 6
    status, err = one_line_error(capsys, ["train", "--out", str(finished), "--resume", "--hidden", "3"] + FLAGS)
    assert status == 2 and "--resume" in err and str(finished) in err and "no checkpoint" in err
    assert snapshot(finished) == before  # before the fix: metrics 6 -> 3 lines, config and best.pt replaced


def test_resume_of_an_empty_folder_refuses_and_leaves_no_folder(tmp_path, capsys):
    status, err = one_line_error(capsys, ["train", "--out", str(tmp_path / "new"), "--resume"] + FLAGS)
    assert status == 2 and "--resume" in err
    assert not (tmp_path / "new").exists()


def test_a_foreign_config_json_is_not_called_a_run_and_is_kept(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"learning_rate": 3}\n')
    status, err = one_line_error(capsys, ["train", "--out", str(out), "--iterations", "1"] + FLAGS)
    assert status == 2 and "did not write" in err and "holds a run" not in err
    assert (out / "config.json").read_text() == '{"learning_rate": 3}\n'


def test_after_overwrite_takes_the_folder_the_old_run_writes_nothing(tmp_path, monkeypatch):
    """Another run takes the folder (--overwrite) while this one validates iteration 6: before the fix
    the old run still wrote its metrics line (and best.pt when the score improved) into the new run."""
    out = tmp_path / "run"
    taken = {}
    original = Progress.validation

    def take_over(self, iteration, done, total, seconds):
        if iteration == 6 and not taken:
            taken["lock"] = checkpoint.RunLock(out).acquire(overwrite=True)
            taken["files"] = snapshot(out)
        return original(self, iteration, done, total, seconds)

    monkeypatch.setattr(Progress, "validation", take_over)
    result = train(SETTINGS, out, splits=synthetic_splits(("train", "val")), progress=False)
    assert result.status == "lost-lock" and result.exit_code == 4
    assert snapshot(out) == taken["files"]
    assert taken["lock"].still_owned()  # the old run did not remove the new owner's lock either
    taken["lock"].release()


def _crafted(payload: dict, change) -> dict:
    payload = dict(payload)
    change(payload)
    return payload


CRAFTED = {
    "negative iteration": lambda p: p.update(iteration=-5),
    "iteration not a number": lambda p: p.update(iteration="5"),
    "weights of another shape": lambda p: p.update(learner={k: torch.zeros(2, *v.shape) for k, v in p["learner"].items()}),
    "a weight missing": lambda p: p.update(learner=dict(list(p["learner"].items())[1:])),
    "weights not a dict": lambda p: p.update(learner=[1, 2]),
    "Adam state of another shape": lambda p: p.update(optimizer={**p["optimizer"], "state": {
        k: {**v, "exp_avg": torch.zeros(7)} for k, v in p["optimizer"]["state"].items()}}),
    "Adam groups garbage": lambda p: p.update(optimizer={"state": {}, "param_groups": [{"params": "x"}]}),
    "settings unusable": lambda p: p.update(config={**p["config"], "ways": -1}),
    "more skipped steps than iterations": lambda p: p.update(skipped=10 ** 9),
    "best record garbage": lambda p: p.update(best="x"),
    "weights not finite": lambda p: p.update(learner={k: v * float("nan") for k, v in p["learner"].items()}),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_last_pt_with_a_valid_digest_is_refused_naming_it_before_any_file_is_touched(finished, capsys,
                                                                                                name):
    payload = checkpoint.load(finished / checkpoint.LAST)
    checkpoint.save(finished / checkpoint.LAST, _crafted(payload, CRAFTED[name]))
    (finished / checkpoint.LAST_PREV).unlink()
    before = snapshot(finished)
    status, err = one_line_error(capsys, ["train", "--out", str(finished), "--resume", "--iterations", "8"] + FLAGS)
    assert status == 2 and str(finished / checkpoint.LAST) in err, err
    assert snapshot(finished) == before  # metrics.jsonl was emptied before the fix (iteration -5)


def test_a_crafted_last_pt_falls_back_to_the_valid_previous_one(finished):
    payload = checkpoint.load(finished / checkpoint.LAST)
    checkpoint.save(finished / checkpoint.LAST, {**payload, "iteration": -5})
    messages = []
    found = checkpoint.load_latest(finished, report=messages.append)
    assert found["iteration"] == 5 and any("last.pt" in m and "-5" in m for m in messages)


def test_an_odd_metrics_line_is_named_by_file_and_line(finished, capsys):
    path = finished / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = '{"iteration": "two", "loss": 1.0}'
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(finished)
    status, err = one_line_error(capsys, ["train", "--out", str(finished), "--resume", "--iterations", "8"] + FLAGS)
    assert status == 2 and f"{path} line 2" in err
    assert snapshot(finished) == before


def test_a_torn_last_metrics_line_is_still_dropped(finished):
    path = finished / "metrics.jsonl"
    path.write_text(path.read_text() + '{"iteration": 7, "lo')
    run_folder.trim_metrics(path, 6)
    assert [int(line.split(",")[0].split(":")[1]) for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


# -- checkpoints that would crash, hang or exhaust memory ------------------------------------------------------


def test_a_deep_pickle_in_a_checkpoint_with_a_valid_digest_is_refused(tmp_path, capsys):
    path = tmp_path / "best.pt"
    path.write_bytes(signed(torch_archive(DEEP_KEY)))
    status, err = one_line_error(capsys, ["evaluate", str(path), "--tasks", "2", "--quiet"])
    assert status == 2 and str(path) in err and "levels deep" in err


def test_a_deflated_checkpoint_is_refused_before_it_is_inflated(tmp_path):
    # 64 MB of zeros deflate to about 64 kB: torch's reader would inflate all of it
    path = tmp_path / "best.pt"
    path.write_bytes(signed(torch_archive(compression=zipfile.ZIP_DEFLATED, payload={"w": torch.zeros(1 << 24)})))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(checkpoint.CorruptCheckpoint, match=f"{path}.*compressed"):
        checkpoint.load(path)


def test_a_zero_stride_tensor_larger_than_its_file_is_refused(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(signed(torch_archive(payload={"w": torch.zeros(1).expand(10 ** 8)})))
    with pytest.raises(checkpoint.CorruptCheckpoint, match=f"{path}.*100,000,000 elements"):
        checkpoint.load(path)


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "device", "sparse giant"])
def test_a_checkpoint_that_is_not_a_plain_file_of_sane_size_is_refused_at_once(tmp_path, capsys, kind):
    run = tmp_path / "run"
    run.mkdir()
    best = run / checkpoint.BEST
    if kind == "fifo":
        os.mkfifo(best)
    elif kind == "link to a fifo":
        os.mkfifo(tmp_path / "pipe")
        best.symlink_to(tmp_path / "pipe")
    elif kind == "device":
        best.symlink_to("/dev/zero")
    else:
        with open(best, "wb") as handle:
            handle.truncate(checkpoint.MAX_BYTES + 1)  # sparse: no disk used
    _, error = never_hangs(checkpoint.load, best)
    assert isinstance(error, OSError) and str(best) in str(error)
    for command in (["evaluate", str(run), "--tasks", "2", "--quiet"], ["analyze", str(run), "--tasks", "2"]):
        (status, err), error = never_hangs(one_line_error, capsys, command)
        assert error is None and status == 2 and str(best) in err, err


def test_a_fifo_config_is_refused(tmp_path, capsys):
    os.mkfifo(tmp_path / "settings.json")
    (status, err), error = never_hangs(one_line_error, capsys, ["train", "--out", str(tmp_path / "r"), "--config",
                                                                str(tmp_path / "settings.json")] + FLAGS)
    assert error is None and status == 2 and "settings.json" in err and "regular file" in err
    assert not (tmp_path / "r").exists()


def test_deep_json_config_is_one_line(tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    status, err = one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--config",
                                          str(tmp_path / "deep.json")] + FLAGS)
    assert status == 2 and "--config" in err and "deep" in err


# -- data files ---------------------------------------------------------------------------------------------


def _mini_imagenet_cache(tmp_path, data: bytes) -> Path:
    folder = tmp_path / "mini-imagenet"
    folder.mkdir()
    (folder / "mini-imagenet-cache-test.pkl").write_bytes(data)
    return folder / "mini-imagenet-cache-test.pkl"


def _zero_itemsize_array_pickle(rows: int) -> bytes:
    """A pickle of a dict whose class_dict value is an array of ``rows`` elements of a 0-byte dtype:
    a few hundred bytes that np.asarray(..., int64) would turn into 8 x rows bytes."""
    empty = np.zeros(rows, dtype=np.dtype([]))
    assert empty.nbytes == 0
    return pickle.dumps({"image_data": np.zeros((0, 84, 84, 3), np.uint8), "class_dict": {"n1": empty}}, protocol=4)


@pytest.mark.parametrize("name,data,needle", [
    ("deep", DEEP_KEY, "levels deep"),
    ("2**40 bytes declared", b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc.", "1,099,511,627,776 bytes"),
    ("zero-itemsize array", _zero_itemsize_array_pickle(1_400_000_000), "1,400,000,000 elements"),
])
def test_a_hostile_data_pickle_is_refused_naming_it(tmp_path, name, data, needle):
    from linmaml.benchmarks.data import mini_imagenet

    path = _mini_imagenet_cache(tmp_path, data)
    assert path.stat().st_size < 3_000_000
    with pytest.raises(DatasetError, match=needle) as caught:
        mini_imagenet.load_mini_imagenet("test", tmp_path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_decompression_bomb_png_is_one_line(tmp_path):
    from linmaml.benchmarks.data import mini_imagenet

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(20_000, 20_000))  # 400 Mpixel: Pillow's DecompressionBombError
    with pytest.raises(DatasetError, match="too large") as caught:
        mini_imagenet._read_image(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_sparse_giant_tarball_is_refused_by_size_before_hashing(tmp_path, monkeypatch):
    from linmaml.benchmarks.data import cifar_fs, integrity

    folder = tmp_path / "cifar-fs"
    folder.mkdir()
    with open(folder / cifar_fs.TARBALL, "wb") as handle:
        handle.truncate(integrity.MAX_DATA_BYTES + 1)
    hashed = []
    monkeypatch.setattr(integrity, "file_digest", lambda *a, **k: hashed.append(a) or "0")
    with pytest.raises(DatasetError, match="more than the"):
        cifar_fs.CifarFS.load(tmp_path)
    assert hashed == []


# -- the pickle scan itself against an independent count -------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 5, 40])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_the_pickle_depth_scan_counts_nesting_like_a_direct_walk(depth, protocol):
    value = 7
    for level in range(depth):
        value = [value] if level % 3 == 0 else ((value,) if level % 3 == 1 else {"k": value})
    data = pickle.dumps({"x": value}, protocol=protocol)
    assert _io.depth_of(pickle.loads(data)) == depth + 1  # the independent count: a walk of the object
    _io.check_pickle(io.BytesIO(data), len(data), "f", max_depth=depth + 1)
    with pytest.raises(ValueError, match="levels deep"):
        _io.check_pickle(io.BytesIO(data), len(data), "f", max_depth=depth)
