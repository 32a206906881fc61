"""The paper's learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """Multiplier of the base lr at ``epoch``: linear warm-up over ``warmup`` epochs, then cosine to ``min_lr``.

    A callable object (not a lambda) so ``LambdaLR.state_dict()`` stores it and resuming restores
    it exactly.
    """

    def __init__(self, epochs: int, warmup: int, base_lr: float, min_lr: float) -> None:
        self.epochs = int(epochs)
        self.warmup = int(warmup)
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)

    def lr(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (0-based)."""
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / (self.warmup + 1)
        span = max(1, self.epochs - self.warmup - 1)
        t = min(1.0, (epoch - self.warmup) / span)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def __call__(self, epoch: int) -> float:
        return self.lr(epoch) / self.base_lr


def default_warmup(epochs: int) -> int:
    """Warm-up length: the paper's 10 of 300 epochs, scaled down for shorter runs."""
    return min(10, max(0, round(epochs / 30)))


def build_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup: int, base_lr: float,
                    min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch ``LambdaLR`` following :class:`WarmupCosine`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(epochs, warmup, base_lr, min_lr))
