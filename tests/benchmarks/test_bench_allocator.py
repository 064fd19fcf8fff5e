"""linmaml.benchmarks.allocator: "keep" really changes glibc's malloc, checked by glibc's own
statistics (mallinfo2) in fresh processes, and bad input is refused by name."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

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
before = libc.mallinfo2()
block = libc.malloc(20 * 2**20)
ctypes.memset(block, 1, 20 * 2**20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"applied": applied, "mmapped_blocks_added": during.hblks - before.hblks,
                  "heap_after_free": after.arena, "free_heap_after_free": after.fordblks}))
"""


def _probe(policy):
    done = subprocess.run([sys.executable, "-c", _PROBE, policy], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_keep_serves_large_blocks_from_the_heap_and_keeps_them_after_free():
    keep = _probe("keep")
    assert keep["applied"].startswith("keep")
    assert 20 * 2**20 < MMAP_THRESHOLD
    assert keep["mmapped_blocks_added"] == 0               # not fresh kernel pages
    assert keep["free_heap_after_free"] >= 20 * 2**20      # freed, and still in the process for reuse


@glibc
def test_system_leaves_glibc_alone():
    system = _probe("system")
    assert system["applied"].startswith("system")
    # glibc's own start-up threshold (128 KiB) maps a 20 MiB block from the kernel and unmaps it on free
    assert system["mmapped_blocks_added"] == 1
    assert system["free_heap_after_free"] < 20 * 2**20


@pytest.mark.parametrize("policy", ["fast", "", None, "KEEP"])
def test_unknown_policy_is_refused_by_name(policy):
    with pytest.raises(ArgumentError) as caught:
        use_allocator(policy)
    assert caught.value.argument == "allocator"


def test_cli_refuses_an_unknown_allocator(tmp_path):
    done = subprocess.run([sys.executable, "-m", "linmaml", "train", "--out", str(tmp_path / "run"),
                           "--allocator", "fast"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--allocator" in done.stderr
    assert not (tmp_path / "run").exists()
