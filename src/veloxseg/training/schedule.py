"""Learning-rate schedules: veloxseg's linear warm-up then cosine decay to a floor (:class:`WarmupCosine`),
and the authors' overshooting warm-up and chained cosine (:class:`AuthorsWarmupCosine`)."""

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


class AuthorsWarmupCosine:
    """The authors' learning-rate curve (their ``utils/optimizers/schedulers.py`` and ``utils/train_*.py``).

    Their warm-up is a ``LambdaLR`` with factor ``(epoch + 1) / warmup``, stepped after each of the
    first ``warmup`` epochs, so the epoch after it runs at ``(warmup + 1) / warmup`` times the base
    rate (2.75e-4 for 2.5e-4 and 10 epochs); a ``CosineAnnealingLR(T_max = epochs - warmup,
    eta_min = min_lr)`` built on the same optimizer then takes over, and its chained form decays from
    that rate: ``min_lr + (peak - min_lr) (1 + cos(pi t / T_max)) / 2`` at ``t = epoch - warmup``,
    reaching ``min_lr`` after the last epoch. Without warm-up the peak is the base rate. Like
    :class:`WarmupCosine` a callable object with an ``epochs`` attribute (the time budget shortens it).
    """

    def __init__(self, epochs: int, warmup: int, base_lr: float, min_lr: float) -> None:
        self.epochs = int(epochs)
        self.warmup = int(warmup)
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)

    @property
    def peak_lr(self) -> float:
        """The rate of the first epoch after warm-up: ``base * (warmup + 1) / warmup``."""
        return self.base_lr * (self.warmup + 1) / self.warmup if self.warmup > 0 else self.base_lr

    def lr(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (0-based); ``epoch == epochs`` gives the final ``min_lr``."""
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / self.warmup
        span = max(1, self.epochs - self.warmup)
        t = min(1.0, (epoch - self.warmup) / span)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def __call__(self, epoch: int) -> float:
        return self.lr(epoch) / self.base_lr
