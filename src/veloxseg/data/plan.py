"""Dataset fingerprint (computed once, stored with the run) and the plan derived from it.

The fingerprint holds each case's spacing and shape (in RAS axis order, after cropping to the
foreground) and, for CT channels, the intensity statistics of the voxels inside the label
(foreground) over the whole training set -- what nnU-Net's CT normalisation uses.

The plan (a JSON-serialisable dict, stored in every checkpoint) holds what preprocessing and the
network need: ``channel_names``, ``spacing`` (target, mm, RAS order), ``patch_size``,
``normalization`` (one entry per channel), ``crop_foreground``, ``ct_body_threshold`` and the
``fingerprint`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np

from ..io import read_header, read_nifti
from .dataset import Dataset
from .preprocessing import CT_BODY_THRESHOLD, ForegroundMask, normalization_scheme

#: nnU-Net's anisotropy threshold (ratio of spacings, and of voxel counts)
ANISO_THRESHOLD = 3.0
#: patch sizes are multiples of this (VeloxSeg's total stride: patch 4 x 2**3)
PATCH_MULTIPLE = 32
#: default voxel budget of an automatically chosen patch (96**3, the AutoPET configuration)
PATCH_VOXEL_BUDGET = 96**3
#: at most this many foreground voxels per case enter the CT statistics (random, seeded)
MAX_VOXELS_PER_CASE = 1_000_000


def ras_permutation(affine: np.ndarray) -> list[int]:
    """For each RAS output axis, the array axis it comes from (as ``Orientationd("RAS")`` reorders)."""
    ornt = nib.orientations.io_orientation(affine)
    perm = [0, 0, 0]
    for src, (dst, _) in enumerate(ornt):
        perm[int(dst)] = src
    return perm


def ct_statistics(values: np.ndarray) -> dict[str, float]:
    """nnU-Net's CT statistics of foreground intensities: mean, std, 0.5 and 99.5 percentiles."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no foreground voxels to compute CT statistics from")
    return {"mean": float(values.mean()), "std": float(values.std()),
            "lower": float(np.percentile(values, 0.5)), "upper": float(np.percentile(values, 99.5)),
            "min": float(values.min()), "max": float(values.max()), "count": int(values.size)}


def compute_fingerprint(ds: Dataset, seed: int = 1234) -> dict[str, Any]:
    """Spacings, shapes (RAS order, cropped to the foreground) and CT foreground statistics of ``ds``."""
    rng = np.random.default_rng(seed)
    ct_channels = [i for i, n in enumerate(ds.channel_names) if normalization_scheme(n) == "ct"]
    mask_fn = ForegroundMask(ct_channels)
    spacings, shapes, cropped = [], [], []
    ct_values: dict[int, list[np.ndarray]] = {c: [] for c in ct_channels}
    for case in ds.cases:
        header = read_header(case.images[0])
        perm = ras_permutation(header.affine)
        spacings.append([header.spacing[p] for p in perm])
        shapes.append([header.shape[p] for p in perm])
        chans = [read_nifti(p)[0] for p in case.images]
        image = np.stack(chans)
        fg = mask_fn(image)[0]
        if fg.any():
            idx = np.nonzero(fg)
            box = [int(i.max() - i.min() + 1) for i in idx]
        else:
            box = list(header.shape)
        cropped.append([box[p] for p in perm])
        if ct_channels:
            label = read_nifti(case.label, dtype=np.float32)[0] > 0
            if not label.any():
                label = fg
            for c in ct_channels:
                vals = chans[c][label]
                if vals.size > MAX_VOXELS_PER_CASE:
                    vals = rng.choice(vals, MAX_VOXELS_PER_CASE, replace=False)
                ct_values[c].append(vals)
    ct = {str(c): ct_statistics(np.concatenate(v)) for c, v in ct_values.items() if v}
    return {"cases": [c.name for c in ds.cases], "spacings": spacings, "shapes": shapes,
            "shapes_cropped": cropped, "ct_statistics": ct, "channel_names": list(ds.channel_names)}


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> list[float]:
    """Median spacing; on a strongly anisotropic axis the 10th percentile instead (nnU-Net's rule)."""
    sp = np.asarray(spacings, dtype=np.float64)
    target = np.median(sp, 0)
    size = np.median(np.asarray(shapes, dtype=np.float64), 0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[others])
    aniso_voxels = size[worst] * ANISO_THRESHOLD < min(size[others])
    if aniso_spacing and aniso_voxels:
        t = float(np.percentile(sp[:, worst], 10))
        if t < max(target[others]):
            t = max(max(target[others]), t) + 1e-5
        target[worst] = t
    return [round(float(t), 5) for t in target]


def choose_patch_size(median_shape: Sequence[float], budget: int = PATCH_VOXEL_BUDGET,
                      multiple: int = PATCH_MULTIPLE, max_size: int = 192) -> list[int]:
    """A patch divisible by ``multiple`` close to the median (resampled) shape, within ``budget`` voxels."""
    patch = [int(min(max_size, max(multiple, multiple * round(s / multiple)))) for s in median_shape]
    while int(np.prod(patch)) > budget and max(patch) > multiple:
        i = int(np.argmax(patch))
        patch[i] -= multiple
    return patch


def make_plan(ds: Dataset, fingerprint: Mapping[str, Any], spacing: Sequence[float] | None = None,
              patch_size: Sequence[int] | None = None, budget: int = PATCH_VOXEL_BUDGET) -> dict[str, Any]:
    """The plan for ``ds``: target spacing and patch size (chosen unless given) and normalisation."""
    spacing = [float(s) for s in spacing] if spacing is not None else \
        target_spacing(fingerprint["spacings"], fingerprint["shapes_cropped"])
    if patch_size is None:
        shapes = np.asarray(fingerprint["shapes_cropped"], dtype=np.float64)
        spacings = np.asarray(fingerprint["spacings"], dtype=np.float64)
        resampled = np.median(shapes * spacings / np.asarray(spacing), 0)
        patch_size = choose_patch_size(resampled, budget)
    patch_size = [int(p) for p in patch_size]
    if any(p % PATCH_MULTIPLE or p <= 0 for p in patch_size):
        raise ValueError(f"patch size {patch_size} must be positive multiples of {PATCH_MULTIPLE}")
    normalization = []
    for c, name in enumerate(ds.channel_names):
        scheme = normalization_scheme(name)
        if scheme == "ct":
            st = fingerprint["ct_statistics"][str(c)]
            normalization.append({"scheme": "ct", "lower": st["lower"], "upper": st["upper"],
                                  "mean": st["mean"], "std": st["std"]})
        else:
            normalization.append({"scheme": scheme})
    return {"channel_names": list(ds.channel_names), "labels": dict(ds.labels), "spacing": spacing,
            "patch_size": patch_size, "normalization": normalization, "crop_foreground": True,
            "ct_body_threshold": CT_BODY_THRESHOLD, "fingerprint": dict(fingerprint),
            # what PET values the model learns from (veloxseg dataset-from-dicom records it); absent: SUVbw
            **({"pet_units": str(ds.meta["pet_units"])} if "pet_units" in ds.meta else {})}


def default_modalities(channel_names: Sequence[str]) -> list[int]:
    """VeloxSeg's ``in_channels`` grouping: MRI sequences form one block, CT and PET one block each.

    The paper treats BraTS's four sequences as one modality block and PET and CT as two.
    """
    names = [n.strip().lower() for n in channel_names]
    mri = [n for n in names if n not in ("ct", "pet")]
    if len(mri) == len(names):
        return [len(names)]
    return [1] * len(names)
