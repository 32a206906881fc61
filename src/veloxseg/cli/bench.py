"""``veloxseg bench``: VeloxSeg against the standard baselines on this machine, side by side."""

from __future__ import annotations

import argparse
import json
import os


def _ints(text: str, sep: str = ",") -> list[int]:
    try:
        return [int(v) for v in text.lower().replace("x", sep).split(sep) if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by '{sep}' or 'x', got {text!r}") from None


def _names(text: str) -> list[str]:
    return [] if text.lower() == "none" else [n for n in text.split(",") if n.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` sub-command."""
    from ..bench import DEFAULT_MODELS, PARTS
    from ..presets import PRESETS

    p = sub.add_parser("bench", help="speed, memory and size of VeloxSeg and the MONAI baselines on this machine",
                       description="Parameters, FLOPs, inference throughput (and its fraction of this machine's "
                                   "measured ceiling; with more than one thread also as many windows at once as "
                                   "threads, one per thread), one training step and whole-volume prediction, for "
                                   "each model, in one run. Prints markdown tables.")
    p.add_argument("--preset", default="autopet", choices=sorted(PRESETS), help="channels, classes and input size")
    p.add_argument("--models", type=_names, default=list(DEFAULT_MODELS),
                   help=f"comma-separated (default {','.join(DEFAULT_MODELS)}); ablation variant names work too, and "
                        "veloxseg-pt2 (the torch.export + AOTInductor engine, compiled first: about a minute)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=_ints, default=[1],
                   help="thread count(s) for inference and the ceiling, e.g. 1 or 1,2 (default 1, the paper's)")
    p.add_argument("--seconds", type=float, default=1.0, help="at least this long timing each model (default 1)")
    p.add_argument("--min-reps", type=int, default=3, help="at least this many timed forwards (default 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="time inference and the whole volume this many times, interleaved over the models, and "
                        "keep each model's best round; VeloxSeg is timed next to every other model and the time "
                        "ratios are medians of per-round ratios (default 3)")
    p.add_argument("--size", type=lambda s: _ints(s, "x"), default=None,
                   help="input patch DxHxW or one side (default: the preset's, 96x96x96 for autopet)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=3,
                   help="at least this many timed training steps after a warm-up step, and more until --seconds; "
                        "the fastest is compared across models (default 3)")
    p.add_argument("--train-threads", type=int, default=None,
                   help="threads for the training step and whole-volume prediction (default: all cores)")
    p.add_argument("--volume", type=lambda s: _ints(s, "x"), default=[2, 400, 400, 300],
                   help="whole volume CxDxHxW or DxHxW (default 2x400x400x300)")
    p.add_argument("--volume-models", type=_names, default=["veloxseg"],
                   help="models to run the whole volume with (default veloxseg; the others are estimated); "
                        "'none' for none")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="sliding-window overlap (default 0.25, as veloxseg predict and the paper)")
    p.add_argument("--sw-batch-size", type=int, default=2, help="windows per forward (default 2, as veloxseg predict)")
    p.add_argument("--skip", type=_names, default=[], help=f"parts to skip: {','.join(PARTS)}")
    p.add_argument("--precision", type=_names, default=["fp32"],
                   help="fp32 and/or bf16, e.g. fp32,bf16: bf16 adds a bf16 row (bfloat16 copy, channels-last; its "
                        "training step under bf16 autocast) for veloxseg and veloxseg-pt2, and the bf16 conv ceiling "
                        "(default fp32)")
    p.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write a bar chart")
    p.add_argument("--markdown", metavar="OUT.md", help="write the benchmark document (docs/benchmarks.md)")
    p.add_argument("--note", help="a line to put at the top of the --markdown document")
    p.add_argument("--from-json", metavar="IN", help="measure nothing: render the tables, --plot and --markdown "
                   "of a result saved with --json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark of ``args`` and print its tables."""
    from ..bench import document, markdown, plot

    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
    else:
        result = measure(args)
    print(markdown(result), end="")
    if args.json and not args.from_json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot(result, args.plot)
    if args.markdown:
        image = os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.markdown))) if args.plot else None
        with open(args.markdown, "w") as f:
            f.write(document(result, args.note, image, args.plot, args.json or args.from_json))
    return 0


def measure(args: argparse.Namespace) -> dict:
    """Build the configuration from ``args`` (failing early on a bad option) and run the benchmark."""
    from ..bench import BenchConfig, run_bench
    from ..bench.runner import default_threads

    cfg = BenchConfig(preset=args.preset, models=args.models, device=args.device, threads=args.threads,
                      seconds=args.seconds, min_reps=args.min_reps, rounds=args.rounds, size=args.size,
                      train_batch=args.train_batch,
                      train_steps=args.train_steps, train_threads=args.train_threads or default_threads(),
                      volume=args.volume, volume_models=args.volume_models, overlap=args.overlap,
                      sw_batch_size=args.sw_batch_size, skip=args.skip, precision=args.precision)
    cfg.validate()  # fail on bad options before the long run
    return run_bench(cfg, progress=not args.no_progress)
