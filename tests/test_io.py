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


# --------------------------------------------------------------------------------------------------
# Planted symlinks are never written through


def _victim(tmp_path):
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    return victim


def test_atomic_write_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    import os

    victim = _victim(tmp_path)
    target = tmp_path / "out" / "r.json"
    target.parent.mkdir()
    os.symlink(victim, target)
    atomic_write_json(target, {"a": 1})
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and json.loads(target.read_text()) == {"a": 1}


def test_a_temporary_swapped_for_a_symlink_is_not_renamed(tmp_path):
    import os

    victim = _victim(tmp_path)
    target = tmp_path / "r.bin"
    with pytest.raises(OSError, match="replaced while it was written"):
        with atomic_path(target) as tmp:
            os.unlink(tmp)
            os.symlink(victim, tmp)  # what a racing attacker would do between create and rename
    assert victim.read_text() == "precious\n" and not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]


@pytest.mark.parametrize("mode", ["a", "r+"])
def test_open_nofollow_refuses_symlinks_and_non_regular_files(tmp_path, mode):
    import os

    from linmaml._io import open_nofollow

    victim = _victim(tmp_path)
    link = tmp_path / "metrics.jsonl"
    os.symlink(victim, link)
    with pytest.raises(OSError, match="is a symbolic link; refusing to follow it") as info:
        open_nofollow(link, mode)
    assert info.value.filename == str(link)
    dangling = tmp_path / "dangling"
    os.symlink(tmp_path / "nowhere", dangling)
    with pytest.raises(OSError, match="symbolic link"):
        open_nofollow(dangling, mode)
    assert not (tmp_path / "nowhere").exists()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):  # and it does not hang waiting for a reader
        open_nofollow(fifo, mode)
    with pytest.raises(IsADirectoryError):
        open_nofollow(tmp_path / "elsewhere", mode)
    assert victim.read_text() == "precious\n"


def test_open_nofollow_appends_to_a_regular_file(tmp_path):
    from linmaml._io import open_nofollow

    path = tmp_path / "metrics.jsonl"
    for line in ("one\n", "two\n"):
        with open_nofollow(path) as handle:
            handle.write(line)
    assert path.read_text() == "one\ntwo\n"
