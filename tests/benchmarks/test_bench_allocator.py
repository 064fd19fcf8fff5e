"""linmaml.benchmarks.allocator: "keep" really changes glibc's malloc, checked by glibc's own
statistics (mallinfo2) in fresh processes; a refused threshold leaves malloc alone and is said; the
command-line tools apply it by default and record it in the run folder; bad input is refused by name.

(tests/conftest.py sets $LINMAML_ALLOCATOR=system for the suite: the fresh processes here remove it.)"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from linmaml.benchmarks import allocator
from linmaml.benchmarks.allocator import MMAP_THRESHOLD, use_allocator
from linmaml.errors import ArgumentError

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallinfo2 and mallopt are glibc's")

# In a fresh process: apply the policy, then malloc and free a 20 MiB block and report what glibc's
# statistics say about it (mallinfo2: hblks = mmapped blocks, arena = heap bytes, fordblks = free heap bytes).
_PROBE = r"""
import ctypes, json, sys
from linmaml.benchmarks.allocator import use_allocator

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
applied = use_allocator(sys.argv[1])
size = int(sys.argv[2]) * 2**20
before = libc.mallinfo2()
block = libc.malloc(size)
ctypes.memset(block, 1, size)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"applied": str(applied), "in_effect": applied.in_effect, "mmapped_blocks_added": during.hblks - before.hblks,
                  "heap_after_free": after.arena, "free_heap_after_free": after.fordblks}))
"""


def _probe(policy, mib):
    done = subprocess.run([sys.executable, "-c", _PROBE, policy, str(mib)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
@pytest.mark.parametrize("mib", [20, 100])  # 100 MiB: above glibc's largest adaptive threshold (32 MiB)
def test_keep_serves_large_blocks_from_the_heap_and_keeps_them_after_free(mib):
    keep = _probe("keep", mib)
    assert keep["in_effect"] == "keep" and keep["applied"].startswith("keep: ")
    assert mib * 2**20 < MMAP_THRESHOLD
    assert keep["mmapped_blocks_added"] == 0               # not fresh kernel pages
    assert keep["free_heap_after_free"] >= mib * 2**20     # freed, and still in the process for reuse


@glibc
@pytest.mark.parametrize("mib", [20, 100])
def test_system_leaves_glibc_alone(mib):
    system = _probe("system", mib)
    assert system["in_effect"] == "system" and system["applied"].startswith("system: ")
    # glibc's own start-up threshold (128 KiB) maps the block from the kernel and unmaps it on free
    assert system["mmapped_blocks_added"] == 1
    assert system["free_heap_after_free"] < mib * 2**20


class _FakeLibc:
    """A C library whose mallopt refuses the parameters in ``refuse``; records every call."""

    def __init__(self, refuse):
        self.refuse, self.calls = set(refuse), []

    def mallopt(self, parameter, value):
        self.calls.append(parameter)
        return 0 if parameter in self.refuse else 1


@pytest.fixture
def fake_libc(monkeypatch):
    def install(refuse):
        libc = _FakeLibc(refuse)
        monkeypatch.setattr(allocator, "_glibc", lambda: libc)
        monkeypatch.setattr(allocator, "_state", None)
        return libc

    return install


def test_a_refused_mmap_threshold_leaves_the_trim_threshold_alone(fake_libc):
    """Setting only the trim threshold would freeze glibc's mmap threshold at 128 KiB: worse than nothing."""
    libc = fake_libc(refuse={allocator._M_MMAP_THRESHOLD})
    state = use_allocator("keep")
    assert libc.calls == [allocator._M_MMAP_THRESHOLD]
    assert state.in_effect == "system" and "refused an mmap threshold" in state.detail
    assert allocator.current().in_effect == "system"


def test_a_refused_trim_threshold_is_reported_as_partly_applied(fake_libc):
    libc = fake_libc(refuse={allocator._M_TRIM_THRESHOLD})
    state = use_allocator("keep")
    assert libc.calls == [allocator._M_MMAP_THRESHOLD, allocator._M_TRIM_THRESHOLD]
    assert state.in_effect == "partly" and allocator.current() == state
    assert str(state) == f"partly: {state.detail}"


def test_keep_taken_is_recorded_as_a_record_and_one_line(fake_libc):
    libc = fake_libc(refuse=set())
    assert allocator.current() == allocator._UNTOUCHED and allocator.current().in_effect == "system"
    state = use_allocator("keep")
    assert libc.calls == [allocator._M_MMAP_THRESHOLD, allocator._M_TRIM_THRESHOLD]
    assert (state.in_effect, allocator.current()) == ("keep", state)
    assert str(state) == (f"keep: glibc mmap threshold {MMAP_THRESHOLD // 2**20} MiB, trim threshold "
                          f"{allocator.TRIM_THRESHOLD // 2**20} MiB (freed memory reused by the next step)")
    assert use_allocator("system") == state  # "system" changes nothing once keep is applied


def test_keep_on_a_platform_without_glibc_changes_nothing_and_the_command_says_so(monkeypatch, capsys):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    monkeypatch.setattr(allocator, "_state", None)
    state = allocator.apply_for_command("keep", "linmaml train")
    assert state.in_effect == "system"
    assert capsys.readouterr().err.startswith("linmaml train: note: --allocator keep not applied: system:")


def test_a_bad_environment_value_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(allocator.ENVIRONMENT, "fast")
    with pytest.raises(ArgumentError) as caught:
        allocator.apply_for_command(allocator.default_policy(), "linmaml train")
    assert caught.value.argument == "LINMAML_ALLOCATOR"


@pytest.mark.parametrize("policy", ["fast", "", None, "KEEP"])
def test_unknown_policy_is_refused_by_name(policy):
    with pytest.raises(ArgumentError) as caught:
        use_allocator(policy)
    assert caught.value.argument == "allocator"


def _without_policy_variable():
    return {k: v for k, v in os.environ.items() if k != allocator.ENVIRONMENT} | {"OMP_NUM_THREADS": "1"}


TINY_RUN = ["--iterations", "1", "--meta-batch", "2", "--val-every", "1", "--val-tasks", "2", "--hidden", "4",
            "--quiet"]


@glibc
@pytest.mark.parametrize("flag, expected", [([], "keep:"), (["--allocator", "system"], "system:")])
def test_train_applies_keep_by_default_and_records_the_policy(tmp_path, data_root, flag, expected):
    """A fresh `linmaml train` process: keep unless told otherwise, and config.json says which."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "linmaml", "train", "--out", str(out), "--data-root", str(data_root),
                           *TINY_RUN, *flag], capture_output=True, text=True, env=_without_policy_variable())
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "config.json").read_text())["allocator"].startswith(expected)


def test_the_environment_variable_sets_the_default(tmp_path):
    env = _without_policy_variable() | {allocator.ENVIRONMENT: "bogus"}
    done = subprocess.run([sys.executable, "-m", "linmaml", "train", "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "LINMAML_ALLOCATOR: expected one of keep, system, got 'bogus'" in done.stderr
    assert not (tmp_path / "run").exists()


def test_cli_refuses_an_unknown_allocator(tmp_path):
    done = subprocess.run([sys.executable, "-m", "linmaml", "train", "--out", str(tmp_path / "run"),
                           "--allocator", "fast"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--allocator" in done.stderr
    assert not (tmp_path / "run").exists()
