"""Dice and 95 % Hausdorff distance (mm) of predicted label maps against references.

Conventions (nnU-Net's, see docs/prediction.md):

- Dice of a class that is empty in both the reference and the prediction is undefined (NaN) and
  left out of the means; empty in exactly one of them gives Dice 0.
- HD95 is undefined (NaN) when the class is empty in the reference or in the prediction, and is
  left out of the means; the summary reports how many cases each mean is over.
- Distances are in millimetres, with the voxel spacing taken from each reference file's header.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io import atomic_path

log = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
AFFINE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ClassScore:
    """Scores of one class in one case."""

    case: str
    label: int
    dice: float
    hd95_mm: float
    reference_voxels: int
    predicted_voxels: int


@dataclass
class Evaluation:
    """Per-case scores and the per-class summary of an evaluation."""

    scores: list[ClassScore]
    summary: dict[str, Any] = field(default_factory=dict)
    unmatched_references: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: summary, per-case scores (NaN as null), unmatched references."""
        return {
            "summary": _json_safe(self.summary),
            "cases": [_json_safe(asdict(s)) for s in self.scores],
            "references_without_prediction": self.unmatched_references,
        }


def case_name(path: Path) -> str:
    """The case identifier of a label file: its name without ``.nii.gz`` / ``.nii``."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def list_label_files(folder: Path) -> dict[str, Path]:
    """The NIfTI files of ``folder`` by case name (sorted); an InputError if the folder is unusable."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = {case_name(p): p for p in sorted(folder.iterdir())
             if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")}
    return dict(sorted(files.items()))


def _load_label(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Label array (int), affine and voxel spacing of a label NIfTI, with errors naming the file."""
    from .io import read_header, read_nifti

    header = read_header(path)
    data, affine = read_nifti(path, dtype=np.float32)
    if np.any(data < 0) or np.any(data != np.round(data)):
        raise InputError(f"{path}: a label map must hold non-negative integers")
    return data.astype(np.int64), affine, header.spacing


def score_case(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float],
               case: str = "") -> list[ClassScore]:
    """Dice and HD95 (mm) of each label in one case, with nnU-Net's conventions for empty classes."""
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    dice_metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    scores = []
    for label in labels:
        p = pred == label
        r = ref == label
        n_p, n_r = int(p.sum()), int(r.sum())
        if n_p == 0 and n_r == 0:
            dice, hd95 = math.nan, math.nan
        elif n_p == 0 or n_r == 0:
            dice, hd95 = 0.0, math.nan
        else:
            tp = torch.from_numpy(p)[None, None].float()
            tr = torch.from_numpy(r)[None, None].float()
            dice = float(dice_metric(tp, tr).item())
            hd95 = float(hd_metric(tp, tr, spacing=list(spacing)).item())
            dice_metric.reset()
            hd_metric.reset()
        scores.append(ClassScore(case, int(label), dice, hd95, n_r, n_p))
    return scores


def summarize(scores: Iterable[ClassScore], labels: Sequence[int]) -> dict[str, Any]:
    """Mean and median Dice / HD95 per label over the cases where each is defined, and over labels."""
    scores = list(scores)
    summary: dict[str, Any] = {"cases": len({s.case for s in scores}), "per_label": {}}
    for label in labels:
        rows = [s for s in scores if s.label == label]
        entry: dict[str, Any] = {}
        for key in ("dice", "hd95_mm"):
            values = np.array([getattr(s, key) for s in rows], dtype=float)
            defined = values[np.isfinite(values)]
            entry[key] = {
                "mean": float(defined.mean()) if defined.size else math.nan,
                "median": float(np.median(defined)) if defined.size else math.nan,
                "n": int(defined.size),
            }
        summary["per_label"][str(label)] = entry
    for key in ("dice", "hd95_mm"):
        means = [e[key]["mean"] for e in summary["per_label"].values() if np.isfinite(e[key]["mean"])]
        summary[f"mean_{key}"] = float(np.mean(means)) if means else math.nan
    return summary


def _labels_from_dataset_json(ref_dir: Path) -> list[int] | None:
    for candidate in (ref_dir / "dataset.json", ref_dir.parent / "dataset.json"):
        if candidate.is_file():
            try:
                labels = json.loads(candidate.read_text())["labels"]
                values = sorted({int(v) for v in labels.values() if not isinstance(v, list) and int(v) > 0})
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if values:
                log.info("labels %s from %s", values, candidate)
                return values
    return None


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, labels: Sequence[int] | None = None,
                     csv_path: str | os.PathLike | None = None, json_path: str | os.PathLike | None = None,
                     progress: bool = False) -> Evaluation:
    """Score every prediction in ``pred_dir`` against the same-named reference in ``ref_dir``.

    ``labels`` default to the non-zero labels of a ``dataset.json`` beside the references, else to
    every non-zero label found in the references. A prediction without a reference, or on a
    different grid (shape or affine) from its reference, is an :class:`InputError`. References
    without a prediction are reported, not scored.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, refs = list_label_files(pred_dir), list_label_files(ref_dir)
    if not preds:
        raise InputError(f"{pred_dir}: no prediction files (*.nii.gz or *.nii)")
    missing = [case for case in preds if case not in refs]
    if missing:
        raise InputError(f"{preds[missing[0]]}: no reference {missing[0]}.nii.gz in {ref_dir}"
                         + (f" (and {len(missing) - 1} more predictions without one)" if len(missing) > 1 else ""))
    unmatched = [case for case in refs if case not in preds]
    if unmatched:
        log.warning("%d reference(s) in %s have no prediction and are not scored: %s", len(unmatched), ref_dir,
                    ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""))
    if labels is None:
        labels = _labels_from_dataset_json(ref_dir)
    if labels is None:
        found: set[int] = set()
        for case in preds:
            found.update(int(v) for v in np.unique(_load_label(refs[case])[0]))
        labels = sorted(v for v in found if v > 0)
        if not labels:
            raise InputError(f"{ref_dir}: the references hold no foreground label; give --labels")
    labels = [int(v) for v in labels]

    from tqdm import tqdm

    scores: list[ClassScore] = []
    for case in tqdm(preds, desc="evaluate", unit="case", disable=not progress):
        ref, ref_affine, spacing = _load_label(refs[case])
        pred, pred_affine, _ = _load_label(preds[case])
        if pred.shape != ref.shape:
            raise InputError(f"{preds[case]}: shape {pred.shape} differs from the reference's {ref.shape} "
                             f"({refs[case]}); predictions must be on the reference's grid")
        if not np.allclose(pred_affine, ref_affine, atol=AFFINE_TOLERANCE, rtol=0):
            raise InputError(f"{preds[case]}: affine differs from the reference's ({refs[case]}); "
                             f"predictions must be on the reference's grid")
        scores.extend(score_case(pred, ref, labels, spacing, case))
    result = Evaluation(scores, summarize(scores, labels), unmatched)
    if csv_path is not None:
        write_csv(scores, csv_path)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2))
    return result


def write_csv(scores: Sequence[ClassScore], path: str | os.PathLike) -> None:
    """One row per case and label: case, label, dice, hd95_mm, reference_voxels, predicted_voxels."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "label", "dice", "hd95_mm", "reference_voxels", "predicted_voxels"])
    for s in scores:
        writer.writerow([s.case, s.label, _fmt(s.dice), _fmt(s.hd95_mm), s.reference_voxels, s.predicted_voxels])
    atomic_write_text(path, buf.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    try:
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            f.write(text)
    except OSError as err:
        raise InputError(f"{path}: cannot write here ({err.strerror})") from None


def _fmt(value: float) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.6g}"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
