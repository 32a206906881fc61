"""The paper's learning-rate schedule: linear warm-up, then cosine decay to a floor.

Counted in epochs for a run of a fixed length. A run with a time budget counts optimizer steps
(:meth:`WarmupCosine.to_steps`) and re-fits the cosine whenever its planned length changes
(:meth:`WarmupCosine.refit`): the cosine is a function of the *fraction of the plan done*, and a
re-fit keeps the fraction reached so far and spreads the rest of the cosine over the new plan, so
the learning rate never jumps, only its slope changes.

:class:`AuthorsWarmupCosine` is the authors' overshooting warm-up and chained cosine (``--recipe authors``).
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """Multiplier of the base lr at tick ``t``: linear warm-up over ``warmup`` ticks, then cosine to ``min_lr``.

    A tick is an epoch (``per_step`` False) or an optimizer step. A callable object (not a lambda)
    so ``LambdaLR.state_dict()`` stores its attributes (plain numbers) and resuming restores it
    exactly, re-fits included.
    """

    def __init__(self, epochs: int, warmup: int, base_lr: float, min_lr: float) -> None:
        self.epochs = int(epochs)  # ticks planned in all
        self.warmup = int(warmup)
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)
        self.per_step = False
        self.anchor_tick: int | None = None  # the tick of the last re-fit (None: the cosine starts after warm-up)
        self.anchor_fraction = 0.0  # the cosine's progress at ``anchor_tick``

    def progress(self, tick: int) -> float:
        """How far along the cosine ``tick`` is, 0 (peak lr) to 1 (``min_lr``)."""
        start = self.warmup if self.anchor_tick is None else self.anchor_tick
        span = max(1, self.epochs - 1 - start)
        t = self.anchor_fraction + (1.0 - self.anchor_fraction) * (tick - start) / span
        return min(1.0, max(0.0, t))

    def lr(self, epoch: int) -> float:
        """Learning rate used during tick ``epoch`` (0-based)."""
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / (self.warmup + 1)
        t = self.progress(epoch)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def refit(self, now: int, total: int) -> None:
        """Plan ``total`` ticks in all from tick ``now`` on, keeping the lr of tick ``now`` unchanged."""
        if now > self.warmup:
            self.anchor_fraction = self.progress(now)
            self.anchor_tick = int(now)
        self.epochs = max(int(total), int(now) + 1)

    def to_steps(self, steps_per_epoch: int, warmup_steps: int) -> None:
        """Count optimizer steps instead of epochs (a run not started yet)."""
        self.epochs = int(self.epochs) * int(steps_per_epoch)
        self.warmup = int(warmup_steps)
        self.per_step = True
        self.anchor_tick, self.anchor_fraction = None, 0.0

    def __call__(self, epoch: int) -> float:
        return self.lr(epoch) / self.base_lr


def default_warmup(epochs: int) -> int:
    """Warm-up length: the paper's 10 of 300 epochs, scaled down for shorter runs."""
    return min(10, max(0, round(epochs / 30)))


def build_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup: int, base_lr: float,
                    min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch ``LambdaLR`` following :class:`WarmupCosine`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(epochs, warmup, base_lr, min_lr))


class AuthorsWarmupCosine(WarmupCosine):
    """The authors' learning-rate curve (their ``utils/optimizers/schedulers.py`` and ``utils/train_*.py``).

    Their warm-up is a ``LambdaLR`` with factor ``(epoch + 1) / warmup``, stepped after each of the
    first ``warmup`` epochs, so the epoch after it runs at ``(warmup + 1) / warmup`` times the base
    rate (2.75e-4 for 2.5e-4 and 10 epochs); a ``CosineAnnealingLR(T_max = epochs - warmup,
    eta_min = min_lr)`` built on the same optimizer then takes over, and its chained form decays from
    that rate: ``min_lr + (peak - min_lr) (1 + cos(pi t / T_max)) / 2`` at ``t = epoch - warmup``,
    reaching ``min_lr`` after the last epoch. Without warm-up the peak is the base rate. A
    :class:`WarmupCosine` in all else, so a time budget counts it in steps and re-fits it the same way.
    """

    @property
    def peak_lr(self) -> float:
        """The rate of the first epoch after warm-up: ``base * (warmup + 1) / warmup``."""
        return self.base_lr * (self.warmup + 1) / self.warmup if self.warmup > 0 else self.base_lr

    def progress(self, tick: int) -> float:
        """As :meth:`WarmupCosine.progress`, with their span (``min_lr`` is reached after the last tick)."""
        start = self.warmup if self.anchor_tick is None else self.anchor_tick
        span = max(1, self.epochs - start)
        t = self.anchor_fraction + (1.0 - self.anchor_fraction) * (tick - start) / span
        return min(1.0, max(0.0, t))

    def lr(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (0-based); ``epoch == epochs`` gives the final ``min_lr``."""
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / self.warmup
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * self.progress(epoch)))


def apply_current_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set the optimizer's lr to what ``scheduler`` gives for its current tick (after changing its lambda)."""
    tick = scheduler.last_epoch
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(tick)
