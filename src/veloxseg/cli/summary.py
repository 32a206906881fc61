"""``veloxseg summary``: parameters, FLOPs and shapes of a preset, or of an ablation variant."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``summary`` sub-command."""
    from ..presets import PRESETS

    p = sub.add_parser("summary", help="parameters, FLOPs and shapes of a preset or an ablation variant")
    p.add_argument("--preset", default="autopet", choices=sorted(PRESETS))
    p.add_argument("--variant", help="an ablation variant of the network (see --list-variants)")
    p.add_argument("--list-variants", action="store_true", help="print the ablation variants' names, one a line")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary of ``args.preset`` (and ``args.variant``)."""
    from ..summary import model_summary, preset_summary
    from ..variants import VARIANTS, build_variant, get_variant

    if args.list_variants:
        print("\n".join(VARIANTS))
        return 0
    if args.variant:
        variant = get_variant(args.variant)
        info = {"preset": args.preset, "variant": variant.name, "description": variant.description,
                **model_summary(build_variant(variant.name, args.preset))}
    else:
        info = preset_summary(args.preset)
    info["multiply_adds"] = info["flops"] // 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    title = f"VeloxSeg preset {info['preset']!r}"
    if args.variant:
        title += f", variant {info['variant']!r} ({info['description']})"
    print(title)
    print(f"  input shape          {tuple(info['input_shape'])}")
    print(f"  output shape         {tuple(info['output_shape'])}")
    print(f"  params (inference)   {info['params_inference']:,}")
    print(f"  params (training)    {info['params_training']:,}  (with any teachers and deep-supervision heads)")
    macs = info["multiply_adds"] / 1e9
    print(f"  FLOPs per forward    {info['flops'] / 1e9:.3f} G  (= {macs:.3f} G multiply-adds)")
    return 0
