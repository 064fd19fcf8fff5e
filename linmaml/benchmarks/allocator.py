"""glibc's malloc set up for meta-training on a CPU: memory a step frees is kept for the next step.

Why. One CPU meta-iteration of the Omniglot CNN allocates and frees hundreds of tensors of several
MiB (each query set's activations and their gradients: 75 images × 64 channels × 28 × 28 float32 =
15 MiB). glibc serves an allocation above its *mmap threshold* with fresh pages from the kernel and
unmaps them on free, and gives the top of its heap back to the kernel whenever more than its *trim
threshold* is free there. Both start at 128 KiB (the mmap threshold then adapts, up to 32 MiB), so
much of every iteration's memory is freshly mapped, and the kernel zero-fills each page on its first
touch: the profile of a step shows ``fill_`` of those buffers as its third-largest item. Raising
both thresholds keeps freed memory inside the process, where the next iteration reuses it.

Measured (``linmaml bench --only allocator``: fresh processes under each setting, alternated): the
numbers are in ``figures/bench.json`` and the README's Performance section.

The cost: the process's resident memory stays near its peak instead of shrinking between steps
(the memory is reused, not leaked; up to :data:`TRIM_THRESHOLD` of free memory is kept). That is why
it is a choice of the command-line tools (``linmaml train``/``evaluate``/``analyze`` and ``bench``:
``--allocator keep``, the default, or ``--allocator system``) and never a side effect of importing
the library; a program using the library calls :func:`use_allocator` itself.

Only glibc (Linux) has these settings; elsewhere :func:`use_allocator` changes nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

from linmaml.errors import ArgumentError

__all__ = ["ALLOCATORS", "ALLOCATOR_HELP", "use_allocator", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: The policies: "keep" (thresholds raised, module docstring) or "system" (the C library's own).
ALLOCATORS = ("keep", "system")

#: Allocations up to this size come from the heap, not from fresh kernel pages (a mini-ImageNet query
#: set's first activation, 75 × 32 × 84 × 84 float32, is 65 MiB).
MMAP_THRESHOLD = 256 * 2**20
#: Free memory at the top of the heap is returned to the kernel only beyond this much.
TRIM_THRESHOLD = 2**30

#: The command-line option's help (train, evaluate, analyze, bench).
ALLOCATOR_HELP = ("keep (default): glibc keeps the memory a step frees for the next step instead of returning it "
                  "to the kernel, which makes a CPU meta-iteration faster (linmaml bench --only allocator); "
                  "system: the C library's own settings (resident memory shrinks between steps)")

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _glibc():
    """The C library as a ctypes handle if it is glibc, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def use_allocator(policy: str) -> str:
    """Apply ``policy`` ("keep" or "system", :data:`ALLOCATORS`) to this process; return one line
    saying what is in effect (for logs and the benchmark's record).

    "keep" sets glibc's mmap threshold to :data:`MMAP_THRESHOLD` and its trim threshold to
    :data:`TRIM_THRESHOLD` (module docstring); "system" changes nothing. Setting either threshold
    turns off glibc's own adaptation of the mmap threshold, so once "keep" is applied, a later
    "system" cannot restore the start-up behaviour: choose once, at start-up.
    """
    if policy not in ALLOCATORS:
        raise ArgumentError("allocator", f"expected one of {', '.join(ALLOCATORS)}, got {policy!r}")
    if policy == "system":
        return "system: the C library's malloc settings, unchanged"
    libc = _glibc()
    if libc is None:
        return f"system: 'keep' needs glibc's mallopt, which this platform ({platform.system()}) lacks"
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    refused = [name for name, parameter, value in (("mmap", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                   ("trim", _M_TRIM_THRESHOLD, TRIM_THRESHOLD))
               if libc.mallopt(parameter, value) != 1]
    if refused:
        return f"system: glibc refused the {' and '.join(refused)} threshold (mallopt returned 0)"
    return (f"keep: glibc mmap threshold {MMAP_THRESHOLD // 2**20} MiB, trim threshold "
            f"{TRIM_THRESHOLD // 2**20} MiB (freed memory reused by the next step)")
