"""Train/validation splits of case names: k-fold (nnU-Net's 5 folds) or a held-out fraction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_SEED = 12345
NUM_FOLDS = 5


def split_cases(names: Sequence[str], fold: int | None = None, val_fraction: float = 0.2,
                seed: int = SPLIT_SEED, num_folds: int = NUM_FOLDS) -> tuple[list[str], list[str]]:
    """``(train, val)`` case names.

    ``fold`` in ``0..num_folds-1``: the cases are shuffled with ``seed`` and fold ``k`` holds out the
    ``k``-th of ``num_folds`` near-equal chunks. Otherwise ``val_fraction`` of the cases (at least
    one when there are two or more and the fraction is positive) is held out. ``fold=-1`` or
    ``val_fraction=0`` trains on everything with no validation.
    """
    names = sorted(names)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    if fold is not None and fold >= 0:
        if fold >= num_folds:
            raise ValueError(f"fold must be in 0..{num_folds - 1}, got {fold}")
        if len(names) < num_folds:
            raise ValueError(f"{num_folds}-fold cross-validation needs at least {num_folds} cases, got {len(names)}")
        chunks = np.array_split(np.arange(len(order)), num_folds)
        val = sorted(order[i] for i in chunks[fold])
    elif fold == -1 or val_fraction <= 0 or len(names) < 2:
        val = []
    else:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n_val = min(len(names) - 1, max(1, int(round(len(names) * val_fraction))))
        val = sorted(order[:n_val])
    train = [n for n in names if n not in set(val)]
    return train, val
