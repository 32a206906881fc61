"""``veloxseg predict``: segment raw NIfTI or DICOM cases with a checkpoint or an exported model."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from .args import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` sub-command."""
    p = sub.add_parser(
        "predict", help="segment NIfTI cases (a folder <case>_0000.nii.gz ... or one case's channel files) or DICOM "
                        "studies",
        description="Segment new cases with the preprocessing stored in the checkpoint; writes <case>.nii.gz "
                    "(uint8, exactly the input's shape and affine; for DICOM input the CT's grid) into OUTPUT_DIR, "
                    "and with --output-type/--stats a DICOM-SEG, an RTSTRUCT and lesion statistics.")
    p.add_argument("-m", "--model", required=True, type=Path, nargs="+",
                   help="checkpoint (.pt from veloxseg train) or exported model (veloxseg export); several, or a "
                        "run folder of folds (veloxseg train --fold all): an ensemble, the mean of their softmax "
                        "probabilities")
    p.add_argument("--folds", type=int, nargs="+", metavar="K",
                   help="with -m RUN_DIR: ensemble only these folds (default: every fold)")
    p.add_argument("-i", "--input", required=True, nargs="+",
                   help="folder of <case>_<XXXX>.nii.gz files, or one case: one file per channel, training order; "
                        "or DICOM: a study folder (one series per modality, sub-folders allowed; a folder of "
                        "several studies gives one case each), or one series folder per channel, training order")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="cpu, cuda or auto (cuda when available) (default: cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for the network (default: all)")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="sliding-window overlap in [0, 1) (default: 0.25, the paper's; nnU-Net uses 0.5)")
    p.add_argument("--sw-batch-size", type=positive_int, default=2, help="windows per network call (default: 2)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (8 flips; 8x slower)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>.npz with float16 class probabilities on the input grid")
    p.add_argument("--preview", action="store_true",
                   help="also write <case>.png: 3 slices through the largest predicted component")
    p.add_argument("--engine", choices=("torch", "eager", "pt2", "onnxruntime"), default="torch",
                   help="torch: PyTorch; on a CPU, after 200 network calls the network is traced into a TorchScript "
                        "graph (about 1-2 s once, then about 15%% faster per call); eager: PyTorch, never traced; "
                        "pt2: torch.export + AOTInductor, compiled once per window shape (about a minute, needs a C++ "
                        "compiler) and cached in ~/.cache/veloxseg ($VELOXSEG_CACHE_DIR), or a .pt2 from veloxseg "
                        "export; onnxruntime (a checkpoint is exported in memory) (default: torch)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                   help="network precision (softmax and blending stay fp32): bf16 runs a bfloat16 copy channels-last; "
                        "auto takes bf16 only where the CPU has native bf16 (amx_bf16/avx512_bf16) and the first "
                        "windows' labels agree with fp32 on >= 99.5%% of voxels and it runs >= 1.05x as fast, else fp32 (default: fp32)")
    p.add_argument("--num-parts", type=int, default=1, help="split the cases into this many parts (nnU-Net)")
    p.add_argument("--part-id", type=int, default=0, help="which part this process predicts (0-based)")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="skip cases whose outputs this command wrote earlier and are complete and readable")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in OUTPUT_DIR that veloxseg predict did not write (by default it refuses)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--output-type", choices=("nifti", "dicom-seg", "rtstruct", "both", "all"), default="nifti",
                   help="nifti: <case>.nii.gz; dicom-seg: <case>_seg.dcm, a DICOM-SEG referencing the source series; "
                        "rtstruct: <case>_rtstruct.dcm, an RT Structure Set (contours) on the source series; both: "
                        "nifti and dicom-seg; all: nifti, dicom-seg and rtstruct (dicom-seg and rtstruct need DICOM "
                        "input) (default: nifti)")
    p.add_argument("--stats", action="store_true",
                   help="also write <case>_stats.json: per label volume (mL) and lesions (26-connected components); "
                        "with a PET channel SUVmax/SUVmean per lesion and in total, TMTV and TLG")
    p.set_defaults(func=run_with_workdir)


def run_with_workdir(args: argparse.Namespace) -> int:
    """:func:`run` with a temporary folder for converted DICOM input, removed when the run ends."""
    with tempfile.TemporaryDirectory(prefix="veloxseg-predict-") as work:
        args.dicom_workdir = Path(work)
        return run(args)


def run(args: argparse.Namespace) -> int:
    """Predict ``args.input`` into ``args.output``."""
    from ..inference import predict_cases, resolve_input, select_part
    from ..inference.ensemble import load_predictor
    from ..inference.missing import allows_missing
    from ..inference.reports import ReportRun

    if args.preview:
        from ..extras import require

        require(["matplotlib"], "--preview", "train")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    predictor = load_predictor(args.model, args.folds, device=args.device, engine=args.engine, threads=args.threads,
                               precision=args.precision, overlap=args.overlap, tta=args.tta,
                               sw_batch_size=args.sw_batch_size, window_progress=not args.quiet, tune_memory=True)
    pet_units = str(predictor.model.plan.get("pet_units", "SUVbw"))
    cases = resolve_input(args.input, predictor.model.channel_names, getattr(args, "dicom_workdir", None), pet_units,
                          allow_missing=allows_missing(predictor))
    mine = select_part(cases, args.num_parts, args.part_id)
    reports = ReportRun(args.output, args.output_type, args.stats, getattr(args, "dicom_workdir", None), args.resume,
                        pet_units, overwrite=args.overwrite)
    mine = reports.select(mine)
    if not args.quiet:
        print(f"model: {predictor.describe()}")
        part = f" (part {args.part_id} of {args.num_parts})" if args.num_parts > 1 else ""
        print(f"{len(cases)} case(s) found, {len(mine)} in this run{part}")
    summary = predict_cases(predictor, mine, reports.labels_dir, args.save_probabilities, args.preview, args.resume,
                            progress=not args.quiet, overwrite=args.overwrite)
    reports.finish(summary.predicted, predictor.model, summary.skipped)
    summary.output_dir = args.output
    if not args.quiet:
        for line in summary.lines() + reports.lines():
            print(line)
    if summary.failed:
        failed = "; ".join(f"{k}: {v}" for k, v in summary.failed.items())
        done = f"; the other {len(summary.predicted)} were written" if summary.predicted else ""
        print(f"veloxseg predict: error: {len(summary.failed)} case(s) failed{done}: {failed}", file=sys.stderr)
        return 1
    return 0
