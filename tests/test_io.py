"""Atomic writes: the target is replaced whole or left untouched, and no temporary file remains."""
import json

import pytest

from linmaml._io import atomic_path, atomic_write_json, atomic_write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "r.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]


def test_failed_write_keeps_previous_content(tmp_path):
    target = tmp_path / "r.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]


def test_nan_is_refused_and_nothing_is_written(tmp_path):
    target = tmp_path / "r.json"
    with pytest.raises(ValueError):
        atomic_write_json(target, {"x": float("nan")})
    assert not target.exists()


def test_written_files_get_the_umask_mode_not_mkstemp_private_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
