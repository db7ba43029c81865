"""The enclave process's heap policy: keep what it allocated, as an SGX enclave's committed heap.

glibc's malloc serves a large block with an ``mmap`` of its own, unmapped again on ``free``, and
gives the top of its heap back to the kernel once more than ``M_TRIM_THRESHOLD`` of it is free.
A network's activations are such blocks (16 MiB each for ResNet-18 CIFAR at batch 64), so every
inference maps, faults in, zeroes and unmaps them again: one minor page fault per 4 KiB page.
How much of that a run pays depends on what ran before it in the process (glibc moves its
thresholds as it goes), which makes paired timings drift. An SGX enclave never does this (its
heap is committed when it is built, and an EPC fault costs far more than a page fault here).

:func:`retain_heap` turns both off for the calling process: freed memory stays in the heap for
the next allocation, so the process keeps its peak resident. The enclave process applies it at
start (``EnclaveConfig.retain_heap``, default on); the benchmarks apply it to their own process
too, so that plain PyTorch and the host side are timed under the same allocator.
"""

from __future__ import annotations

import ctypes

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = (1 << 31) - 1  # an int: the largest threshold mallopt takes (2 GiB free at the top)


def retain_heap() -> bool:
    """Make this process's malloc keep freed memory (no per-block mmap, no trimming).

    Returns whether it took effect: False where the C library has no ``mallopt`` (not glibc),
    in which case nothing changed.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    no_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    return mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1 and no_mmap


__all__ = ["retain_heap"]
