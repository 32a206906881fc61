"""``veloxseg jl``: the JL minimum group width per level."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``jl`` sub-command."""
    from ..jl import DEFAULT_KAPPA

    p = sub.add_parser("jl", help="minimum group width per level from the Johnson-Lindenstrauss bound")
    p.add_argument("--modalities", "-M", type=int, required=True)
    p.add_argument("--patch-size", "-p", type=int, default=4)
    p.add_argument("--kappa", type=float, default=DEFAULT_KAPPA)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the JL widths for ``args``."""
    from ..jl import jl_group_widths, jl_raw_width

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
