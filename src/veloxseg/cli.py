"""The ``veloxseg`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__


def _cmd_summary(args: argparse.Namespace) -> int:
    from .summary import preset_summary

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


def _cmd_jl(args: argparse.Namespace) -> int:
    from .jl import jl_group_widths, jl_raw_width

    widths = jl_group_widths(args.modalities, args.patch_size, args.levels, args.kappa)
    raw = [jl_raw_width(args.modalities, args.patch_size, i, args.kappa) for i in range(args.levels)]
    if args.json:
        print(json.dumps({"modalities": args.modalities, "patch_size": args.patch_size, "kappa": args.kappa,
                          "bound": [round(r, 4) for r in raw], "group_widths": widths}, indent=2))
        return 0
    print(f"JL minimum group width, M={args.modalities}, p={args.patch_size}, kappa={args.kappa}")
    for i, (r, w) in enumerate(zip(raw, widths)):
        print(f"  level {i}: v=(p*2^{i})^3={(args.patch_size * 2**i) ** 3:>7}  kappa*log(M*v)={r:6.3f}  -> {w}")
    print("widths: <" + ", ".join(map(str, widths)) + ">")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``veloxseg`` command."""
    from .jl import DEFAULT_KAPPA
    from .presets import PRESETS

    parser = argparse.ArgumentParser(prog="veloxseg", description="VeloxSeg: fast, lightweight 3-D medical segmentation.")
    parser.add_argument("--version", action="version", version=f"veloxseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("summary", help="parameters, FLOPs and shapes of a preset")
    p.add_argument("--preset", default="autopet", choices=sorted(PRESETS))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("jl", help="minimum group width per level from the Johnson-Lindenstrauss bound")
    p.add_argument("--modalities", "-M", type=int, required=True)
    p.add_argument("--patch-size", "-p", type=int, default=4)
    p.add_argument("--kappa", type=float, default=DEFAULT_KAPPA)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_jl)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``veloxseg`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"veloxseg {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
