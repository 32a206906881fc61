"""MONAI preprocessing built from a plan, shared by training, validation and prediction.

Interface:

* :func:`inference_transforms` ``(plan) -> Compose`` -- key ``"image"`` (a list of file paths, one
  per channel, in ``plan["channel_names"]`` order). Invertible: after predicting into ``"pred"``,
  ``monai.transforms.Invertd(keys="pred", transform=<the same Compose>, orig_keys="image",
  nearest_interp=True)`` maps the prediction back to the original file's grid (orientation,
  spacing and the foreground crop are undone).
* :func:`training_transforms` ``(plan) -> (deterministic, random)`` -- keys ``"image"`` and
  ``"label"``; the deterministic part is what gets cached.
* :func:`validation_transforms` ``(plan) -> Compose`` -- keys ``"image"`` and ``"label"``, no padding,
  no randomness.

All three run the same chain: ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``Orientationd("RAS")``
-> ``CropForegroundd`` (body mask, see :class:`ForegroundMask`) -> ``Spacingd`` (image bilinear,
label nearest) -> :class:`NormalizeChannelsd` (per-channel scheme and statistics from the plan).

A plan is a JSON-serialisable dict (see :mod:`veloxseg.data.plan`) with at least
``channel_names``, ``spacing`` (target spacing in mm, RAS array-axis order), ``patch_size`` and
``normalization`` (one dict per channel: ``{"scheme": "ct", "lower", "upper", "mean", "std"}``,
``{"scheme": "zscore"}`` or ``{"scheme": "none"}``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotated,
    Spacingd,
    SpatialPadd,
)

#: CT voxels above this (HU) count as body when cropping to the foreground
CT_BODY_THRESHOLD = -500.0


def normalization_scheme(channel_name: str) -> str:
    """nnU-Net's choice by channel name: ``"ct"`` for CT, ``"none"`` for noNorm, else ``"zscore"``."""
    name = channel_name.strip().lower()
    if name == "ct":
        return "ct"
    if name in ("nonorm", "none"):
        return "none"
    return "zscore"


class ForegroundMask:
    """Mask used to crop to the foreground: CT body (> -500 HU) if there is a CT channel, else non-zero voxels.

    PET is positive almost everywhere and MRI that is z-scored inside the brain is negative inside
    it, so "any channel > 0" (MONAI's default) would not crop; this mask does.
    """

    def __init__(self, ct_channels: Sequence[int] = (), ct_threshold: float = CT_BODY_THRESHOLD) -> None:
        self.ct_channels = list(ct_channels)
        self.ct_threshold = float(ct_threshold)

    def __call__(self, img: Any) -> Any:
        if self.ct_channels:
            mask = img[self.ct_channels] > self.ct_threshold
        else:
            mask = img != 0
        mask = mask.any(0, keepdim=True) if isinstance(mask, torch.Tensor) else mask.any(0, keepdims=True)
        if not mask.any():  # no body (e.g. a CT of air only): keep the whole extent rather than nothing
            mask = mask | True
        return mask

    def is_empty(self, img: Any) -> bool:
        """True when ``img`` has no foreground, so the crop keeps the whole volume."""
        if self.ct_channels:
            return not bool((img[self.ct_channels] > self.ct_threshold).any())
        return not bool((img != 0).any())


def foreground_mask(plan: Mapping[str, Any]) -> ForegroundMask:
    """The :class:`ForegroundMask` for a plan's channels."""
    ct = [i for i, n in enumerate(plan["channel_names"]) if normalization_scheme(n) == "ct"]
    return ForegroundMask(ct, plan.get("ct_body_threshold", CT_BODY_THRESHOLD))


def normalization_problem(normalization: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a plan's normalisation cannot be applied (an unknown scheme, CT statistics missing), or None."""
    for c, norm in enumerate(normalization):
        scheme = norm.get("scheme")
        if scheme not in ("ct", "zscore", "none"):
            return f"channel {c}: unknown normalisation scheme {scheme!r}"
        if scheme == "ct" and any(norm.get(k) is None for k in ("lower", "upper", "mean", "std")):
            return (f"channel {c}: the CT normalisation statistics are unknown (a checkpoint imported from the "
                    f"authors' code without them); import it again with --ct-statistics MEAN STD P0.5 P99.5 "
                    f"or --ct-statistics-from DATASET")
    return None


def normalize_array(image: torch.Tensor | np.ndarray, normalization: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Normalise a ``(C, ...)`` image channel by channel with the plan's schemes."""
    img = torch.as_tensor(image, dtype=torch.float32).clone()
    if img.shape[0] != len(normalization):
        raise ValueError(f"image has {img.shape[0]} channels, the plan normalises {len(normalization)}")
    problem = normalization_problem(normalization)
    if problem is not None:
        raise ValueError(problem)
    for c, norm in enumerate(normalization):
        scheme = norm["scheme"]
        x = img[c]
        if scheme == "ct":
            x = x.clamp(float(norm["lower"]), float(norm["upper"]))
            img[c] = (x - float(norm["mean"])) / max(float(norm["std"]), 1e-8)
        elif scheme == "zscore":
            img[c] = (x - x.mean()) / max(float(x.std()), 1e-8)
        elif scheme != "none":
            raise ValueError(f"unknown normalisation scheme {scheme!r}")
    return img


class NormalizeChannelsd(MapTransform):
    """Per-channel normalisation as nnU-Net does it (not inverted: predictions do not need it).

    ``ct``: clip to the dataset's foreground 0.5/99.5 percentiles, then z-score with the dataset's
    foreground mean and std. ``zscore``: z-score with this image's own mean and std (PET, MRI).
    ``none``: unchanged.
    """

    def __init__(self, keys: KeysCollection, normalization: Sequence[Mapping[str, Any]],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalization = [dict(n) for n in normalization]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            out = normalize_array(img, self.normalization)
            if hasattr(img, "copy_meta_from"):  # keep the MetaTensor's metadata and transform trace
                img = img.clone()
                img.data = out
                d[key] = img
            else:
                d[key] = out
        return d


def load_images(keys: Sequence[str]) -> LoadImaged:
    """MONAI's ``LoadImaged`` for our NIfTI files.

    MONAI builds every reader it knows; with pydicom installed (the ``dicom`` extra) that includes its
    GPU DICOM reader, which warns and logs that nvImageCodec is unavailable. We never read DICOM
    through MONAI (:mod:`veloxseg.dicom` does), so that one notice is kept from the user.
    """
    import logging
    import warnings

    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
            return LoadImaged(keys=list(keys), image_only=True)
    finally:
        logger.setLevel(level)


def _base(plan: Mapping[str, Any], keys: Sequence[str]) -> list:
    with_label = "label" in keys
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    chain = [
        load_images(keys),
        EnsureChannelFirstd(keys=list(keys)),
        Orientationd(keys=list(keys), axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if plan.get("crop_foreground", True):
        chain.append(CropForegroundd(keys=list(keys), source_key="image", select_fn=foreground_mask(plan),
                                     margin=0, allow_smaller=True))
    chain += [
        Spacingd(keys=list(keys), pixdim=tuple(float(s) for s in plan["spacing"]), mode=modes, dtype=torch.float32),
        NormalizeChannelsd(keys="image", normalization=plan["normalization"]),
        EnsureTyped(keys=list(keys), dtype=(torch.float32, torch.uint8)[: len(keys)], track_meta=True),
    ]
    return chain


def inference_transforms(plan: Mapping[str, Any]) -> Compose:
    """Image-only preprocessing for prediction; invert a ``"pred"`` with ``Invertd(orig_keys="image")``."""
    return Compose(_base(plan, ["image"]))


def validation_transforms(plan: Mapping[str, Any]) -> Compose:
    """Image and label preprocessing for validation (deterministic, no padding)."""
    return Compose(_base(plan, ["image", "label"]))


def rotation_axis(spacing: Sequence[float]) -> int:
    """Axis rotated about: the coarsest one (in-plane rotation of anisotropic data), the last if isotropic."""
    sp = list(spacing)
    return max(range(3), key=lambda i: (sp[i], i))


def training_transforms(plan: Mapping[str, Any], num_samples: int = 2, flips: bool = True,
                        rotate_about: int | None = None) -> tuple[Compose, Compose]:
    """``(deterministic, random)`` training chains; cache the first, apply the second every epoch.

    Random part: ``RandCropByPosNegLabeld`` (patch size, positive:negative centres 1:1,
    ``num_samples`` crops per volume), ``RandRotated`` within +-15 degrees about one axis with
    probability 0.5 (``rotate_about``, by default :func:`rotation_axis` of the plan's spacing), and
    with ``flips`` ``RandFlipd`` on each axis with probability 0.5.
    """
    patch = [int(p) for p in plan["patch_size"]]
    keys = ["image", "label"]
    deterministic = Compose(_base(plan, keys) + [SpatialPadd(keys=keys, spatial_size=patch, mode="constant")])
    angle = np.deg2rad(15.0)
    ranges = [0.0, 0.0, 0.0]
    ranges[rotation_axis(plan["spacing"]) if rotate_about is None else int(rotate_about)] = angle
    chain = [
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=patch, pos=1, neg=1,
                               num_samples=num_samples, image_key="image", image_threshold=-1e9,
                               allow_smaller=False),
        RandRotated(keys=keys, range_x=ranges[0], range_y=ranges[1], range_z=ranges[2], prob=0.5,
                    mode=("bilinear", "nearest"), padding_mode="border", keep_size=True),
    ]
    if flips:
        chain += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    random = Compose([*chain, EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False)])
    return deterministic, random
