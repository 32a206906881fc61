"""Predicting a case with a channel file absent, with a model trained with ``--modality-dropout``.

Such a model saw every channel group zeroed after normalisation during training
(:mod:`veloxseg.training.modality`); prediction does the same: the absent channel is a placeholder
through the preprocessing and is set to zero after normalisation. The placeholder only steers the
foreground crop: an absent CT marks as body every voxel where a present channel is non-zero (so the
crop follows the present channels), any other absent channel is zero (it adds nothing to the mask).
The console says which channel was absent and ``<case>.json`` beside the label map records it.

A model trained without modality dropout never saw a channel missing: a case without one of its
files is an error saying so and how to train a model that accepts it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

#: how to train a model that accepts a missing channel (said in the errors)
TRAIN_HINT = ("train one that is with `veloxseg train DATASET --output RUN_DIR --modality-dropout 0.3` "
              "(each channel zeroed in 30% of the samples, never all)")
CT_BODY_HU, CT_AIR_HU = 0.0, -1000.0


def modality_dropout(plan: Mapping[str, Any]) -> float:
    """The modality dropout a model was trained with (0: none)."""
    return float(plan.get("modality_dropout") or 0.0)


def allows_missing(predictor: Any) -> bool:
    """True when every model of ``predictor`` (a :class:`~.predictor.Predictor` or an ensemble) was trained with
    modality dropout, so a case may lack channel files."""
    return all(modality_dropout(m.model.plan) for m in getattr(predictor, "members", [predictor]))


def not_trained_message(what: str) -> str:
    """The error for a missing channel and a model trained without modality dropout."""
    return f"{what}; this model was not trained to segment with a channel missing: provide the file, or {TRAIN_HINT}"


def check_missing_allowed(plan: Mapping[str, Any], case: str, missing: Sequence[int], channel_names: Sequence[str],
                          where: str | os.PathLike = "") -> None:
    """An :class:`InputError` when ``missing`` channels are absent and the model was not trained for it."""
    if missing and not modality_dropout(plan):
        names = ", ".join(f"channel {c} ({channel_names[c]})" for c in missing)
        raise InputError(not_trained_message(f"{where or case}: case {case} lacks {names}"))


def placeholders(arrays: Sequence[np.ndarray | None], plan: Mapping[str, Any]) -> list[np.ndarray]:
    """``arrays`` (one per channel, None where absent) with each absent channel replaced by its placeholder."""
    from ..data.preprocessing import normalization_scheme

    present = [a for a in arrays if a is not None]
    if not present:
        raise InputError("no channel present: nothing to segment")
    shape = present[0].shape
    names = plan["channel_names"]
    out = []
    for c, a in enumerate(arrays):
        if a is not None:
            out.append(a)
        elif normalization_scheme(names[c]) == "ct":
            inside = np.zeros(shape, dtype=bool)
            for p in present:
                inside |= p != 0
            out.append(np.where(inside, CT_BODY_HU, CT_AIR_HU).astype(np.float32))
        else:
            out.append(np.zeros(shape, dtype=np.float32))
    return out


def missing_info(missing: Sequence[int], channel_names: Sequence[str], plan: Mapping[str, Any]) -> dict[str, Any]:
    """What the sidecar and the result's ``info`` say about the absent channels."""
    return {"missing_channels": [{"index": int(c), "name": str(channel_names[c])} for c in missing],
            "handling": "zeroed after normalisation, as in training with modality dropout",
            "modality_dropout": modality_dropout(plan)}


def sidecar_path(output_dir: str | os.PathLike, case: str) -> Path:
    """``<case>.json`` beside ``<case>.nii.gz``."""
    return Path(output_dir) / f"{case}.json"


def write_sidecar(path: str | os.PathLike, case: str, info: Mapping[str, Any]) -> Path:
    """Write ``<case>.json`` atomically: the case and which channels were absent."""
    from ..io import atomic_path

    path = Path(path)
    with atomic_path(path, ".json") as tmp:
        Path(tmp).write_text(json.dumps({"case": case, **info}, indent=2) + "\n")
    return path
