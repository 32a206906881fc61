"""Run the deployed network on a CPU as a frozen TorchScript graph, traced once per window shape.

Eager PyTorch spends several milliseconds of every VeloxSeg forward in Python: module calls,
the per-call fusion of the q/k/v and mixer weights, the position-bias gather. Traced with the
fast CPU kernels and frozen (``torch.jit.trace`` and ``torch.jit.freeze``, public APIs that PyTorch
deprecates: weights and what is computed from them alone become constants), the same ops run from
TorchScript's C++ interpreter. The network computes the same thing (checked against eager on the
window it is traced on); it is about 10-15 % faster per window than eager (docs/engines.md) after a
one-off cost of about 1-2 s per window shape. The graph is used as traced and frozen: earlier versions
edited it further through private PyTorch graph APIs (shape arithmetic folded into constants, conv
weights reordered once), which saved 5-8 % of a forward, under the 10 % a private API must earn, and were
removed (docs/engines.md).

When to pay that second is a ski-rental decision: ``veloxseg predict`` runs eagerly until a window
shape has had :data:`PREDICT_TRACE_AFTER` network calls (by then eager has spent about what tracing
costs in excess time), then traces. With windows spread one per thread (:mod:`.streams`) a call is one
window, so a volume of up to 200 windows (144 for 2x400x400x300 at 96^3) never traces; a cohort
does after its first cases, and never spends more than about twice the best choice in hindsight.
The benchmarks trace at once (``trace_after=0``) to time the graph.

:class:`FrozenGraph` wraps any eval-mode module. It runs eagerly whenever the graph does not
apply: gradients on, a non-CPU or non-float32 input, the fast kernels switched off (the
straightforward path, FLOP counting) or while exporting. A batch smaller than the traced one
(the last windows of a volume) is padded with zeros instead of tracing again. If tracing fails,
or the graph disagrees with eager on the first window or on it mirrored, it warns once and stays
eager. It may be called from several threads at once (:mod:`.streams`); one of them traces a new
shape while the others wait.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings

import torch
from torch import nn

from ..networks.layers import fast_paths_enabled, tracing_fast_kernels

log = logging.getLogger(__name__)

#: the graph must reproduce eager logits to this absolute tolerance on the window it is traced on
TOLERANCE = 1e-3
#: network calls of one window shape that ``veloxseg predict`` runs eagerly before tracing: ~1-2 s of
#: tracing (1.0-1.2 s for autopet in docs/engines.md) over the ~5-9 ms a window saves (autopet, 1-2 threads)
PREDICT_TRACE_AFTER = 200


class FrozenGraph(nn.Module):
    """``module`` run as a frozen TorchScript graph on CPU float32 inputs without gradients.

    One graph is kept per (channels, spatial size, thread count), traced at the largest batch
    seen, after ``trace_after`` eager calls with that key (0: on the first call).
    """

    def __init__(self, module: nn.Module, trace_after: int = 0) -> None:
        super().__init__()
        if trace_after < 0:
            raise ValueError(f"trace_after must be >= 0, got {trace_after}")
        self.module = module
        self.trace_after = trace_after
        self.eval()
        self._graphs: dict[tuple, tuple[int, torch.jit.ScriptModule | None]] = {}
        self._calls: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self.training or x.device.type != "cpu" or x.dtype != torch.float32 \
                or x.dim() < 2 or not fast_paths_enabled():
            return self.module(x)
        key = (tuple(x.shape[1:]), torch.get_num_threads())
        batch, graph = self._graphs.get(key, (0, None))
        if x.shape[0] > batch:
            calls = self._calls[key] = self._calls.get(key, 0) + 1
            if calls <= self.trace_after:
                return self.module(x)
            with self._lock:  # callers on several threads (:mod:`.streams`): one traces, the others wait
                batch, graph = self._graphs.get(key, (0, None))
                if x.shape[0] > batch:
                    batch, graph = x.shape[0], self._build(x)
                    self._graphs[key] = (batch, graph)
        if graph is None:
            return self.module(x)
        n = x.shape[0]
        if n < batch:  # the last windows of a volume: pad rather than trace again (samples are independent)
            x = torch.cat([x, x.new_zeros((batch - n, *x.shape[1:]))])
        with torch.jit.optimized_execution(False):  # the frozen graph as it is: no profiling runs first
            out = graph(x)
        return out[:n] if n < batch else out

    def clear(self) -> None:
        """Drop the traced graphs and call counts (after changing the module's weights)."""
        self._graphs.clear()
        self._calls.clear()

    def _build(self, x: torch.Tensor) -> torch.jit.ScriptModule | None:
        """Trace and freeze the module at ``x``'s shape; None (eager from now on) when that fails.

        The graph is checked against eager on the window it is traced on and on a second one (the
        same window mirrored), so that nothing of the first window can have been baked into it.
        """
        with torch.inference_mode(False), torch.no_grad():
            windows = (x.clone(), x.flip(-1))
            expected = [self.module(w) for w in windows]
            _note_torchscript()
            try:
                with warnings.catch_warnings(), tracing_fast_kernels():
                    # the tracer's notes on shape checks that are constant for the one traced shape; TorchScript's
                    # own DeprecationWarning is left alone (a user who turns it into an error gets the eager network)
                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                    graph = torch.jit.freeze(torch.jit.trace(self.module, (windows[0],), check_trace=False))
                    with torch.jit.optimized_execution(False):
                        got = [graph(w) for w in windows]
            except Exception as err:  # noqa: BLE001 - any tracing failure means: run eagerly
                log.warning("could not trace the network into a TorchScript graph (%s: %s); running it eagerly",
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "")
                return None
        if not all(isinstance(g, torch.Tensor) and g.shape == e.shape and torch.allclose(g, e, atol=TOLERANCE, rtol=0)
                   for g, e in zip(got, expected)):
            log.warning("the traced TorchScript graph does not reproduce eager logits; running the network eagerly")
            return None
        return graph


@functools.lru_cache(maxsize=1)
def _note_torchscript() -> None:
    """Say once per process that the graph stands on TorchScript, which PyTorch deprecates."""
    log.info("tracing the network into a TorchScript graph (TorchScript is deprecated by PyTorch; if tracing fails "
             "the network runs eagerly; --engine pt2 is its torch.export successor, docs/engines.md)")
