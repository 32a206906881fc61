"""``veloxseg import-weights``: a checkpoint of the authors' code as a veloxseg checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``import-weights`` sub-command."""
    p = sub.add_parser("import-weights",
                       help="turn a checkpoint of the authors' VeloxSeg code into a veloxseg checkpoint",
                       description="Read a checkpoint written by the authors' code (JinPLu/VeloxSeg: {'model': "
                                   "state_dict, ...}, keys possibly prefixed 'module.', or a bare state dict) and "
                                   "write a veloxseg checkpoint computing what their network computes, with their "
                                   "preprocessing of the preset's dataset (their channel order: CT before PET). "
                                   "`veloxseg predict` and `veloxseg export` take it.")
    p.add_argument("file", type=Path, help="the authors' checkpoint (.pth)")
    p.add_argument("--preset", required=True, choices=("autopet", "hecktor", "brats"),
                   help="their configuration and preprocessing (AutoPET-II, HECKTOR 2022, BraTS 2021)")
    p.add_argument("-o", "--output", required=True, type=Path, help="veloxseg checkpoint to write (.pt)")
    p.add_argument("--config", type=Path,
                   help="a model configuration of theirs (config/models_config_*.json) instead of the preset's")
    stats = p.add_mutually_exclusive_group()
    stats.add_argument("--ct-statistics", type=float, nargs=4, metavar=("MEAN", "STD", "P0.5", "P99.5"),
                       help="CT foreground statistics of their training set (what their "
                            "preprocess/normalization_CT_PET.py printed); PET/CT presets need them to predict")
    stats.add_argument("--ct-statistics-from", type=Path, metavar="DATASET",
                       help="compute the CT statistics from an nnU-Net dataset's labelled voxels, as their script does")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Import ``args.file`` into ``args.output``."""
    from ..authors import ct_statistics_of, import_weights, read_config
    from ..checkpoint import save_checkpoint, versions
    from ..errors import InputError

    if args.output.exists() and not args.overwrite:
        raise InputError(f"{args.output}: exists; pass --overwrite to replace it")
    config = read_config(args.config) if args.config is not None else None
    stats = None
    if args.ct_statistics is not None:
        stats = dict(zip(("mean", "std", "lower", "upper"), args.ct_statistics))
    elif args.ct_statistics_from is not None:
        stats = ct_statistics_of(args.ct_statistics_from)
    payload = import_weights(args.file, args.preset, config, stats)
    payload["versions"] = {k: str(v) for k, v in versions().items()}  # plain str (torch's is a str subclass)
    save_checkpoint(args.output, payload)
    plan = payload["plan"]
    print(f"wrote {args.output}: the authors' VeloxSeg ({args.preset}), channels {', '.join(plan['channel_names'])}, "
          f"patch {plan['patch_size']} at {plan['spacing']} mm")
    if any(n.get("scheme") == "ct" and n.get("mean") is None for n in plan["normalization"]):
        print("note: no CT statistics given; `veloxseg predict` needs them (--ct-statistics or --ct-statistics-from)")
    return 0
