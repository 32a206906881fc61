"""Train/validation splits of case names: k-fold (nnU-Net's 5 folds), a held-out fraction, or the authors' rule.

Splits files use nnU-Net's ``splits_final.json`` format, a list with one ``{"train": [...], "val": [...]}``
per fold, so an existing nnU-Net split carries over (``veloxseg train --splits FILE``) and
``veloxseg train --fold all`` writes its ``RUN_DIR/splits.json`` in the same format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def kfold_splits(names: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """Every fold of :func:`split_cases`, as nnU-Net's ``splits_final.json``: ``[{"train": [...], "val": [...]}, ...]``."""
    out = []
    for fold in range(num_folds):
        train, val = split_cases(names, fold, seed=seed, num_folds=num_folds)
        out.append({"train": train, "val": val})
    return out


def check_splits(splits: Any, names: Sequence[str] | None = None, where: str = "splits") -> list[dict[str, list[str]]]:
    """``splits`` as a list of ``{"train", "val"}`` lists of case names, or an :class:`InputError` naming ``where``.

    With ``names`` (the dataset's cases) every name in the splits must be one of them.
    """
    from ..errors import InputError

    if not isinstance(splits, list) or not splits:
        raise InputError(f"{where}: expected nnU-Net's splits format, a non-empty list of "
                         f'{{"train": [...], "val": [...]}}, one per fold')
    out = []
    known = set(names) if names is not None else None
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or not all(isinstance(fold.get(key), list) for key in ("train", "val")):
            raise InputError(f'{where}: fold {k} is not {{"train": [...], "val": [...]}}')
        train, val = [str(n) for n in fold["train"]], [str(n) for n in fold["val"]]
        if not train:
            raise InputError(f"{where}: fold {k} has no training cases")
        both = sorted(set(train) & set(val))
        if both:
            raise InputError(f"{where}: fold {k} has {', '.join(both[:3])} both in train and in val")
        if known is not None:
            unknown = sorted((set(train) | set(val)) - known)
            if unknown:
                raise InputError(f"{where}: fold {k} names case(s) the dataset does not hold: "
                                 f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        out.append({"train": train, "val": val})
    return out


def read_splits(path: str | os.PathLike, names: Sequence[str] | None = None) -> list[dict[str, list[str]]]:
    """Read a ``splits_final.json`` (nnU-Net's format, or one written by ``veloxseg train --fold all``)."""
    from ..errors import InputError

    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: splits file not found") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{p}: not a readable JSON splits file ({err})") from None
    return check_splits(data, names, str(p))


def write_splits(path: str | os.PathLike, splits: Sequence[dict[str, list[str]]]) -> Path:
    """Write ``splits`` atomically in nnU-Net's ``splits_final.json`` format."""
    from ..io import atomic_path

    p = Path(path)
    with atomic_path(p, ".json") as tmp:
        Path(tmp).write_text(json.dumps([{"train": list(s["train"]), "val": list(s["val"])} for s in splits],
                                        indent=2))
    return p


def split_from_file(path: str | os.PathLike, names: Sequence[str], fold: int | None) -> tuple[list[str], list[str]]:
    """``(train, val)`` of fold ``fold`` of a splits file, checked against the dataset's case ``names``."""
    from ..errors import InputError

    splits = read_splits(path, names)
    if fold is None or not 0 <= fold < len(splits):
        raise InputError(f"{path}: holds {len(splits)} fold(s); choose --fold 0..{len(splits) - 1} (or all)"
                         if fold is not None else f"{path}: --splits needs --fold K or --fold all")
    return list(splits[fold]["train"]), list(splits[fold]["val"])
