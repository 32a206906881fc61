"""The ``veloxseg`` command line: one entry point, one sub-command module per job.

Each module named in :data:`COMMANDS` exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a callable ``(args) -> exit code``. Errors meant for the user are raised as
:class:`veloxseg.errors.VeloxSegError` (or ``ValueError``/``FileNotFoundError``) and printed as one
line, with exit code 1. SIGTERM is handled like Ctrl-C (:class:`Terminated`): finished work stays,
temporary files are removed, and the exit status is 143.
"""

from __future__ import annotations

import argparse
import importlib
import signal
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
    "import_weights",
    "bench",
    "checkpoint",
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every ``finally`` and temporary-file clean-up runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def budgeted_run(argv: Sequence[str]) -> bool:
    """Whether ``argv`` trains on a budget of CPU time: ``train --time-budget M --budget-clock cpu``.

    Such a run waits passively (:func:`veloxseg.runtime.prefer_passive_omp_wait`): spinning OpenMP
    threads count against a CPU budget, many times over on a loaded machine. A wall-clock budget (and
    the demo) keeps OpenMP's default: on an idle 2-core machine spinning gave 1.6-1.7x the steps
    of passive waiting in the same wall time (docs/training.md).
    """
    command = next((a for a in argv if not a.startswith("-")), None)
    flags = ("--time-budget", "--max-minutes")
    args = list(argv)
    cpu_clock = any(a == "--budget-clock=cpu" or (a == "--budget-clock" and i + 1 < len(args) and args[i + 1] == "cpu")
                    for i, a in enumerate(args))
    return command == "train" and cpu_clock and any(a.split("=")[0] in flags for a in args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``veloxseg`` command; returns the exit code."""
    from ..errors import VeloxSegError

    argv = list(sys.argv[1:] if argv is None else argv)
    if budgeted_run(argv):  # before the parsers load torch (veloxseg.runtime)
        from ..runtime import prefer_passive_omp_wait

        prefer_passive_omp_wait()
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. called from a worker thread): leave signals alone
        pass
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
    except Terminated:
        print(f"veloxseg {args.command}: terminated (SIGTERM); finished outputs kept, temporary files removed",
              file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"veloxseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
