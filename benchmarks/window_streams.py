"""How a 2-core CPU is best spent on many windows: one window on 2 threads, or two windows at once?

Run from the repository root:

    python benchmarks/window_streams.py [--preset autopet] [--threads 2] [--seconds 6] [--rounds 2]

Prints, for the deployed network as a frozen graph (as ``veloxseg predict`` runs it once traced),
batch 1 windows per second of

- one stream on 1 thread;
- one stream on ``--threads`` intra-op threads (what ``veloxseg bench`` reports as the 2-thread figure);
- ``--threads`` streams at once in one process, each a Python thread with one intra-op thread,
  the calling thread's idle OpenMP threads released first (:func:`openmp_release`).

It is a measurement for docs/performance.md ("Eighth round"), not a path of the package yet: the
streams pay only once the graph is traced (eager calls hold Python's lock for milliseconds each).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import statistics
import threading
import time
from collections.abc import Callable

import torch

from veloxseg import VeloxSeg
from veloxseg.inference.graph import FrozenGraph
from veloxseg.presets import get_preset
from veloxseg.runtime import tune_allocator


@functools.lru_cache(maxsize=1)
def openmp_release() -> Callable[[], int] | None:
    """``omp_pause_resource_all(omp_pause_soft)`` of the GNU OpenMP runtime PyTorch runs on, or None.

    After a parallel region OpenMP's idle threads spin for up to a few milliseconds waiting for the
    next one, taking a core from any other thread; this ends the calling thread's idle ones.
    """
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libgomp" in line and line.rstrip().endswith((".so", ".so.1"))}
    if len(paths) != 1:
        return None
    pause = ctypes.CDLL(paths.pop()).omp_pause_resource_all
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return functools.partial(pause, 1)


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
    base = statistics.median(rows["1 stream, 1 thread"])
    for name, values in rows.items():
        print(f"{name:28s} {' / '.join(f'{v:.2f}' for v in values)} windows/s "
              f"(median {statistics.median(values) / base:.2f}x one thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
