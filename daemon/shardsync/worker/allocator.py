"""Keep the memory a worker frees between batches for the next batch instead of returning it to the kernel.

Each batch allocates and frees a few MiB (decoded frames, change records,
serialised rows).  glibc's defaults hand a freed heap top above 128 KiB back
to the kernel and serve blocks above 128 KiB with a fresh mmap, so every batch
faults its memory in again; on virtual machines a page fault costs
microseconds, and under load that was a tenth of the worker's time (py-spy,
bench/throughput.py).  Raising both thresholds bounds what a worker keeps to
``TRIM_THRESHOLD`` above its live heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

#: mallopt parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3

#: Blocks up to this size come from the heap (a 5,000-change batch buffer fits).
MMAP_THRESHOLD: Final = 16 << 20
#: Free heap kept at the top before any is returned.
TRIM_THRESHOLD: Final = 32 << 20


def keep_freed_memory() -> bool:
    """Apply the thresholds; False (and nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
