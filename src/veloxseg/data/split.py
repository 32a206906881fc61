"""Train/validation splits of case names: k-fold (nnU-Net's 5 folds), a held-out fraction, or the authors' rule."""

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


#: the authors' ``train_rate`` and ``val_rate`` (``config/train_config_bs4.json``); the rest is their test set
AUTHORS_TRAIN_RATE, AUTHORS_VAL_RATE = 0.6, 0.2


def authors_split(names: Sequence[str], train_rate: float = AUTHORS_TRAIN_RATE,
                  val_rate: float = AUTHORS_VAL_RATE) -> tuple[list[str], list[str]]:
    """``(train, val)`` by the authors' rule: the sorted cases, the first ``int(train_rate * n)`` for
    training, the next up to ``int((train_rate + val_rate) * n)`` for validation; the rest (their test
    set) is left out of both."""
    names = sorted(names)
    n = len(names)
    first, second = int(train_rate * n), int((train_rate + val_rate) * n)
    return names[:first], names[first:second]
