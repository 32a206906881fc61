"""The authors' preprocessing of each dataset, as a veloxseg plan (:mod:`veloxseg.data.plan`).

What their code does (commit a668623): the data are resampled to the spacing of
``config/train_config_bs4.json`` beforehand, then ``preprocess/normalization_CT_PET.py`` /
``normalization_MRI.py`` normalise each image: CT with nnU-Net's CT scheme (clip to the 0.5 and 99.5
percentiles of the foreground (label > 0) CT voxels of their whole training set, then subtract that
set's mean and divide by its std); PET and every MRI sequence by the mean and std of the whole image
(their ``zscore`` masks ``seg >= 0`` of a boolean mask, which is every voxel). The network reads the
channels in their data loaders' order -- CT first, then PET. Prediction
(``utils/inference_petct.py``) runs a sliding window over the whole image: no foreground crop.

Their CT statistics are not published; an imported PET/CT checkpoint holds them only when given
(:func:`ct_normalization`), and prediction refuses a plan without them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError

#: per preset: their channel order (names ours), labels after their remapping, spacing (mm)
AUTHORS_DATA: dict[str, dict[str, Any]] = {
    # AutoPET-II: their loaders read *_0001 (CT) then *_0000 (PET); labels: any lesion
    "autopet": {"channel_names": ["CT", "PET"], "labels": {"background": 0, "lesion": 1},
                "spacing": [2.03642, 2.03642, 3.0]},
    # HECKTOR 2022: *CT then *PT; labels != 0 become 1 (GTVp and GTVn together)
    "hecktor": {"channel_names": ["CT", "PET"], "labels": {"background": 0, "GTV": 1}, "spacing": [1.0, 1.0, 1.0]},
    # BraTS 2021: flair, t1, t1ce, t2; label 4 (enhancing) becomes 3
    "brats": {"channel_names": ["FLAIR", "T1", "T1c", "T2"],
              "labels": {"background": 0, "necrotic_core": 1, "edema": 2, "enhancing": 3},
              "spacing": [1.0, 1.0, 1.0]},
}

#: the keys of their printed ``intensity_statistics`` our CT entry needs, and our names for them
_CT_KEYS = {"mean": "mean", "std": "std", "percentile_00_5": "lower", "percentile_99_5": "upper"}


def ct_normalization(statistics: Mapping[str, float] | None) -> dict[str, Any]:
    """The plan's CT entry from ``{"mean", "std", "lower", "upper"}`` (or their ``percentile_00_5`` /
    ``percentile_99_5`` names); without statistics, an entry prediction refuses until they are given."""
    if statistics is None:
        return {"scheme": "ct", "mean": None, "std": None, "lower": None, "upper": None}
    values = {}
    for theirs, ours in _CT_KEYS.items():
        value = statistics.get(ours, statistics.get(theirs))
        if value is None:
            raise InputError(f"CT statistics lack {ours!r} (or {theirs!r})")
        values[ours] = float(value)
    if not values["lower"] < values["upper"] or not values["std"] > 0:
        raise InputError(f"CT statistics {values}: need lower < upper and std > 0")
    return {"scheme": "ct", **values}


def ct_statistics_of(dataset: str | os.PathLike) -> dict[str, float]:
    """CT foreground statistics of an nnU-Net dataset, computed as their script does (label > 0 voxels)."""
    from ..data.dataset import validate_dataset
    from ..data.plan import compute_fingerprint

    ds = validate_dataset(dataset)
    stats = compute_fingerprint(ds)["ct_statistics"]
    if not stats:
        raise InputError(f"{dataset}: has no CT channel to compute CT statistics from")
    return dict(next(iter(stats.values())))


def authors_plan(preset: str, patch_size: Sequence[int],
                 ct_statistics: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The plan that predicts as their pipeline does for ``preset``'s dataset."""
    data = AUTHORS_DATA[preset]
    normalization = [ct_normalization(ct_statistics) if name == "CT" else {"scheme": "zscore"}
                     for name in data["channel_names"]]
    return {"channel_names": list(data["channel_names"]), "labels": dict(data["labels"]),
            "spacing": list(data["spacing"]), "patch_size": [int(p) for p in patch_size],
            "normalization": normalization, "crop_foreground": False}
