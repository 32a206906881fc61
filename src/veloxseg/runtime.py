"""Process-level settings for CPU work: the C allocator's large-block policy.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults a block of
more than a few MB is served by a fresh ``mmap`` until the dynamic threshold has grown past it,
and free memory at the top of the heap is handed back to the system soon after, so each
training step touches new pages for its 14-27 MB activations and pays a page fault per 4 KB
(a first ``fill_`` of a 14 MB tensor took 5 ms instead of 1). :func:`tune_allocator` keeps
blocks below 64 MB in the heap and the heap's free memory in the process: a VeloxSeg training
step (batch 2, 96^3) became about 10 % faster for about the same peak RSS (it is reused rather
than returned and faulted in again). Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def tune_allocator(mmap_threshold: int = 64 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Set glibc's mmap and trim thresholds for this process (once); ``False`` where it does not apply."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
