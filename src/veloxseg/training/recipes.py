"""Training recipes by name: ``default`` (veloxseg's) and ``authors`` (what the authors' code does).

A :class:`Recipe` holds what the trainer does differently between the two: the learning-rate curve,
the augmentation (flips, the rotation axis), gradient clipping and mixed precision. Everything else
(AdamW at 2.5e-4 with weight decay 0.01, 300 epochs, 10 of warm-up, floor 6e-6, 2 volumes a step and
2 crops a volume drawn by ``RandCropByPosNegLabeld`` with positive:negative centres 1:1, rotation
within +-15 degrees with probability 0.5, the loss and its weights) is the same in both and in the
authors' ``config/train_config_bs4.json`` / ``utils/train_*.py`` (commit a668623).
docs/training.md tabulates the differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import AuthorsWarmupCosine, WarmupCosine


@dataclass(frozen=True)
class Recipe:
    """What a named recipe changes in :class:`~veloxseg.training.Trainer`.

    Attributes:
        name: the ``--recipe`` value.
        schedule: ``"warmup_cosine"`` (:class:`~.schedule.WarmupCosine`) or ``"authors"``
            (:class:`~.schedule.AuthorsWarmupCosine`).
        flips: random flips on each axis (probability 0.5 each).
        rotation_axis: ``"coarsest"`` (the plan's coarsest axis, the last when isotropic) or ``"last"``
            (the array's last axis: their ``RandRotated(range_z=...)``).
        grad_clip: max gradient norm, or None for no clipping.
        amp: mixed precision on CUDA (when ``--no-amp`` is not given); False: float32 throughout.
    """

    name: str
    schedule: str
    flips: bool
    rotation_axis: str
    grad_clip: float | None
    amp: bool

    def lr_lambda(self, epochs: int, warmup: int, base_lr: float,
                  min_lr: float) -> WarmupCosine | AuthorsWarmupCosine:
        """The per-epoch multiplier of the base rate (a ``LambdaLR`` callable with an ``epochs`` attribute)."""
        cls = AuthorsWarmupCosine if self.schedule == "authors" else WarmupCosine
        return cls(epochs, warmup, base_lr, min_lr)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, epochs: int, warmup: int, base_lr: float,
                        min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
        """A per-epoch ``LambdaLR`` following :meth:`lr_lambda`."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambda(epochs, warmup, base_lr, min_lr))


RECIPES: dict[str, Recipe] = {
    "default": Recipe("default", schedule="warmup_cosine", flips=True, rotation_axis="coarsest", grad_clip=12.0,
                      amp=True),
    "authors": Recipe("authors", schedule="authors", flips=False, rotation_axis="last", grad_clip=None, amp=False),
}


def get_recipe(name: str) -> Recipe:
    """A recipe by name, with an error listing the known ones."""
    try:
        return RECIPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None
