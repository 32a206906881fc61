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
                                   "conventions); undefined values are left out of the means.")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps <case>.nii.gz")
    p.add_argument("--ref", required=True, type=Path, help="folder of reference label maps <case>.nii.gz")
    p.add_argument("--labels", type=int, nargs="+", default=None,
                   help="labels to score (default: dataset.json beside the references, else all found)")
    p.add_argument("--csv", type=Path, default=None, help="per-case CSV (default: PRED/evaluation.csv)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary and scores as JSON")
    p.add_argument("--allow-missing", action="store_true",
                   help="score references without a prediction as empty predictions (Dice 0) instead of failing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.pred`` against ``args.ref`` and print the summary."""
    from ..evaluation import evaluate_folders

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    csv_path = args.csv if args.csv is not None else args.pred / "evaluation.csv"
    result = evaluate_folders(args.pred, args.ref, args.labels, csv_path=csv_path, json_path=args.json,
                              progress=not args.quiet, allow_missing=args.allow_missing)
    s = result.summary
    print(f"{s['cases']} case(s) scored; per-case scores in {csv_path}")
    print(f"{'label':>6} {'Dice mean':>10} {'median':>8} {'n':>4} {'HD95 mm mean':>13} {'median':>8} {'n':>4}")
    for label, e in s["per_label"].items():
        d, h = e["dice"], e["hd95_mm"]
        print(f"{label:>6} {_f(d['mean']):>10} {_f(d['median']):>8} {d['n']:>4} "
              f"{_f(h['mean'], 2):>13} {_f(h['median'], 2):>8} {h['n']:>4}")
    print(f"mean over labels: Dice {_f(s['mean_dice'])}, HD95 {_f(s['mean_hd95_mm'], 2)} mm")
    if result.unmatched_references:
        print(f"{len(result.unmatched_references)} reference(s) without a prediction were scored as empty "
              f"(--allow-missing)")
    if args.json is not None:
        print(f"JSON written to {args.json}")
    return 0


def _f(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
