"""``--precision auto``: bf16 only where the CPU computes it natively and it gives the same labels as fp32.

The CPU's flags decide whether bf16 is tried at all (:func:`veloxseg.inference.cpu.native_bf16`); then the
first batch of windows is computed in both precisions, and bf16 is kept only if its labels (the argmax
over classes) agree with fp32's on at least :data:`AUTO_MIN_AGREEMENT` of the voxels. Either way the
choice is said in one line. Softmax and blending always run in float32: the engines return float32 logits.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

#: the fraction of voxels whose label must be the same in bf16 as in fp32 for ``auto`` to keep bf16
AUTO_MIN_AGREEMENT = 0.995


def label_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of voxels whose argmax over classes (dim 1) is the same in logits ``a`` and ``b``."""
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def choose(fp32_logits: torch.Tensor, bf16_logits: torch.Tensor, minimum: float = AUTO_MIN_AGREEMENT) -> tuple[str, float]:
    """``("bf16", agreement)`` if bf16's labels agree with fp32's on at least ``minimum``, else ``("fp32", agreement)``;
    logs the choice in one line."""
    agreement = label_agreement(fp32_logits.float(), bf16_logits.float())
    chosen = "bf16" if agreement >= minimum else "fp32"
    log.info("precision auto: %s (the CPU has native bf16; on the first windows bf16 labels agree with fp32 on %.2f%% "
             "of voxels, %s %.1f%%)", chosen, 100 * agreement, ">=" if chosen == "bf16" else "<", 100 * minimum)
    return chosen, agreement
