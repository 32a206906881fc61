"""Dice, 95 % Hausdorff distance (mm) and the autoPET lesion metrics of predicted label maps against
references.

HD95 convention: MONAI's ``HausdorffDistanceMetric(percentile=95)``: the distances (mm) from each
surface voxel of one mask to the nearest surface voxel of the other, in both directions; the 95th
percentile of each direction, and the larger of the two. (medpy's ``hd95`` pools both directions
into one percentile instead, which is up to ~12 % lower on real cases.)

autoPET metrics, per label, with lesions the 26-connected components of a mask:

- false-positive volume (mL): the predicted lesions that touch no reference voxel of the label;
- false-negative volume (mL): the reference lesions that touch no predicted voxel of the label;
- lesion-wise detection: a reference lesion is detected (TP) when more than ``lesion_overlap`` of
  its voxels (default 0: at least one voxel) are predicted as the label, else it is missed (FN); a
  predicted lesion with no more than ``lesion_overlap`` of its voxels inside the reference is a
  false positive (FP). The summary pools TP/FP/FN over the cases (sensitivity, precision, F1).

Conventions for Dice and HD95 (nnU-Net's, see docs/prediction.md):

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
#: a reference lesion is detected when more than this fraction of its voxels is predicted (0: any voxel)
LESION_OVERLAP = 0.0


@dataclass(frozen=True)
class ClassScore:
    """Scores of one class in one case."""

    case: str
    label: int
    dice: float
    hd95_mm: float
    reference_voxels: int
    predicted_voxels: int
    fp_volume_ml: float = math.nan
    fn_volume_ml: float = math.nan
    lesions_tp: int = 0
    lesions_fp: int = 0
    lesions_fn: int = 0


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


@dataclass(frozen=True)
class LesionScore:
    """autoPET's lesion metrics of one label in one case (see the module doc)."""

    fp_volume_ml: float
    fn_volume_ml: float
    tp: int
    fp: int
    fn: int


def lesion_scores(pred: np.ndarray, ref: np.ndarray, voxel_ml: float, overlap: float = LESION_OVERLAP) -> LesionScore:
    """False-positive/negative volumes (mL) and lesion-wise TP/FP/FN of two binary masks (26-connectivity)."""
    from scipy.ndimage import label as connected

    from .lesions import CONNECTIVITY

    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)

    def fractions(mask: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        components, n = connected(mask, structure=CONNECTIVITY)
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        inside = np.bincount(components[other].ravel(), minlength=n + 1)[1:]
        return sizes, inside / np.maximum(sizes, 1)

    p_sizes, p_in = fractions(pred, ref)
    r_sizes, r_in = fractions(ref, pred)
    return LesionScore(fp_volume_ml=float(p_sizes[p_in == 0].sum()) * voxel_ml,
                       fn_volume_ml=float(r_sizes[r_in == 0].sum()) * voxel_ml,
                       tp=int((r_in > overlap).sum()), fp=int((p_in <= overlap).sum()), fn=int((r_in <= overlap).sum()))


def score_case(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float],
               case: str = "", lesion_overlap: float = LESION_OVERLAP) -> list[ClassScore]:
    """Dice, HD95 (mm) and the autoPET lesion metrics of each label in one case (see the module doc)."""
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
        lesions = lesion_scores(p, r, float(np.prod([float(v) for v in spacing])) / 1000.0, lesion_overlap)
        scores.append(ClassScore(case, int(label), dice, hd95, n_r, n_p, lesions.fp_volume_ml, lesions.fn_volume_ml,
                                 lesions.tp, lesions.fp, lesions.fn))
    return scores


def summarize(scores: Iterable[ClassScore], labels: Sequence[int]) -> dict[str, Any]:
    """Mean and median Dice / HD95 per label over the cases where each is defined, and over labels."""
    scores = list(scores)
    summary: dict[str, Any] = {"cases": len({s.case for s in scores}), "per_label": {}}
    for label in labels:
        rows = [s for s in scores if s.label == label]
        entry: dict[str, Any] = {}
        for key in ("dice", "hd95_mm", "fp_volume_ml", "fn_volume_ml"):
            values = np.array([getattr(s, key) for s in rows], dtype=float)
            defined = values[np.isfinite(values)]
            entry[key] = {
                "mean": float(defined.mean()) if defined.size else math.nan,
                "median": float(np.median(defined)) if defined.size else math.nan,
                "n": int(defined.size),
            }
        tp, fp, fn = (sum(getattr(s, f"lesions_{k}") for s in rows) for k in ("tp", "fp", "fn"))
        entry["lesions"] = {"tp": tp, "fp": fp, "fn": fn,
                            "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
                            "precision": tp / (tp + fp) if tp + fp else math.nan,
                            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan}
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
                     progress: bool = False, allow_missing: bool = False, cases: Sequence[str] | None = None,
                     lesion_overlap: float = LESION_OVERLAP) -> Evaluation:
    """Score every prediction in ``pred_dir`` against the same-named reference in ``ref_dir``.

    ``labels`` default to the non-zero labels of a ``dataset.json`` beside the references, else to
    every non-zero label found in the references. A prediction without a reference, or on a
    different grid (shape or affine) from its reference, is an :class:`InputError`. So are
    references without a prediction, unless ``allow_missing``: then each is scored as an empty
    prediction (Dice 0 for every class present in the reference, as challenges count a missing case).
    ``cases`` restricts the references to those case names.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, refs = list_label_files(pred_dir), list_label_files(ref_dir)
    if cases is not None:  # score these cases only (e.g. a fold's held-out cases of a dataset's labelsTr)
        wanted = set(cases)
        refs = {c: p for c, p in refs.items() if c in wanted}
    if not preds:
        raise InputError(f"{pred_dir}: no prediction files (*.nii.gz or *.nii)")
    missing = [case for case in preds if case not in refs]
    if missing:
        raise InputError(f"{preds[missing[0]]}: no reference {missing[0]}.nii.gz in {ref_dir}"
                         + (f" (and {len(missing) - 1} more predictions without one)" if len(missing) > 1 else ""))
    unmatched = [case for case in refs if case not in preds]
    if unmatched and not allow_missing:
        raise InputError(f"{pred_dir}: {len(unmatched)} reference(s) of {ref_dir} have no prediction: "
                         + ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
                         + "; predict them, or pass --allow-missing to score them as empty (Dice 0)")
    if unmatched:
        log.warning("%d reference(s) in %s have no prediction and are scored as empty (Dice 0): %s",
                    len(unmatched), ref_dir, ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""))
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
        scores.extend(score_case(pred, ref, labels, spacing, case, lesion_overlap))
    for case in unmatched:  # only with allow_missing
        ref, _, spacing = _load_label(refs[case])
        scores.extend(score_case(np.zeros_like(ref), ref, labels, spacing, case, lesion_overlap))
    result = Evaluation(scores, summarize(scores, labels), unmatched)
    result.summary["lesion_overlap"] = float(lesion_overlap)
    if csv_path is not None:
        write_csv(scores, csv_path)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2))
    return result


#: a file larger than this is never taken for an earlier report (a report of 10,000 cases is about 10 MB)
REPORT_MAX_BYTES = 256 << 20
#: the header row of :func:`write_csv` (a file that starts with it was written by ``veloxseg evaluate``)
CSV_HEADER: tuple[str, ...] = ("case", "label", "dice", "hd95_mm", "reference_voxels", "predicted_voxels",
                               "fp_volume_ml", "fn_volume_ml", "lesions_tp", "lesions_fp", "lesions_fn")


def written_by_evaluate(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a report an earlier ``veloxseg evaluate`` wrote (its CSV header, or its JSON keys)."""
    try:
        if os.path.getsize(path) > REPORT_MAX_BYTES:  # not read whole: no report of ours is this large
            return False
        with open(path, encoding="utf-8") as f:
            if f.readline().rstrip("\r\n") == ",".join(CSV_HEADER):
                return True
            f.seek(0)
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"summary", "cases", "references_without_prediction"}


def check_report_targets(paths: Sequence[str | os.PathLike | None], overwrite: bool = False) -> None:
    """An :class:`~veloxseg.errors.InputError` for a report path that holds a file ``veloxseg evaluate`` did not
    write (unless ``overwrite``): its reports never replace a user's file."""
    from .errors import InputError

    for p in paths:
        if p is None or overwrite:
            continue
        p = Path(p)
        if p.is_dir():
            raise InputError(f"{p}: is a folder; give a file name for the report")
        if p.exists() and not written_by_evaluate(p):
            raise InputError(f"{p}: exists and was not written by veloxseg evaluate; not replaced "
                             "(choose another path, or --overwrite)")


def write_csv(scores: Sequence[ClassScore], path: str | os.PathLike) -> None:
    """One row per case and label: case, label, dice, hd95_mm, reference_voxels, predicted_voxels, then
    fp_volume_ml, fn_volume_ml, lesions_tp, lesions_fp, lesions_fn."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_HEADER)
    for s in scores:
        writer.writerow([s.case, s.label, _fmt(s.dice), _fmt(s.hd95_mm), s.reference_voxels, s.predicted_voxels,
                         _fmt(s.fp_volume_ml), _fmt(s.fn_volume_ml), s.lesions_tp, s.lesions_fp, s.lesions_fn])
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
