"""The recipe ``veloxseg train --time-budget`` uses: settings for minutes of CPU, not days of GPU.

The paper's recipe (300 epochs of one pass each, lr 2.5e-4, validation every 5 epochs, patches of
up to 96^3) is meant for a GPU. On a CPU budget of minutes it gives a few hundred optimizer steps
with a learning rate too low to use them, and an epoch of one pass gives 5 cases 3 steps but 500
cases 250. With a time budget, the settings the user did not give are taken from
:data:`BUDGET_RECIPE` instead -- the choices of ``veloxseg demo``, which reaches a held-out Dice
of about 0.7-0.76 in 7 minutes on a 2-core CPU (README):

* epochs of a fixed number of optimizer steps (50, about the demo's 70 steps between
  validations; a CPU step of 4 crops takes 0.3-1 s, so nnU-Net's 250 would be several minutes),
  as many as the budget allows (:mod:`veloxseg.training.budget`), so 5 cases and 500 both train;
* peak lr 2e-3 (cosine to 1e-5, one epoch of warm-up) instead of 2.5e-4;
* validation after every epoch (its cost is measured and kept within the budget);
* patches of at most 64x64x32 voxels (the demo's), chosen from the data as usual.

A flag given on the command line always wins over the recipe (``--epochs`` then caps the number
of epochs). Runs without a time budget keep the paper's recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: settings of a budgeted run, by TrainConfig field
BUDGET_RECIPE: dict[str, Any] = {
    "iterations": 50,  # optimizer steps per epoch
    "epochs": 100_000,  # no practical cap: the budget decides
    "lr": 2e-3,
    "min_lr": 1e-5,
    "warmup_epochs": 1,
    "val_every": 1,
    "patch_voxels": 64 * 64 * 32,
}

#: the flag that overrides each setting (settings without a flag: TrainConfig only)
FLAGS: dict[str, tuple[str, ...]] = {
    "iterations": ("iterations",), "epochs": ("epochs",), "lr": ("lr",), "val_every": ("val_every",),
    "patch_voxels": ("patch_size", "preset"),  # an explicit patch, or a preset's, is kept
}


def budget_recipe(given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of :data:`BUDGET_RECIPE` that ``given`` (the options set explicitly) leaves open."""
    return {key: value for key, value in BUDGET_RECIPE.items()
            if all(given.get(flag) is None for flag in FLAGS.get(key, ()))}
