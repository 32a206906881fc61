"""``veloxseg summary``: parameters, FLOPs and shapes of a preset."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``summary`` sub-command."""
    from ..presets import PRESETS

    p = sub.add_parser("summary", help="parameters, FLOPs and shapes of a preset")
    p.add_argument("--preset", default="autopet", choices=sorted(PRESETS))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary of ``args.preset``."""
    from ..summary import preset_summary

    info = preset_summary(args.preset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"VeloxSeg preset {info['preset']!r}")
    print(f"  input shape          {tuple(info['input_shape'])}")
    print(f"  output shape         {tuple(info['output_shape'])}")
    print(f"  params (inference)   {info['params_inference']:,}")
    print(f"  params (training)    {info['params_training']:,}  (with texture teachers and deep supervision)")
    print(f"  FLOPs per forward    {info['flops'] / 1e9:.3f} G  (= {info['flops'] / 2e9:.3f} G multiply-adds)")
    return 0
