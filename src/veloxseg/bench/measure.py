"""Timing, peak-memory and machine-ceiling measurements used by ``veloxseg bench``."""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

CONV_CEILING = dict(channels=32, size=48, kernel=5)
MATMUL_CEILING = 4096


def sync(device: str) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_repeated(fn: Callable[[], object], seconds: float, min_reps: int = 3, warmup_seconds: float = 1.0,
                  device: str = "cpu") -> dict[str, Any]:
    """Warm up (at least one call, about ``warmup_seconds``), then time calls for ``seconds`` and ``min_reps``.

    Returns ``median``/``min``/``max`` seconds per call and the number of timed calls ``reps``.
    """
    start = time.perf_counter()
    while True:
        fn()
        sync(device)
        if time.perf_counter() - start >= warmup_seconds:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, min_reps) or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "reps": len(times)}


@torch.no_grad()
def ceilings(seconds: float, min_reps: int = 3, device: str = "cpu", bf16: bool = False) -> dict[str, dict[str, float]]:
    """This machine's dense-compute ceiling with the current thread setting (one measurement).

    ``conv``: a 5x5x5 conv3d, 32 -> 32 channels on a 48^3 map, padding 2 (oneDNN on CPU);
    ``matmul``: a 4096 x 4096 float32 matmul. Each gives ``gflops`` (at the median time) and ``seconds``.
    With ``bf16``, also ``conv_bf16``: the same conv in bfloat16, channels-last (what the bf16 rows are read against).
    """
    c, s, k = CONV_CEILING["channels"], CONV_CEILING["size"], CONV_CEILING["kernel"]
    x = torch.randn(1, c, s, s, s, device=device)
    w = torch.randn(c, c, k, k, k, device=device)
    conv_flops = 2 * c * c * k**3 * s**3
    n = MATMUL_CEILING
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    mm_flops = 2 * n**3
    out = {}
    cases = [("conv", lambda: F.conv3d(x, w, padding=k // 2), conv_flops), ("matmul", lambda: a @ b, mm_flops)]
    if bf16:
        xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        wb = w.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        cases.append(("conv_bf16", lambda: F.conv3d(xb, wb, padding=k // 2), conv_flops))
    for name, fn, flops in cases:
        t = time_repeated(fn, seconds, min_reps, warmup_seconds=0.0, device=device)
        out[name] = {"gflops": flops / t["median"] / 1e9, "seconds": t["median"], "flops": flops}
    return out


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (since the last :func:`reset_peak_rss`)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def num_windows(volume: list[int], roi: list[int], overlap: float) -> int:
    """Number of sliding windows MONAI uses for ``volume`` (spatial) with ``roi`` and ``overlap``."""
    n = 1
    for s, r in zip(volume, roi):
        if s <= r:
            continue
        interval = max(int(r * (1 - overlap)), 1)
        n *= math.ceil((s - r) / interval) + 1
    return n
