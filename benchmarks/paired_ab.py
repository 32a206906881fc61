"""Paired before/after timing of one CPU lever of the deployed VeloxSeg, forward by forward.

Run from the repository root:

    python benchmarks/paired_ab.py --lever graph [--batch 1] [--threads 1,2] [--forwards 80]
    python benchmarks/paired_ab.py --lever gemm1x1
    python benchmarks/paired_ab.py --lever fold

``graph``: eager PyTorch (before) against the frozen TorchScript graph ``veloxseg predict`` runs
(after, :class:`veloxseg.inference.graph.FrozenGraph`). ``gemm1x1``: 1x1x1 convs on oneDNN (before)
against :func:`veloxseg.networks.layers.conv1x1_gemm` (after), both eager. ``fold``: the graph as
traced and frozen (before) against the graph with its shape arithmetic and weight-only work folded
into constants (after, the default). Before and after alternate forward by forward (which one goes
first alternates too), so a slow spell of the machine hits both; the figure to read is the median
of the paired differences.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from veloxseg import VeloxSeg
from veloxseg.inference.graph import FrozenGraph
from veloxseg.networks import layers
from veloxseg.presets import get_preset
from veloxseg.runtime import tune_allocator


def _gemm(enabled: bool, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        previous, layers._GEMM_1X1 = layers._GEMM_1X1, enabled
        try:
            return model(x)
        finally:
            layers._GEMM_1X1 = previous
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", choices=("graph", "gemm1x1", "fold"), required=True)
    parser.add_argument("--preset", default="autopet")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--forwards", type=int, default=80, help="timed forwards of each side per thread count")
    args = parser.parse_args()

    tune_allocator()
    model = VeloxSeg.from_preset(args.preset).for_inference()
    x = torch.randn(args.batch, *get_preset(args.preset).input_shape[1:], generator=torch.Generator().manual_seed(0))
    if args.lever == "graph":
        before, after = model, FrozenGraph(model)
    elif args.lever == "fold":
        before, after = FrozenGraph(model, fold=False), FrozenGraph(model)
    else:
        before, after = _gemm(False, model), _gemm(True, model)
    print(f"lever {args.lever}, preset {args.preset}, input {tuple(x.shape)}, {args.forwards} forwards per side")
    with torch.inference_mode():
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            diff = (after(x) - before(x)).abs().max().item()  # also traces the graph for this thread count
            for fn in (before, after, before, after):
                fn(x)
            times: dict[str, list[float]] = {"before": [], "after": []}
            for i in range(args.forwards):
                order = (("before", before), ("after", after))
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - t0)
            paired = [a - b for a, b in zip(times["after"], times["before"])]
            b, a = (statistics.median(times[k]) * 1e3 for k in ("before", "after"))
            print(f"{threads} thread(s): before {b:.2f} ms, after {a:.2f} ms (medians); "
                  f"paired difference {statistics.median(paired) * 1e3:+.2f} ms; max |logit diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
