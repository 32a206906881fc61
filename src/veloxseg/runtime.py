"""Process-level settings for CPU work: the C allocator's large-block policy, OpenMP's wait policy.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults a block of
more than a few MB is served by a fresh ``mmap`` until the dynamic threshold has grown past it,
and free memory at the top of the heap is handed back to the system soon after, so each
training step touches new pages for its 14-27 MB activations and pays a page fault per 4 KB
(a first ``fill_`` of a 14 MB tensor took 5 ms instead of 1). :func:`tune_allocator` keeps
blocks below 64 MB in the heap and the heap's free memory in the process: a VeloxSeg training
step (batch 2, 96^3) became about 10 % faster for about the same peak RSS (it is reused rather
than returned and faulted in again). Other C libraries (musl, macOS) are left alone.

OpenMP threads that wait for work spin by default. On a CPU that other processes also use, the
spinning threads burn the cores the working ones need and count against a CPU-time budget: with
2 threads beside one CPU-bound process a VeloxSeg training step cost 1.7-4.2 CPU seconds instead
of 0.43 (``experiments/omp_wait_policy.py``). :func:`prefer_passive_omp_wait` sets
``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep), which works only before the OpenMP runtime
is loaded, i.e. before ``import torch``; ``veloxseg train --time-budget`` and ``veloxseg demo``
call it first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
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


_omp_note: str | None = None


def prefer_passive_omp_wait() -> str:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets a policy; returns what applies (and why).

    Only effective before torch (and its OpenMP runtime) is loaded in this process.
    """
    global _omp_note
    if "OMP_WAIT_POLICY" in os.environ:
        _omp_note = f"{os.environ['OMP_WAIT_POLICY']} (from the environment)"
    elif "torch" in sys.modules:
        _omp_note = "default (torch was loaded before PASSIVE could be set)"
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        _omp_note = "PASSIVE (set by veloxseg)"
    return _omp_note


def omp_wait_policy() -> str:
    """The OpenMP wait policy of this process, as :func:`prefer_passive_omp_wait` or the environment left it."""
    if _omp_note is not None:
        return _omp_note
    value = os.environ.get("OMP_WAIT_POLICY")
    return f"{value} (from the environment)" if value else "default"
