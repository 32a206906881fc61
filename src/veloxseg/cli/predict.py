"""``veloxseg predict``: segment raw NIfTI cases with a checkpoint or an exported model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` sub-command."""
    p = sub.add_parser(
        "predict", help="segment NIfTI cases (a folder <case>_0000.nii.gz ... or one case's channel files)",
        description="Segment new cases with the preprocessing stored in the checkpoint; writes <case>.nii.gz "
                    "(uint8, exactly the input's shape and affine) into OUTPUT_DIR.")
    p.add_argument("-m", "--model", required=True, type=Path,
                   help="checkpoint (.pt from veloxseg train) or exported model (veloxseg export)")
    p.add_argument("-i", "--input", required=True, nargs="+",
                   help="folder of <case>_<XXXX>.nii.gz files, or one case: one file per channel, training order")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the network (default: all)")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="sliding-window overlap in [0, 1) (default: 0.25, the paper's; nnU-Net uses 0.5)")
    p.add_argument("--sw-batch-size", type=int, default=2, help="windows per network call (default: 2)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (8 flips; 8x slower)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>.npz with float16 class probabilities on the input grid")
    p.add_argument("--preview", action="store_true",
                   help="also write <case>.png: 3 slices through the largest predicted component")
    p.add_argument("--engine", choices=("torch", "eager", "pt2", "onnxruntime"), default="torch",
                   help="torch: PyTorch; on a CPU, after 200 network calls the network is traced into a TorchScript "
                        "graph (about 1.5-2 s once, then about 10-18%% faster per call); eager: PyTorch, never traced; "
                        "pt2: torch.export + AOTInductor, compiled once per window shape (about a minute, needs a C++ "
                        "compiler) and cached in ~/.cache/veloxseg ($VELOXSEG_CACHE_DIR), or a .pt2 from veloxseg "
                        "export; onnxruntime (a checkpoint is exported in memory) (default: torch)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                   help="network precision (softmax and blending stay fp32): bf16 runs a bfloat16 copy channels-last; "
                        "auto takes bf16 only where the CPU has native bf16 (amx_bf16/avx512_bf16) and the first "
                        "windows' labels agree with fp32 on >= 99.5%% of voxels, else fp32 (default: fp32)")
    p.add_argument("--num-parts", type=int, default=1, help="split the cases into this many parts (nnU-Net)")
    p.add_argument("--part-id", type=int, default=0, help="which part this process predicts (0-based)")
    p.add_argument("--continue", dest="resume", action="store_true", help="skip cases whose outputs exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict ``args.input`` into ``args.output``."""
    from ..inference import Predictor, predict_cases, resolve_input, select_part

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    predictor = Predictor.from_checkpoint(args.model, device=args.device, engine=args.engine, threads=args.threads,
                                          precision=args.precision,
                                          overlap=args.overlap, tta=args.tta, sw_batch_size=args.sw_batch_size,
                                          window_progress=not args.quiet)
    cases = resolve_input(args.input, predictor.model.channel_names)
    mine = select_part(cases, args.num_parts, args.part_id)
    if not args.quiet:
        print(f"model: {predictor.describe()}")
        part = f" (part {args.part_id} of {args.num_parts})" if args.num_parts > 1 else ""
        print(f"{len(cases)} case(s) found, {len(mine)} in this run{part}")
    summary = predict_cases(predictor, mine, args.output, args.save_probabilities, args.preview, args.resume,
                            progress=not args.quiet)
    if not args.quiet:
        for line in summary.lines():
            print(line)
    return 0
