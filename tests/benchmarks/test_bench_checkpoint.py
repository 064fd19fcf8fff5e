"""Checkpoint files: checksum verified on load, corrupt files named, fallback to the previous one, run lock."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from linmaml.benchmarks import checkpoint


def _payload(iteration, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"iteration": iteration, "weights": {"w": torch.randn(7, 3, generator=g)}, "note": "x"}


def test_round_trip_and_the_zip_comment_is_the_sha256_of_the_rest(tmp_path):
    import zipfile

    path = checkpoint.save(tmp_path / "a.pt", _payload(3))
    raw = path.read_bytes()
    # The file is a zip archive whose comment holds the digest; both are read here with zipfile and
    # hashlib, independently of the module: the digest covers every byte before the comment.
    comment = zipfile.ZipFile(path).comment
    assert comment.startswith(b"linmaml-checkpoint 2 sha256=") and raw.endswith(comment)
    assert comment.split(b"=", 1)[1] == hashlib.sha256(raw[:-len(comment)]).hexdigest().encode()
    back = checkpoint.load(path)
    assert back["iteration"] == 3 and torch.equal(back["weights"]["w"], _payload(3)["weights"]["w"])


def test_a_plain_torch_load_reads_the_file(tmp_path):
    path = checkpoint.save(tmp_path / "a.pt", _payload(4))
    back = torch.load(path, weights_only=True)
    assert back["iteration"] == 4 and back["note"] == "x"
    assert torch.equal(back["weights"]["w"], _payload(4)["weights"]["w"])


def test_version_1_files_are_still_read_and_verified(tmp_path):
    import io

    buffer = io.BytesIO()
    torch.save(_payload(5), buffer)
    body = buffer.getvalue()
    header = b"LINMAML-CHECKPOINT 1 sha256=%s bytes=%d\n" % (hashlib.sha256(body).hexdigest().encode(), len(body))
    (tmp_path / "old.pt").write_bytes(header + body)
    assert checkpoint.load(tmp_path / "old.pt")["iteration"] == 5
    damaged = bytearray(header + body)
    damaged[len(header) + len(body) // 2] ^= 0x10
    (tmp_path / "old.pt").write_bytes(bytes(damaged))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="expected " + hashlib.sha256(body).hexdigest()):
        checkpoint.load(tmp_path / "old.pt")


def test_every_flipped_byte_is_detected(tmp_path):
    """One bit flipped at every 7th byte (and in each of the last 120: end record, comment length,
    checksum record): always refused. torch.load alone would accept many of these flips silently."""
    path = checkpoint.save(tmp_path / "a.pt", _payload(6))
    raw = path.read_bytes()
    expected = hashlib.sha256(raw[:-92]).hexdigest()
    positions = sorted(set(range(0, len(raw), 7)) | set(range(len(raw) - 120, len(raw))))
    silent = 0
    for i in positions:
        flipped = bytearray(raw)
        flipped[i] ^= 0x04
        path.write_bytes(bytes(flipped))
        with pytest.raises(checkpoint.CorruptCheckpoint) as info:
            checkpoint.load(path)
        assert str(path) in str(info.value)
        if i < len(raw) - 92:  # the checksum itself intact: the message names it
            assert expected in str(info.value)
        try:
            back = torch.load(path, weights_only=True)
            silent += not torch.equal(back["weights"]["w"], _payload(6)["weights"]["w"]) or back["iteration"] != 6
        except Exception:  # noqa: BLE001 - torch noticed this one itself
            pass
    assert silent > 0  # the digest is what catches them: some flips change a value torch.load returns


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "header", "empty"])
def test_damaged_file_is_reported_by_name(tmp_path, damage):
    path = checkpoint.save(tmp_path / "last.pt", _payload(1))
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif damage == "truncate":
        raw = raw[: len(raw) - 10]
    elif damage == "append":
        raw += b"junk"
    elif damage == "header":
        raw[:5] = b"XXXXX"
    else:
        raw = b""
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CorruptCheckpoint) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)
    if damage in ("flip", "truncate", "append"):
        assert "sha256" in str(info.value)


def test_save_last_keeps_the_predecessor_and_load_latest_falls_back(tmp_path):
    checkpoint.save_last(tmp_path, _payload(10))
    checkpoint.save_last(tmp_path, _payload(20))
    assert checkpoint.load(tmp_path / "last.prev.pt")["iteration"] == 10
    assert checkpoint.load_latest(tmp_path)["iteration"] == 20
    # Corrupt the newest: the previous one is used and the bad file is named.
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:-1])
    messages = []
    assert checkpoint.load_latest(tmp_path, report=messages.append)["iteration"] == 10
    assert len(messages) == 1 and str(last) in messages[0]
    # kill -9 between the two renames of save_last: only last.prev.pt exists.
    last.unlink()
    assert checkpoint.load_latest(tmp_path)["iteration"] == 10
    # Both bad: an error, never a silent fresh start.
    prev = tmp_path / "last.prev.pt"
    prev.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CorruptCheckpoint):
        checkpoint.load_latest(tmp_path)
    prev.unlink()
    assert checkpoint.load_latest(tmp_path) is None


def test_no_temporary_files_are_left_behind(tmp_path):
    for i in range(3):
        checkpoint.save_last(tmp_path, _payload(i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


def test_checkpoints_refuse_to_unpickle_code(tmp_path):
    # A file with a valid header around a pickle that is not plain data is rejected by weights_only.
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    body = pickle.dumps(Evil(), protocol=2)
    header = b"LINMAML-CHECKPOINT 1 sha256=%s bytes=%d\n" % (hashlib.sha256(body).hexdigest().encode(), len(body))
    (tmp_path / "evil.pt").write_bytes(header + body)
    with pytest.raises(checkpoint.CorruptCheckpoint) as info:
        checkpoint.load(tmp_path / "evil.pt")
    assert "evil.pt" in str(info.value) and "could not be unpacked" in str(info.value)


_HOLD = """
import sys, time
from linmaml.benchmarks.checkpoint import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_refuses_a_second_owner_and_overwrite_breaks_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError) as info:
            checkpoint.RunLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(info.value) and "--overwrite" in str(info.value)
        taken = checkpoint.RunLock(tmp_path).acquire(overwrite=True)
        assert taken.still_owned()
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        taken.release()
        assert not (tmp_path / "run.lock").exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # SIGKILL: no clean-up, the lock file stays with a dead pid in it
    holder.wait()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid
    with checkpoint.RunLock(tmp_path).acquire() as lock:
        assert lock.still_owned()
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


def test_still_owned_turns_false_when_taken_over(tmp_path):
    first = checkpoint.RunLock(tmp_path).acquire()
    # Same process, second handle: flock conflicts between open file descriptions, as across processes.
    with pytest.raises(FileExistsError):
        checkpoint.RunLock(tmp_path).acquire()
    second = checkpoint.RunLock(tmp_path).acquire(overwrite=True)
    assert second.still_owned() and not first.still_owned()
    first.release()
    assert (tmp_path / "run.lock").exists()  # the old owner does not delete the new owner's lock
    second.release()


def test_lock_refuses_a_planted_symlink_and_leaves_its_target_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim, out / checkpoint.LOCK)
    with pytest.raises(OSError, match="symbolic link") as info:
        checkpoint.RunLock(out).acquire()
    assert str(out / checkpoint.LOCK) in str(info.value)
    assert victim.read_text() == "precious\n"
    os.mkfifo(tmp_path / "fifo")
    (out / checkpoint.LOCK).unlink()
    os.symlink(tmp_path / "fifo", out / checkpoint.LOCK)
    with pytest.raises(OSError, match="symbolic link"):
        checkpoint.RunLock(out).acquire(overwrite=True)


def test_checkpoints_replace_planted_symlinks_instead_of_writing_through(tmp_path):
    victims = {name: tmp_path / f"victim-{name}" for name in (checkpoint.LAST, checkpoint.BEST)}
    for victim in victims.values():
        victim.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    for name, victim in victims.items():
        os.symlink(victim, out / name)
    checkpoint.save_last(out, _payload(1))
    checkpoint.save_last(out, _payload(2))
    checkpoint.save(out / checkpoint.BEST, _payload(2))
    assert all(v.read_text() == "precious\n" for v in victims.values())
    assert checkpoint.load(out / checkpoint.LAST)["iteration"] == 2
    assert checkpoint.load(out / checkpoint.BEST)["iteration"] == 2
    assert not (out / checkpoint.LAST).is_symlink() and not (out / checkpoint.BEST).is_symlink()
