"""``linmaml data``: check on the real Omniglot, and a table of bad input (one line, exit status 2)."""
from __future__ import annotations

import json
import shutil

import pytest

from linmaml.cli import main


def run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_check_real_omniglot(data_root, capsys):
    status, out, _ = run(["data", "check", "omniglot", "--data-root", str(data_root), "--json"], capsys)
    assert status == 0
    report = json.loads(out)
    assert report["images"] == 32460
    assert report["sets"]["evaluation"]["characters"] == 659 and report["sets"]["background"]["alphabets"] == 30
    status, out, _ = run(["data", "info", "omniglot", "--data-root", str(data_root)], capsys)
    assert status == 0 and "32,460 images" in out and "964 characters" in out


def test_default_root_comes_from_the_environment(data_root, capsys, monkeypatch):
    monkeypatch.setenv("LINMAML_DATA", str(data_root))
    status, out, _ = run(["data", "check", "omniglot"], capsys)
    assert status == 0 and str(data_root / "omniglot") in out


@pytest.fixture
def corrupt_root(data_root, tmp_path):
    """A copy of the real npz files with the evaluation one truncated."""
    if not (data_root / "omniglot" / "omniglot_evaluation.npz").is_file():
        pytest.skip("the real data here is not in the npz format")
    folder = tmp_path / "corrupt" / "omniglot"
    folder.mkdir(parents=True)
    shutil.copyfile(data_root / "omniglot" / "omniglot_background.npz", folder / "omniglot_background.npz")
    data = (data_root / "omniglot" / "omniglot_evaluation.npz").read_bytes()
    (folder / "omniglot_evaluation.npz").write_bytes(data[:-1000])
    return tmp_path / "corrupt"


BAD = [
    # (arguments, text the one-line message must contain)
    (["data"], "ACTION"),
    (["data", "check"], "benchmark"),
    (["data", "check", "imagenet"], "invalid choice"),
    (["data", "check", "omniglot", "--bogus"], "unrecognized arguments"),
    (["data", "check", "omniglot", "--data-root", "{empty}"], "linmaml data download omniglot"),
    (["data", "check", "omniglot", "--data-root", "{file}"], "is not a folder"),
    (["data", "check", "cifar-fs", "--data-root", "{empty}"], "cifar-100-python"),
    (["data", "check", "mini-imagenet", "--data-root", "{empty}"], "mini-imagenet-cache-train.pkl"),
    (["data", "download", "cifar-fs"], "invalid choice"),
    (["data", "download", "omniglot", "--root", "{empty}", "--timeout", "-1"], "--timeout"),
    (["data", "download", "omniglot", "--root", "{empty}", "--timeout", "x"], "invalid float"),
    (["data", "download", "omniglot", "--root", "{empty}", "--url-base", "http://127.0.0.1:9"], "download failed"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(argv, needle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    argv = [a.format(empty=tmp_path / "empty", file=tmp_path / "file") for a in argv]
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


def test_corrupt_file_is_named_with_expected_checksum(corrupt_root, capsys):
    status, _, err = run(["data", "check", "omniglot", "--data-root", str(corrupt_root)], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1
    assert "omniglot_evaluation.npz" in lines[0]
    assert "3d1dd2b330ca6b0615077fc5af16b858413cebb15f9891a105f8bfe75a3cd4ec" in lines[0]
