"""Keep the process's resident memory close to what tensors actually hold (CPU, glibc).

glibc serves allocations below its mmap threshold from heap arenas and raises that threshold
(up to 32 MiB) each time a large block is freed. A GRPO update allocates and frees about a
gigabyte of activations in blocks of a few MiB per micro-batch, so after the first update those
blocks come from the heap, which fragments and is rarely given back: the quickstart's peak RSS
was ~0.3 GB above its live peak. Pinning the threshold at 1 MiB makes every block of 1 MiB or
more its own mapping, returned to the OS when freed. The cost is page faults on reallocation;
no change in the quickstart's update time was measurable. PyTorch's CPU tuning guide suggests
jemalloc/tcmalloc for the same reason; this needs no extra library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def pin_mmap_threshold(threshold_bytes: int = 1 << 20) -> bool:
    """Set glibc's mmap threshold (and stop its dynamic growth). False where not glibc/Linux."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
