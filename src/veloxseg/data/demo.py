"""Synthetic but realistic whole-body PET/CT cases in nnU-Net v2 format, for the built-in demo.

Each case is a body-shaped phantom on an anisotropic grid (4 x 4 x 6 mm by default):

* CT in Hounsfield units: air (-1000), a subcutaneous fat layer (-100), soft tissue (40), two
  lungs (-850), heart, liver (60), bladder (water, 10), a vertebral column and pelvis (bone, 400-700)
  and a skull (1000) around the brain (35), with acquisition noise.
* PET in SUV: physiological uptake that is *not* a lesion -- brain (6-10), myocardium (variable,
  2-8), liver (2-2.8), bladder (8-25) -- over a tissue background (fat 0.4, lung 0.3, muscle 0.8),
  and 1-4 lesions (the label) of radius 7-20 mm and contrast 3-12 SUV in the lungs, mediastinum,
  liver or soft tissue; blurred by a Gaussian point-spread function (FWHM 6.5 mm) with
  count-dependent noise.

Files: CT as int16 (``_0000``), PET as float32 (``_0001``), the label as uint8. The same seed gives
the same bytes (the gzip stream carries no time stamp or file name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from ..io import write_nifti

SHAPE = (96, 80, 48)
SPACING = (4.0, 4.0, 6.0)
PSF_FWHM_MM = 6.5


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, float, float],
               radii: tuple[float, float, float]) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2 <= 1.0


def make_case(seed: int, shape: tuple[int, int, int] = SHAPE,
              spacing: tuple[float, float, float] = SPACING) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ct_hu, pet_suv, label, affine)`` of one phantom; arrays are indexed (x, y, z) in LPS+ like DICOM-derived NIfTI."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    sx, sy, sz = spacing
    # mm coordinates centred in-plane; z from the pelvis (0) upwards
    x = ((np.arange(nx) - nx / 2 + 0.5) * sx)[:, None, None]
    y = ((np.arange(ny) - ny / 2 + 0.5) * sy)[None, :, None]
    z = (np.arange(nz) * sz)[None, None, :]
    x, y, z = np.broadcast_arrays(x, y, z)
    height = nz * sz
    ax, ay = rng.uniform(150, 180), rng.uniform(95, 115)  # torso semi-axes (lateral, antero-posterior)
    cx, cy = rng.uniform(-8, 8), rng.uniform(-6, 6)
    torso_top = height - 80.0
    torso = (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0) & (z <= torso_top)
    inner = (((x - cx) / (ax - 12)) ** 2 + ((y - cy) / (ay - 12)) ** 2 <= 1.0) & (z <= torso_top)
    neck = (((x - cx) / 55) ** 2 + ((y - cy) / 50) ** 2 <= 1.0) & (z > torso_top) & (z <= torso_top + 20)
    head_c = (cx, cy - 5, height - 32.0)
    head = _ellipsoid(x, y, z, head_c, (75, 92, 60))
    brain = _ellipsoid(x, y, z, head_c, (66, 83, 52))
    body = torso | neck | head
    lung_z = (torso_top - 95, torso_top - 5)
    lung_c = (torso_top - 50)
    lungs = (_ellipsoid(x, y, z, (cx - 70, cy - 5, lung_c), (52, 62, 50))
             | _ellipsoid(x, y, z, (cx + 70, cy - 5, lung_c), (52, 62, 50))) & (z > lung_z[0])
    heart_c = (cx + rng.uniform(10, 30), cy - 35, torso_top - 70)
    heart = _ellipsoid(x, y, z, heart_c, (48, 40, 36))
    cavity = _ellipsoid(x, y, z, heart_c, (30, 24, 22))
    liver = _ellipsoid(x, y, z, (cx - 60, cy - 10, torso_top - 125), (70, 65, 40)) & ~lungs
    bladder = _ellipsoid(x, y, z, (cx, cy - 45, 30), (35, 28, 25))
    spine = (((x - cx) / 16) ** 2 + ((y - (cy + ay - 35)) / 16) ** 2 <= 1.0) & (z <= torso_top + 20)
    pelvis = (_ellipsoid(x, y, z, (cx - 85, cy + 20, 40), (30, 50, 35))
              & ~_ellipsoid(x, y, z, (cx - 85, cy + 20, 40), (20, 40, 25)))
    pelvis |= (_ellipsoid(x, y, z, (cx + 85, cy + 20, 40), (30, 50, 35))
               & ~_ellipsoid(x, y, z, (cx + 85, cy + 20, 40), (20, 40, 25)))
    skull = head & ~brain

    ct = np.full(shape, -1000.0)
    pet = np.zeros(shape)
    ct[body] = -100.0  # fat
    pet[body] = 0.4
    soft = (inner | neck) & body
    ct[soft] = 40.0
    pet[soft] = 0.8
    ct[brain] = 35.0
    pet[brain] = rng.uniform(6, 10)
    ct[skull] = 1000.0
    pet[skull] = 0.6
    ct[lungs & soft] = -850.0
    pet[lungs & soft] = 0.3
    ct[heart] = 40.0
    pet[heart] = rng.uniform(2, 8)  # myocardium, very variable
    ct[cavity] = 45.0
    pet[cavity] = 1.5  # blood pool
    ct[liver] = 60.0
    pet[liver] = rng.uniform(2.0, 2.8)
    ct[bladder] = 10.0
    pet[bladder] = rng.uniform(8, 25)
    bone = (spine | pelvis) & body
    ct[bone] = rng.uniform(400, 700)
    pet[bone] = 0.9

    # lesions, placed where a tumour could be and away from the physiological uptake
    label = np.zeros(shape, dtype=bool)
    sites = {
        "lung": lungs & soft,
        "mediastinum": soft & ~lungs & ~heart & (z > torso_top - 110) & (np.abs(x - cx) < 40),
        "liver": liver,
        "soft tissue": soft & ~lungs & ~heart & ~liver & ~bladder & ~bone & (z > 60) & (z < torso_top - 20),
        "neck": neck | (soft & (z > torso_top - 20)),
    }
    uptake_free = ~(heart | brain | bladder | skull)
    n_lesions = int(rng.integers(1, 5))
    names = list(sites)
    placed = 0
    for _ in range(50):
        if placed == n_lesions:
            break
        site = names[int(rng.integers(len(names)))]
        cand = np.argwhere(sites[site] & uptake_free & ~label)
        if len(cand) == 0:
            continue
        centre_idx = cand[int(rng.integers(len(cand)))]
        c = (x[tuple(centre_idx)], y[tuple(centre_idx)], z[tuple(centre_idx)])
        r = rng.uniform(7, 20)
        radii = (r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2))
        lesion = _ellipsoid(x, y, z, c, radii) & body & ~skull
        if lesion.sum() < 4 or (lesion & ~uptake_free).any():
            continue
        label |= lesion
        pet[lesion] = rng.uniform(3, 12) * (1.5 if site == "liver" else 1.0)
        ct[lesion] = {"lung": 30.0, "liver": 35.0}.get(site, 50.0)
        placed += 1

    # PET physics: point-spread function, then count-dependent noise, then a little smoothing
    sigma_mm = PSF_FWHM_MM / 2.3548
    pet = gaussian_filter(pet, [sigma_mm / s for s in spacing])
    pet = pet + rng.standard_normal(shape) * 0.12 * np.sqrt(np.clip(pet, 0.0, None) + 0.05)
    pet = np.clip(gaussian_filter(pet, 0.6), 0.0, None)
    ct = gaussian_filter(ct, 0.5) + rng.standard_normal(shape) * 18.0
    ct = np.clip(np.round(ct), -1024, 3071)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [(nx / 2) * sx, (ny / 2) * sy, -height / 2]
    return ct.astype(np.int16), pet.astype(np.float32), label.astype(np.uint8), affine


def dataset_json(num_training: int) -> dict[str, Any]:
    """The ``dataset.json`` of the demo dataset."""
    return {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1},
            "numTraining": num_training, "file_ending": ".nii.gz", "name": "VeloxSegDemoPETCT",
            "description": "synthetic whole-body PET/CT phantoms (CT in HU, PET in SUV) with 1-4 lesions; "
                           "generated by veloxseg demo-data", "spacing_mm": list(SPACING)}


def write_demo_dataset(out: str | Path, cases: int = 20, seed: int = 0, test_cases: int = 0) -> Path:
    """Write ``cases`` training cases (``imagesTr``/``labelsTr``) and ``test_cases`` held-out ones
    (``imagesTs``/``labelsTs``) to ``out``; same arguments, same bytes. Returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(cases + test_cases):
        train = i < cases
        name = f"demo_{i:03d}"
        ct, pet, label, affine = make_case(seed * 100_003 + i)
        img_dir, lab_dir = ("imagesTr", "labelsTr") if train else ("imagesTs", "labelsTs")
        write_nifti(out / img_dir / f"{name}_0000.nii.gz", ct, affine)
        write_nifti(out / img_dir / f"{name}_0001.nii.gz", pet, affine)
        write_nifti(out / lab_dir / f"{name}.nii.gz", label, affine)
    (out / "dataset.json").write_text(json.dumps(dataset_json(cases), indent=2) + "\n")
    return out
