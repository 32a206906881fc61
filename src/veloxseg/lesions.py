"""Lesion statistics of a label map: what clinicians read off a PET/CT segmentation.

Per label: volume (mL) and the number of connected components (lesions, 26-connectivity: voxels
touching by a face, an edge or a corner belong to one lesion). With a PET channel, per lesion and
per label: SUVmax, SUVmean and total lesion glycolysis (TLG = SUVmean x volume in mL); over all
foreground labels: total metabolic tumour volume (TMTV, mL) and total TLG. PET values are whatever
the PET channel holds: SUVbw when converted from DICOM by veloxseg, the file's values for NIfTI
input (the JSON says which).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path

#: 26-connectivity (scipy.ndimage.label's structure): face, edge and corner neighbours
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres (|det| of the affine's 3x3 part, mm^3 / 1000)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def _pet_summary(values: np.ndarray, volume_ml: float) -> dict[str, float]:
    mean = float(values.mean())
    return {"suv_max": float(values.max()), "suv_mean": mean, "tlg": mean * volume_ml}


def label_statistics(mask: np.ndarray, affine: np.ndarray, pet: np.ndarray | None = None) -> dict[str, Any]:
    """Volume, components and (with ``pet``) per-lesion SUVmax/SUVmean/TLG of one binary mask."""
    from scipy.ndimage import find_objects
    from scipy.ndimage import label as connected

    voxel_ml = voxel_volume_ml(affine)
    mask = np.asarray(mask, dtype=bool)
    components, n = connected(mask, structure=CONNECTIVITY)
    out: dict[str, Any] = {"voxels": int(mask.sum()), "volume_ml": float(mask.sum()) * voxel_ml, "components": int(n)}
    if pet is not None and mask.any():
        out.update(_pet_summary(pet[mask], out["volume_ml"]))
    lesions = []
    if n:
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        boxes = find_objects(components)
        for index in np.argsort(-sizes, kind="stable"):
            box = boxes[index]
            where = components[box] == index + 1
            idx = np.argwhere(where).mean(0) + [s.start for s in box]
            entry: dict[str, Any] = {"voxels": int(sizes[index]), "volume_ml": float(sizes[index]) * voxel_ml,
                                     "centroid_ras_mm": [round(float(v), 2) for v in (affine @ [*idx, 1.0])[:3]]}
            if pet is not None:
                entry.update(_pet_summary(pet[box][where], entry["volume_ml"]))
            lesions.append({"lesion": len(lesions) + 1, **entry})
    out["lesions"] = lesions
    return out


def case_statistics(labels: np.ndarray, affine: np.ndarray, label_names: Mapping[str, int],
                    pet: np.ndarray | None = None, pet_source: str = "") -> dict[str, Any]:
    """Statistics of every non-background label of a case, and PET totals (TMTV, TLG) over all of them.

    ``label_names`` maps names to values (the checkpoint's labels); ``pet`` is on the label map's
    grid; ``pet_source`` says what its values are (recorded in the result).
    """
    labels = np.asarray(labels)
    named = sorted((int(v), str(k)) for k, v in label_names.items() if int(v) > 0)
    found = sorted(int(v) for v in np.unique(labels) if v > 0 and int(v) not in {n for n, _ in named})
    named += [(v, f"label_{v}") for v in found]
    result: dict[str, Any] = {"voxel_volume_ml": voxel_volume_ml(affine), "connectivity": 26,
                              "pet": {"values": pet_source} if pet is not None else None, "labels": {}}
    for value, name in named:
        result["labels"][name] = {"value": value, **label_statistics(labels == value, affine, pet)}
    foreground = labels > 0
    total: dict[str, Any] = {"volume_ml": float(foreground.sum()) * voxel_volume_ml(affine),
                             "lesions": int(sum(e["components"] for e in result["labels"].values()))}
    if pet is not None:
        total["tmtv_ml"] = total["volume_ml"]
        total["tlg"] = float(sum(les["tlg"] for e in result["labels"].values() for les in e["lesions"]))
        if foreground.any():
            total["suv_max"] = float(pet[foreground].max())
            total["suv_mean"] = float(pet[foreground].mean())
    result["total"] = total
    return result


def write_statistics(path: str | os.PathLike, stats: Mapping[str, Any]) -> Path:
    """Write ``stats`` as indented JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path, ".json") as tmp, open(tmp, "w") as f:
        f.write(json.dumps(stats, indent=2) + "\n")
    return path
