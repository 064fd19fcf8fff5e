"""The command line under operating-system faults: a read-only file system, ``ulimit -f``, a full
disk on standard output, a pipe closed early, and ``--version``.

Every fault is real (a real process, a real read-only mount or rlimit or ``/dev/full``), and each
case says what must hold: one line on stderr naming the path and the reason, exit status 2, and the
previous file untouched; a closed pipe ends the command quietly (no traceback, status 141).
"""
from __future__ import annotations

import errno
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPLORE = ["explore", "--grid", "3", "--meta-steps", "1"]


def _env(tmp_path):
    # matplotlib's own font cache stays where it is: built fresh under `ulimit -f` it would print
    # its own warning (a line that is not linmaml's)
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _linmaml(*argv, tmp_path, prefix=(), **kwargs):
    return subprocess.run([*prefix, sys.executable, "-m", "linmaml", *argv], capture_output=True, text=True,
                          cwd=REPO, env=_env(tmp_path), timeout=900, **kwargs)  # hang guard only


def _one_line(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _read_only_prefix(folder: pathlib.Path):
    """A command prefix under which ``folder`` is a read-only file system (a private mount), or None."""
    if os.geteuid() != 0:
        folder.chmod(0o555)  # enough for a user that is not root
        return ()
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {folder} && touch {folder}/x"],
                           capture_output=True, text=True)
    if "Read-only file system" not in probe.stderr:
        return None
    return ("unshare", "-m", "sh", "-c", f'mount -t tmpfs -o ro tmpfs {folder} && exec "$@"', "sh")


def test_read_only_folder_is_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    prefix = _read_only_prefix(folder)
    if prefix is None:
        pytest.skip("no way to make a read-only folder here (root without unshare)")
    target = folder / "snap.png"
    proc = _linmaml(*EXPLORE, "--save", str(target), tmp_path=tmp_path, prefix=prefix)
    reason = "Read-only file system" if prefix else "Permission denied"
    _one_line(proc, f"linmaml explore: error: {target}: {reason}")


def test_file_size_limit_is_one_line_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "snap.png"
    target.write_bytes(b"the previous snapshot")

    def limit():  # ulimit -f 2 (1 KiB blocks); SIGXFSZ ignored as a shell started under it may do
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    proc = _linmaml(*EXPLORE, "--save", str(target), tmp_path=tmp_path, preexec_fn=limit)
    _one_line(proc, f"linmaml explore: error: {target}: {os.strerror(errno.EFBIG)}")
    assert target.read_bytes() == b"the previous snapshot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.png"], "a temporary file was left"


def test_file_size_limit_without_ignoring_sigxfsz_is_not_a_core_dump(tmp_path):
    """linmaml ignores SIGXFSZ itself: under a plain ``ulimit -f`` the write fails, it is not killed."""
    target = tmp_path / "snap.png"
    proc = _linmaml(*EXPLORE, "--save", str(target), tmp_path=tmp_path,
                    preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048)))
    _one_line(proc, f"{target}: {os.strerror(errno.EFBIG)}")
    assert not target.exists()


@pytest.mark.parametrize("argv", [["derive"], ["surface", "--grid", "5"], ["surface", "--grid", "5", "--json"]])
def test_full_disk_on_standard_output_is_one_line(argv, tmp_path):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "linmaml", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=_env(tmp_path), timeout=900)  # hang guard only
    _one_line(proc, f"linmaml {argv[0]}: error: cannot write to standard output: {os.strerror(errno.ENOSPC)}")


@pytest.mark.parametrize("argv", [["derive", "--depth", "3", "--steps", "2"], ["surface", "--json"],
                                  ["data", "check", "omniglot", "--json", "--data-root", "{data}"]])
def test_a_pipe_closed_early_ends_the_command_quietly(argv, tmp_path, request):
    """As ``linmaml … | head -c 0``: the reader is gone before the first write."""
    if "{data}" in argv:  # only this case needs the real Omniglot (fails under CI, skips elsewhere without it)
        root = str(request.getfixturevalue("data_root"))
        argv = [a.replace("{data}", root) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "linmaml", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, env=_env(tmp_path))
    proc.stdout.close()  # before the command has written anything: it spends its first second importing
    _, err = proc.communicate(timeout=900)  # hang guard only
    assert err.decode() == "", err.decode()
    assert proc.returncode == 141


def test_version_prints_the_packaged_version(tmp_path):
    with open(REPO / "pyproject.toml", "rb") as handle:
        expected = tomllib.load(handle)["project"]["version"]
    proc = _linmaml("--version", tmp_path=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == f"linmaml {expected}\n"
