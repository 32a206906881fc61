"""``--precision auto``: bf16 only where the CPU computes it natively, it gives the same labels as fp32, and
it is faster.

The CPU's flags decide whether bf16 is tried at all (:func:`veloxseg.inference.cpu.native_bf16`); then the
first batch of windows is computed in both precisions (a warm-up call, then timed calls), and bf16 is kept
only if its labels (the argmax over classes) agree with fp32's on at least :data:`AUTO_MIN_AGREEMENT` of
the voxels **and** it runs at least :data:`AUTO_MIN_SPEEDUP` times as fast. Native bf16 units differ: on an
AMD Zen with AVX512-BF16 but no AMX the network measured slower in bf16 than in fp32 (docs/engines.md),
so the flags alone cannot decide. Either way the choice is said in one line. Softmax and blending always
run in float32: the engines return float32 logits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

#: the fraction of voxels whose label must be the same in bf16 as in fp32 for ``auto`` to keep bf16
AUTO_MIN_AGREEMENT = 0.995
#: how many times faster than fp32 bf16 must run on the first windows for ``auto`` to keep it
AUTO_MIN_SPEEDUP = 1.05


def timed(engine: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 2) -> tuple[torch.Tensor, float]:
    """``engine(x)`` as float32 on the CPU, and the fastest of ``repeats`` timed calls after a warm-up call."""
    out = engine(x).float().cpu()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        engine(x)
        best = min(best, time.perf_counter() - t)
    return out, best


def label_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of voxels whose argmax over classes (dim 1) is the same in logits ``a`` and ``b``."""
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def choose(fp32_logits: torch.Tensor, bf16_logits: torch.Tensor, minimum: float = AUTO_MIN_AGREEMENT,
           speedup: float | None = None, min_speedup: float | None = None) -> tuple[str, float]:
    """``("bf16", agreement)`` if bf16's labels agree with fp32's on at least ``minimum`` (and, when ``speedup``, the
    fp32 time over the bf16 time, is given, bf16 is at least ``min_speedup`` times as fast), else
    ``("fp32", agreement)``; logs the choice in one line."""
    min_speedup = AUTO_MIN_SPEEDUP if min_speedup is None else min_speedup
    agreement = label_agreement(fp32_logits.float(), bf16_logits.float())
    agrees = agreement >= minimum
    fast = speedup is None or speedup >= min_speedup
    chosen = "bf16" if agrees and fast else "fp32"
    speed = "" if speedup is None else (f"; bf16 runs {speedup:.2f}x as fast as fp32 here, "
                                        f"{'>=' if fast else '<'} {min_speedup:.2f}x")
    log.info("precision auto: %s (the CPU has native bf16; on the first windows bf16 labels agree with fp32 on %.2f%% "
             "of voxels, %s %.1f%%%s)", chosen, 100 * agreement, ">=" if agrees else "<", 100 * minimum, speed)
    return chosen, agreement
