"""``linmaml train`` on a corrupt or missing Omniglot, end to end through the CLI (in-process).

The data root is a copy of the real compact files (``omniglot_background.npz``,
``omniglot_evaluation.npz``; their sha256 and sizes are known to the reader, so a fake set would be
refused for its checksum alone) with one file damaged: truncated, or one byte flipped at the same
size. Every case must end with exit status 2 and one line on stderr naming the damaged file (and
what is wrong with it), no traceback, and nothing written: a run folder the call created is gone
again, a folder that existed is byte-for-byte as before (no lock, config, metrics or checkpoint),
and a finished run that ``--resume`` points at keeps every file as it was. The data root is never
written either.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from linmaml.benchmarks.data import FewShotSplit
from linmaml.benchmarks.train import train
from linmaml.cli import main

FILES = ("omniglot_background.npz", "omniglot_evaluation.npz")
TINY = ["--layers", "1", "--hidden", "2", "--meta-batch", "1", "--query", "2", "--val-tasks", "2",
        "--iterations", "2", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def real_omniglot(data_root) -> Path:
    """The folder holding the real compact Omniglot files."""
    folder = data_root / "omniglot"
    if all((folder / name).is_file() for name in FILES):
        return folder
    if os.environ.get("CI"):
        pytest.fail(f"real Omniglot (.npz) not found in {folder}")
    pytest.skip(f"real Omniglot (.npz) not found in {folder}")


def truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "truncated"


def flip_byte(path: Path) -> str:
    """One bit of one byte in the middle of the compressed images: same size, different content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return "does not match the expected"


# (which file, how it is damaged). The background set is read first, so a damaged evaluation file
# also proves that a good first file does not let training start before the second is checked.
DAMAGE = [("omniglot_background.npz", truncate), ("omniglot_evaluation.npz", flip_byte),
          ("omniglot_background.npz", flip_byte)]


def damaged_root(real: Path, tmp_path: Path, name: str, damage) -> tuple[Path, Path, str]:
    """(data root, the damaged file, text the error must contain) for a copy of ``real``."""
    root = tmp_path / "data"
    (root / "omniglot").mkdir(parents=True)
    for file in FILES:
        shutil.copyfile(real / file, root / "omniglot" / file)
    bad = root / "omniglot" / name
    return root, bad, damage(bad)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def one_line_error(capsys, argv) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse errors leave through parser.exit
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    assert err.count("\n") == 1 and err.startswith("linmaml train: error: "), err
    return status, err


@pytest.mark.parametrize("name,damage", DAMAGE, ids=[f"{n.split('_')[1].split('.')[0]}-{d.__name__}" for n, d in DAMAGE])
def test_a_damaged_file_is_named_and_the_new_run_folder_is_not_left_behind(real_omniglot, tmp_path, capsys, name,
                                                                         damage):
    root, bad, reason = damaged_root(real_omniglot, tmp_path, name, damage)
    data_before = snapshot(root)
    out = tmp_path / "run"
    status, err = one_line_error(capsys, ["train", "--benchmark", "omniglot", "--data-root", str(root),
                                          "--out", str(out), *TINY])
    assert status == 2, err
    assert str(bad) in err and reason in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert snapshot(root) == data_before, "the reader wrote into the data root"


def test_an_existing_empty_run_folder_stays_empty(real_omniglot, tmp_path, capsys):
    root, bad, reason = damaged_root(real_omniglot, tmp_path, "omniglot_background.npz", truncate)
    out = tmp_path / "run"
    out.mkdir()
    status, err = one_line_error(capsys, ["train", "--data-root", str(root), "--out", str(out), *TINY])
    assert status == 2 and str(bad) in err and reason in err, err
    assert out.is_dir() and list(out.iterdir()) == [], "lock, config, metrics or a checkpoint was left behind"


@pytest.fixture
def finished_run(tmp_path):
    """A finished tiny Omniglot-shaped run (synthetic 28x28 images; its config says omniglot)."""
    rng = np.random.default_rng(0)
    splits = {name: FewShotSplit("omniglot", name, rng.random((6, 4, 1, 28, 28)).astype(np.float32), np.arange(6),
                                 np.zeros(6, np.int64), 10 * k + np.arange(6), tuple(map(str, range(6))))
              for k, name in enumerate(("train", "val"))}
    out = tmp_path / "finished"
    train(dict(ways=3, shots=1, query=2, test_query=2, layers=1, hidden=2, meta_batch=1, iterations=2, val_every=2,
               val_tasks=2), out, splits=splits, progress=False)
    return out


def test_resume_on_damaged_data_keeps_the_run_as_it_was(real_omniglot, tmp_path, capsys, finished_run):
    root, bad, reason = damaged_root(real_omniglot, tmp_path, "omniglot_evaluation.npz", flip_byte)
    before = snapshot(finished_run)
    assert {"last.pt", "best.pt", "metrics.jsonl", "config.json"} <= set(before), sorted(before)
    status, err = one_line_error(capsys, ["train", "--data-root", str(root), "--out", str(finished_run), "--resume",
                                          "--iterations", "4", "--quiet"])
    assert status == 2 and str(bad) in err and reason in err, err
    assert snapshot(finished_run) == before, "a failed resume changed the run's files"


def test_missing_dataset_says_what_is_missing_and_how_to_get_it(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    out = tmp_path / "run"
    status, err = one_line_error(capsys, ["train", "--data-root", str(empty), "--out", str(out), *TINY])
    assert status == 2, err
    # what: both sets, by file name, under the folder that was searched
    assert str(empty / "omniglot") in err
    assert all(name in err for name in FILES), err
    # how: the download command and where to point the toolkit
    assert "linmaml data download omniglot" in err and "--data-root" in err and "LINMAML_DATA" in err, err
    assert not out.exists()
    assert list(empty.iterdir()) == [], "the reader wrote into the data root"


def test_one_missing_set_is_the_only_one_named(real_omniglot, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "omniglot").mkdir(parents=True)
    shutil.copyfile(real_omniglot / FILES[0], root / "omniglot" / FILES[0])
    status, err = one_line_error(capsys, ["train", "--data-root", str(root), "--out", str(tmp_path / "run"), *TINY])
    assert status == 2 and "lacks the evaluation set" in err and FILES[1] in err, err
    assert "background set" not in err, err
    assert not (tmp_path / "run").exists()
