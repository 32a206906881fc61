"""``veloxseg checkpoint``: inspect a checkpoint safely, or convert an older one once."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``checkpoint`` sub-command (``upgrade``, ``verify``)."""
    p = sub.add_parser("checkpoint", help="verify a checkpoint, or convert one written by an earlier veloxseg",
                       description="Checkpoints hold only tensors and plain data, so loading one never runs code. "
                                   "Files written by veloxseg before format 2 hold numpy objects and must be "
                                   "converted once; that unpickles them in full, which runs whatever they carry, "
                                   "so it needs --trust-pickle.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", help="convert OLD (an earlier veloxseg's checkpoint) into NEW")
    up.add_argument("old", type=Path, help="checkpoint to convert (left unchanged)")
    up.add_argument("new", type=Path, help="where to write the converted checkpoint")
    up.add_argument("--trust-pickle", action="store_true",
                    help="you trust OLD's origin: unpickling it in full may run code it carries")
    up.add_argument("--overwrite", action="store_true", help="replace NEW if it exists")
    up.set_defaults(func=run_upgrade)
    ver = actions.add_parser("verify", help="load a checkpoint safely and check its integrity hash")
    ver.add_argument("path", type=Path)
    ver.set_defaults(func=run_verify)


def run_upgrade(args: argparse.Namespace) -> int:
    """Convert ``args.old`` into ``args.new``."""
    from ..checkpoint import load_checkpoint, upgrade_checkpoint

    new = upgrade_checkpoint(args.old, args.new, trust_pickle=args.trust_pickle, overwrite=args.overwrite)
    load_checkpoint(new)  # what was written loads safely and passes its checks
    print(f"wrote {new} (format 2: plain data with a SHA-256 of its tensors); {args.old} is unchanged")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Load ``args.path`` with every check and print what it holds."""
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.path)
    n = sum(t.numel() for t in ckpt["state_dict"].values())
    print(f"{args.path}: ok ({ckpt['model_name']}, {n:,} weights, labels {ckpt['labels']}, "
          f"channels {ckpt['channel_names']}, sha256 {ckpt['tensor_sha256'][:16]}...)")
    return 0
