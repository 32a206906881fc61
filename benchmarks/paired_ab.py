"""Paired before/after timing of one CPU lever of the deployed VeloxSeg, forward by forward.

Run from the repository root:

    python benchmarks/paired_ab.py --lever graph [--batch 1] [--threads 1,2] [--forwards 80]
    python benchmarks/paired_ab.py --lever gemm1x1
    python benchmarks/paired_ab.py --lever shuffle [--eager]
    python benchmarks/paired_ab.py --lever mlp [--eager]
    python benchmarks/paired_ab.py --lever depthwise [--eager]
    python benchmarks/paired_ab.py --lever shuffle,mlp  # several together

``graph``: eager PyTorch (before) against the frozen TorchScript graph ``veloxseg predict`` runs
(after, :class:`veloxseg.inference.graph.FrozenGraph`). The others switch one fast path off (before)
and on (after), each side a graph traced with its setting (``--eager``: eager calls), and can be given
together (comma-separated): ``gemm1x1``, 1x1x1 convs on oneDNN against
:func:`veloxseg.networks.layers.conv1x1_gemm`; ``shuffle``, the head's pixel shuffle copied value by
value against in 16-byte elements (``veloxseg.networks.decoder.WIDE_COPIES``); ``mlp``, the FFNs'
hidden maps between PyTorch tensors against kept in oneDNN's layout
(``veloxseg.networks.layers.ONEDNN_MLP``); ``depthwise``, the JLC's 3x3x3 and 5x5x5 grouped convs at level 0 on
oneDNN's grouped kernel against as depthwise convs (``veloxseg.networks.layers.DEPTHWISE_SPLIT``). Before and after alternate forward by forward (which one
goes first alternates too), so a slow spell of the machine hits both; the figure to read is the
median of the paired differences.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from veloxseg import VeloxSeg
from veloxseg.inference.graph import FrozenGraph
from veloxseg.networks import decoder, layers
from veloxseg.presets import get_preset
from veloxseg.runtime import tune_allocator


#: levers that are a module-level switch: (module, attribute), read while tracing (and by eager calls)
SWITCHES = {"gemm1x1": (layers, "_GEMM_1X1"), "shuffle": (decoder, "WIDE_COPIES"), "mlp": (layers, "ONEDNN_MLP"),
            "depthwise": (layers, "DEPTHWISE_SPLIT")}


@contextlib.contextmanager
def _switches(levers: list[str], enabled: bool) -> Iterator[None]:
    previous = [getattr(*SWITCHES[lever]) for lever in levers]
    for lever in levers:
        setattr(*SWITCHES[lever], enabled)
    try:
        yield
    finally:
        for lever, value in zip(levers, previous):
            setattr(*SWITCHES[lever], value)


def _side(levers: list[str], enabled: bool, model: torch.nn.Module,
          eager: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """One side: eager calls with the switches set, or a graph traced with them set."""
    graph = None if eager else FrozenGraph(model)

    def run(x: torch.Tensor) -> torch.Tensor:
        with _switches(levers, enabled):  # a graph is traced on its first call per thread count, switches set
            return model(x) if graph is None else graph(x)
    return run


def alternate(before: Callable[[torch.Tensor], torch.Tensor], after: Callable[[torch.Tensor], torch.Tensor],
              x: torch.Tensor, forwards: int) -> dict[str, list[float]]:
    """Seconds of ``forwards`` calls of each side on ``x``, alternating (which goes first alternates too)."""
    times: dict[str, list[float]] = {"before": [], "after": []}
    for i in range(forwards):
        order = (("before", before), ("after", after))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", required=True,
                        help=f"graph, or one or more (comma-separated) of {', '.join(SWITCHES)}")
    parser.add_argument("--eager", action="store_true", help="switch levers: time eager calls, not frozen graphs")
    parser.add_argument("--preset", default="autopet")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--forwards", type=int, default=80, help="timed forwards of each side per thread count")
    args = parser.parse_args()

    tune_allocator()
    model = VeloxSeg.from_preset(args.preset).for_inference()
    x = torch.randn(args.batch, *get_preset(args.preset).input_shape[1:], generator=torch.Generator().manual_seed(0))
    levers = args.lever.split(",")
    if args.lever == "graph":
        before, after = model, FrozenGraph(model)
    elif all(lever in SWITCHES for lever in levers):
        before, after = _side(levers, False, model, args.eager), _side(levers, True, model, args.eager)
    else:
        parser.error(f"unknown lever {args.lever!r}")
    print(f"lever {args.lever}, preset {args.preset}, input {tuple(x.shape)}, {args.forwards} forwards per side")
    with torch.inference_mode():
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            diff = (after(x) - before(x)).abs().max().item()  # also traces the graph for this thread count
            for fn in (before, after, before, after):
                fn(x)
            times = alternate(before, after, x, args.forwards)
            paired = [a - b for a, b in zip(times["after"], times["before"])]
            b, a = (statistics.median(times[k]) * 1e3 for k in ("before", "after"))
            print(f"{threads} thread(s): before {b:.2f} ms, after {a:.2f} ms (medians); "
                  f"paired difference {statistics.median(paired) * 1e3:+.2f} ms; max |logit diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
