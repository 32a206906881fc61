"""Spend a CPU's cores on a batch of sliding windows as one window per core.

On the project's 2-core machines one VeloxSeg forward on 2 intra-op threads runs only 1.5-1.7x
faster than on 1: every one of its ~1000 ops splits its work between the cores and both wait at its
end, and most ops are small. Two windows computed at once, each by its own thread with one
intra-op thread, never wait for each other: autopet 96^3 windows as the frozen graph, 51.2-52.2
windows/s against 25.2-26.1 for one 1-thread stream (2.0x) and 35.2-42.0 for one window at a time
on 2 threads (``python benchmarks/window_streams.py``, docs/dev/performance.md). Sliding-window
prediction always has windows to spare, so :class:`WindowStreams` splits each batch of windows
across the threads.

It pays once the network runs as a frozen graph (:mod:`.graph`); eager calls hold Python's global
lock for milliseconds each, and two eager streams run about as fast as one window on two threads.

After a parallel region OpenMP's idle threads spin for up to a few milliseconds, waiting for the
next region, and take a core from a stream. The calling thread releases its idle OpenMP threads
(:func:`openmp_release`) before the streams start; where that is not possible (another OpenMP
runtime than the GNU one PyTorch's Linux wheels load) the streams still run (not measured there).
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..networks.layers import fast_paths, fast_paths_enabled

_OMP_PAUSE_SOFT = 1


@functools.lru_cache(maxsize=1)
def openmp_release() -> Callable[[], int] | None:
    """``omp_pause_resource_all(omp_pause_soft)`` of the GNU OpenMP runtime PyTorch runs on, or None.

    It ends the calling thread's idle OpenMP threads; its next parallel region starts new ones.
    """
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line and line.rstrip().endswith((".so", ".so.1"))}
    except OSError:
        return None
    if len(paths) != 1:  # none, or two runtimes in one process: not clear which to pause
        return None
    try:
        pause = ctypes.CDLL(paths.pop()).omp_pause_resource_all
    except (OSError, AttributeError):
        return None
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return functools.partial(pause, _OMP_PAUSE_SOFT)


def _on_threads(engine: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, threads: int,
                inference: bool, fast: bool) -> torch.Tensor:
    """``engine(x)`` on this worker thread with ``threads`` intra-op threads, gradients off and the
    caller's inference mode and fast-kernel setting (both are per thread)."""
    if torch.get_num_threads() != threads:  # (reading it first settles this thread's lazy OpenMP set-up)
        torch.set_num_threads(threads)
    with torch.inference_mode(inference), torch.no_grad(), fast_paths(fast):
        return engine(x)


class WindowStreams:
    """``engine`` on a batch of windows split into parts computed at once, one thread per part.

    With ``T`` intra-op threads set (``torch.set_num_threads``) and a batch of ``B`` windows, the batch
    is cut into ``S = min(B, T)`` parts; the calling thread computes the first and ``S - 1`` worker
    threads the others, each with ``T // S`` intra-op threads. The logits are concatenated in order:
    each window is computed on its own, so they are those of one call up to the kernels' summation
    order. With ``T = 1``, a batch of one, or a non-CPU input it is one plain call. ``engine`` must be
    safe to call from several threads at once (PyTorch modules, TorchScript graphs and
    :class:`~.graph.FrozenGraph` are).
    """

    def __init__(self, engine: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.engine = engine
        self._pool: ThreadPoolExecutor | None = None
        self._workers = 0
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        streams = min(x.shape[0], threads)
        if streams == 1 or x.device.type != "cpu":
            return self.engine(x)
        parts = x.split(math.ceil(x.shape[0] / streams))
        per = threads // len(parts)
        with self._lock:  # one batch at a time: the streams share the machine's cores
            if self._workers < len(parts) - 1:
                if self._pool is not None:
                    self._pool.shutdown()
                self._workers = len(parts) - 1
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="veloxseg-window")
            inference, fast = torch.is_inference_mode_enabled(), fast_paths_enabled()
            torch.set_num_threads(per)
            release = openmp_release()
            if release is not None:
                release()
            pending: list[Future] = []
            try:
                pool = self._pool
                assert pool is not None
                pending = [pool.submit(_on_threads, self.engine, part, per, inference, fast)
                           for part in parts[1:]]
                outputs = [self.engine(parts[0])] + [p.result() for p in pending]
            finally:
                for p in pending:  # on a failure: the workers finish before the thread count is restored
                    p.exception()
                torch.set_num_threads(threads)
        return torch.cat(outputs)
