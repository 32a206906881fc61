"""How a 2-core CPU is best spent on many windows: one window on 2 threads, or two windows at once?

Run from the repository root:

    python benchmarks/window_streams.py [--preset autopet] [--threads 2] [--seconds 6] [--rounds 2]

Prints, for the deployed network as a frozen graph (as ``veloxseg predict`` runs it once traced),
batch 1 windows per second of

- one stream on 1 thread;
- one stream on ``--threads`` intra-op threads (what ``veloxseg bench`` reports as the 2-thread figure);
- ``--threads`` streams at once in one process, each a Python thread with one intra-op thread,
  the calling thread's idle OpenMP threads released first
  (:func:`veloxseg.inference.streams.openmp_release`), as ``veloxseg predict`` spreads a batch of
  windows (:class:`veloxseg.inference.streams.WindowStreams`);
- ``WindowStreams`` itself on batches of ``--threads`` windows (predict's path, with its per-batch
  thread hand-over).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from veloxseg import VeloxSeg
from veloxseg.inference.graph import FrozenGraph
from veloxseg.inference.streams import WindowStreams, openmp_release
from veloxseg.presets import get_preset
from veloxseg.runtime import tune_allocator


def rate(graph: FrozenGraph, x: torch.Tensor, threads: int, seconds: float, streams: int = 1) -> float:
    """Windows per second of ``streams`` threads each calling ``graph`` with ``threads`` intra-op threads."""
    counts: list[int] = []
    barrier = threading.Barrier(streams)

    def loop() -> None:
        torch.set_num_threads(threads)
        n = 0
        with torch.inference_mode():
            for _ in range(3):
                graph(x)
            barrier.wait()
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                graph(x)
                n += 1
        counts.append(n)

    if streams == 1:
        loop()
        return counts[0] / seconds
    main = torch.get_num_threads()
    torch.set_num_threads(1)
    release = openmp_release()
    if release is not None:
        release()
    workers = [threading.Thread(target=loop) for _ in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    torch.set_num_threads(main)
    return sum(counts) / seconds


def rate_streamed(graph: FrozenGraph, x: torch.Tensor, threads: int, seconds: float) -> float:
    """Windows per second of ``WindowStreams(graph)`` on batches of ``threads`` windows (predict's path)."""
    streamed = WindowStreams(graph)
    batch = x.expand(threads, *x.shape[1:]).contiguous()
    torch.set_num_threads(threads)
    n = 0
    with torch.inference_mode():
        for _ in range(3):
            streamed(batch)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            streamed(batch)
            n += threads
    return n / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="autopet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    tune_allocator()
    model = VeloxSeg.from_preset(args.preset).for_inference()
    x = torch.randn(1, *get_preset(args.preset).input_shape[1:], generator=torch.Generator().manual_seed(0))
    graph = FrozenGraph(model)
    print(f"preset {args.preset}, window {tuple(x.shape)}, frozen graph, {args.seconds:g} s per figure, "
          f"OpenMP release {'available' if openmp_release() else 'not available'}")
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, threads, streams in (("1 stream, 1 thread", 1, 1),
                                       (f"1 stream, {args.threads} threads", args.threads, 1),
                                       (f"{args.threads} streams, 1 thread each", 1, args.threads)):
            rows.setdefault(name, []).append(rate(graph, x, threads, args.seconds, streams))
        rows.setdefault(f"WindowStreams, {args.threads} windows a call", []).append(
            rate_streamed(graph, x, args.threads, args.seconds))
    base = statistics.median(rows["1 stream, 1 thread"])
    for name, values in rows.items():
        print(f"{name:34s} {' / '.join(f'{v:.2f}' for v in values)} windows/s "
              f"(median {statistics.median(values) / base:.2f}x one thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
