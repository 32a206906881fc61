"""The ``veloxseg`` command line: one entry point, one sub-command module per job.

Each module named in :data:`COMMANDS` exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a callable ``(args) -> exit code``. Errors meant for the user are raised as
:class:`veloxseg.errors.VeloxSegError` (or ``ValueError``/``FileNotFoundError``) and printed as one
line, with exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__

# sub-command modules, in the order ``veloxseg --help`` lists them
COMMANDS: tuple[str, ...] = (
    "summary",
    "jl",
    "train",
    "demo",
    "demo_data",
    "dataset_from_dicom",
    "predict",
    "evaluate",
    "export",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``veloxseg`` command."""
    parser = argparse.ArgumentParser(prog="veloxseg",
                                     description="VeloxSeg: fast, lightweight 3-D medical segmentation.")
    parser.add_argument("--version", action="version", version=f"veloxseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``veloxseg`` command; returns the exit code."""
    from ..errors import VeloxSegError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (VeloxSegError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        one_line = " ".join(str(err).split())  # library messages (e.g. nibabel's) may span lines
        print(f"veloxseg {args.command}: error: {one_line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"veloxseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
