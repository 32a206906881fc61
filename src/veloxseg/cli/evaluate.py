"""``veloxseg evaluate``: Dice and HD95 (mm) of a folder of predictions against references."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    p = sub.add_parser("evaluate", help="Dice and 95%% Hausdorff distance of predictions against references",
                       description="Per case and class Dice and 95%% Hausdorff distance (mm, spacing from the "
                                   "files), written to a CSV, with a mean/median summary. Classes empty in both "
                                   "files have no Dice; HD95 is undefined when either is empty (nnU-Net's "
                                   "conventions); undefined values are left out of the means. HD95 is MONAI's: "
                                   "the larger of the two directed 95th percentiles of surface distances (medpy's "
                                   "pooled percentile is lower, by up to ~12%% on real cases). Also autoPET's "
                                   "metrics, lesions being 26-connected components: false-positive volume (mL, "
                                   "predicted lesions touching no reference voxel), false-negative volume (mL, "
                                   "reference lesions touching no predicted voxel), and lesion-wise TP/FP/FN "
                                   "(see --lesion-overlap).")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps <case>.nii.gz")
    p.add_argument("--ref", required=True, type=Path, help="folder of reference label maps <case>.nii.gz")
    p.add_argument("--labels", type=int, nargs="+", default=None,
                   help="labels to score (default: dataset.json beside the references, else all found)")
    p.add_argument("--csv", type=Path, default=None, help="per-case CSV (default: PRED/evaluation.csv)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary and scores as JSON")
    p.add_argument("--cases", nargs="+", metavar="CASE",
                   help="score only these cases of REF (e.g. a fold's held-out cases of a dataset's labelsTr)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score references without a prediction as empty predictions (Dice 0) instead of failing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --csv/--json files that an earlier veloxseg evaluate did not write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--lesion-overlap", type=float, default=0.0,
                   help="a reference lesion is detected (TP) when more than this fraction of its voxels is predicted, "
                        "else missed (FN); a predicted lesion with no more than this fraction inside the reference "
                        "is a FP (default: 0, i.e. one voxel of overlap)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.pred`` against ``args.ref`` and print the summary."""
    from ..evaluation import check_report_targets, evaluate_folders

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    csv_path = args.csv if args.csv is not None else args.pred / "evaluation.csv"
    if not 0.0 <= args.lesion_overlap < 1.0:
        raise ValueError(f"--lesion-overlap must be in [0, 1), got {args.lesion_overlap}")
    check_report_targets([csv_path, args.json], args.overwrite)
    result = evaluate_folders(args.pred, args.ref, args.labels, csv_path=csv_path, json_path=args.json,
                              progress=not args.quiet, allow_missing=args.allow_missing, cases=args.cases,
                              lesion_overlap=args.lesion_overlap)
    s = result.summary
    print(f"{s['cases']} case(s) scored; per-case scores in {csv_path}")
    print(f"{'label':>6} {'Dice mean':>10} {'median':>8} {'n':>4} {'HD95 mm mean':>13} {'median':>8} {'n':>4}")
    for label, e in s["per_label"].items():
        d, h = e["dice"], e["hd95_mm"]
        print(f"{label:>6} {_f(d['mean']):>10} {_f(d['median']):>8} {d['n']:>4} "
              f"{_f(h['mean'], 2):>13} {_f(h['median'], 2):>8} {h['n']:>4}")
    print(f"mean over labels: Dice {_f(s['mean_dice'])}, HD95 {_f(s['mean_hd95_mm'], 2)} mm")
    print(f"{'label':>6} {'FP vol mL':>10} {'FN vol mL':>10} {'lesions TP':>10} {'FP':>5} {'FN':>5} "
          f"{'sens.':>6} {'prec.':>6}   (lesion overlap > {args.lesion_overlap:g})")
    for label, e in s["per_label"].items():
        les = e["lesions"]
        print(f"{label:>6} {_f(e['fp_volume_ml']['mean'], 2):>10} {_f(e['fn_volume_ml']['mean'], 2):>10} "
              f"{les['tp']:>10} {les['fp']:>5} {les['fn']:>5} {_f(les['sensitivity'], 3):>6} "
              f"{_f(les['precision'], 3):>6}")
    if result.unmatched_references:
        print(f"{len(result.unmatched_references)} reference(s) without a prediction were scored as empty "
              f"(--allow-missing)")
    if args.json is not None:
        print(f"JSON written to {args.json}")
    return 0


def _f(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
