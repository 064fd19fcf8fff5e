"""glibc's malloc set up for meta-training on a CPU: memory a step frees is kept for the next step.

Why. One CPU meta-iteration of the Omniglot CNN allocates and frees hundreds of tensors of several
MiB (each query set's activations and their gradients: 75 images × 64 channels × 28 × 28 float32 =
15 MiB). With glibc's own settings, a block above the *mmap threshold* is mapped from the kernel and
unmapped on free, and the top of the heap is given back to the kernel whenever more than the *trim
threshold* is free there. Both start at 128 KiB and adapt: freeing a mapped block raises the mmap
threshold to its size (at most 32 MiB) and the trim threshold to twice that. In steady state, then,
blocks above 32 MiB are mapped afresh at every step, and each time the memory free at the top of the
heap exceeds the trim threshold it goes back to the kernel, to be faulted in (and zero-filled by the
kernel) again by the next step. Raising both thresholds keeps that memory inside the process, where
the next step reuses it.

Measured (``linmaml bench --only allocator``: fresh processes under each setting, alternated): the
numbers are in ``figures/bench.json`` and the README's Performance section.

The cost: freed memory is not returned to the kernel. The top-of-heap part is bounded by
:data:`TRIM_THRESHOLD`, but free blocks below a live one stay resident too, so resident memory
stays near the process's high-water mark of any phase (data loading, validation) rather than
shrinking between steps; every torchrun process keeps its own. That is why it is a choice of the
command-line tools (``linmaml train``/``evaluate``/``analyze`` and ``bench``: ``--allocator keep``,
the default, or ``--allocator system``; ``$LINMAML_ALLOCATOR`` sets the default) and never a side
effect of importing or calling the library: a program using the library calls :func:`use_allocator`
itself.

Only glibc (Linux) has these settings; elsewhere :func:`use_allocator` changes nothing and says so,
and the command-line tools print that line. (A preloaded jemalloc or tcmalloc replaces malloc but
not glibc's ``mallopt``, which then still reports success: use ``--allocator system`` there.)
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import sys

from linmaml.errors import ArgumentError

__all__ = ["ALLOCATORS", "ALLOCATOR_HELP", "AllocatorState", "use_allocator", "current", "default_policy",
           "apply_for_command", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: The policies: "keep" (thresholds raised, module docstring) or "system" (the C library's own).
ALLOCATORS = ("keep", "system")

#: Allocations up to this size come from the heap, not from fresh kernel pages (a mini-ImageNet query
#: set's first activation, 75 × 32 × 84 × 84 float32, is 65 MiB).
MMAP_THRESHOLD = 256 * 2**20
#: Free memory at the top of the heap is returned to the kernel only beyond this much.
TRIM_THRESHOLD = 2**30

#: The command-line option's help (train, evaluate, analyze, bench).
ALLOCATOR_HELP = ("keep (default, or $LINMAML_ALLOCATOR): glibc keeps the memory a step frees for the next step "
                  "instead of returning it to the kernel (the MAML training step measured 1.10x faster: linmaml "
                  "bench --only allocator); resident memory then stays near its high-water mark. system: the C "
                  "library's own settings")

#: The environment variable that sets the command-line tools' default policy.
ENVIRONMENT = "LINMAML_ALLOCATOR"

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3



@dataclasses.dataclass(frozen=True)
class AllocatorState:
    """What a process's malloc settings are: ``in_effect`` is "keep" (both thresholds raised),
    "partly" (the mmap threshold only) or "system" (the C library's own); ``detail`` says how.
    ``str(state)`` is the one line for logs and records: ``"<in_effect>: <detail>"``."""

    in_effect: str
    detail: str

    def __str__(self) -> str:
        return f"{self.in_effect}: {self.detail}"


_UNTOUCHED = AllocatorState("system", "the C library's malloc settings (not changed by linmaml in this process)")

#: What this process's malloc settings are, as linmaml last set them (None: never touched). Process-wide
#: like malloc itself; written only by :func:`use_allocator`.
_state: AllocatorState | None = None


def _glibc():
    """The C library as a ctypes handle if it is glibc, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def current() -> AllocatorState:
    """What this process's malloc settings are, as far as linmaml knows (``str()`` of it: one line)."""
    return _state or _UNTOUCHED


def use_allocator(policy: str) -> AllocatorState:
    """Apply ``policy`` ("keep" or "system", :data:`ALLOCATORS`) to this process; return what is in
    effect (its ``str()`` is the line for logs, run folders and the benchmark's record).

    "keep" sets glibc's mmap threshold to :data:`MMAP_THRESHOLD` and then its trim threshold to
    :data:`TRIM_THRESHOLD` (module docstring). The trim threshold is set only once the mmap threshold
    was taken: setting either one stops glibc's adaptation of both, and a large trim threshold beside
    glibc's start-up mmap threshold of 128 KiB (older glibc refuses mmap thresholds above 32 MiB) would
    map and unmap every block above 128 KiB, worse than glibc's own settings. "system" changes
    nothing. Once "keep" is applied, "system" cannot restore glibc's start-up behaviour: choose once,
    at start-up.
    """
    if policy not in ALLOCATORS:
        raise ArgumentError("allocator", f"expected one of {', '.join(ALLOCATORS)}, got {policy!r}")
    global _state
    if policy == "system":
        return current()
    libc = _glibc()
    if libc is None:
        return AllocatorState("system", f"'keep' needs glibc's mallopt, which this platform ({platform.system()}) "
                                        f"lacks; malloc unchanged")
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return AllocatorState("system", f"glibc refused an mmap threshold of {MMAP_THRESHOLD // 2**20} MiB (mallopt "
                                        f"returned 0); malloc unchanged")
    if libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        _state = AllocatorState("partly", f"glibc mmap threshold {MMAP_THRESHOLD // 2**20} MiB, but it refused a trim "
                                          f"threshold of {TRIM_THRESHOLD // 2**20} MiB")
        return _state
    _state = AllocatorState("keep", f"glibc mmap threshold {MMAP_THRESHOLD // 2**20} MiB, trim threshold "
                                    f"{TRIM_THRESHOLD // 2**20} MiB (freed memory reused by the next step)")
    return _state


def default_policy() -> str:
    """The command-line tools' default: ``$LINMAML_ALLOCATOR`` if set, else "keep"."""
    return os.environ.get(ENVIRONMENT) or "keep"


def apply_for_command(policy: str, prog: str, stream=None) -> AllocatorState:
    """:func:`use_allocator` for a command-line tool: a bad policy is an error naming ``--allocator``
    (or the environment variable it came from), and a "keep" that could not be applied is said in one
    line on ``stream`` (default stderr). Returns what :func:`use_allocator` returns."""
    if policy not in ALLOCATORS:
        source = ENVIRONMENT if policy == os.environ.get(ENVIRONMENT) else "--allocator"
        raise ArgumentError(source, f"expected one of {', '.join(ALLOCATORS)}, got {policy!r}")
    state = use_allocator(policy)
    if policy == "keep" and state.in_effect != "keep":
        print(f"{prog}: note: --allocator keep not applied: {state}", file=stream or sys.stderr, flush=True)
    return state
