"""Run the deployed network on a CPU as a frozen TorchScript graph, traced once per window shape.

Eager PyTorch spends several milliseconds of every VeloxSeg forward in Python: module calls,
the per-call fusion of the q/k/v and mixer weights, the position-bias gather. Traced with the
fast CPU kernels and frozen (weights and everything computed from them folded into
constants), then specialised to its one input shape (the traced shape arithmetic read once and
folded away, :func:`_fold_constants`), the same ops run from TorchScript's C++ interpreter. The
network computes the same thing (checked against eager on the window it is traced on); it is
about 13 % faster per window at 1 thread and 18 % at 2 (batch 1; 10 and 12 % at batch 2;
docs/dev/performance.md) after a one-off cost of about 1.5-2 s per window shape.

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
#: network calls of one window shape that ``veloxseg predict`` runs eagerly before tracing: ~1.5-2 s of
#: tracing over the ~9 ms a window saves (autopet, 2 threads, a window per thread, each call one window:
#: 2x400x400x300 in 4.5 s eagerly, 3.2 s traced; docs/dev/performance.md)
PREDICT_TRACE_AFTER = 200


class FrozenGraph(nn.Module):
    """``module`` run as a frozen TorchScript graph on CPU float32 inputs without gradients.

    One graph is kept per (channels, spatial size, thread count), traced at the largest batch
    seen, after ``trace_after`` eager calls with that key (0: on the first call). ``fold=False``
    keeps the traced shape arithmetic and weight-only work in the graph, ``prepack=False`` the conv
    weights in PyTorch's layout (for before/after timing, ``benchmarks/paired_ab.py --lever fold``
    and ``--lever prepack``).
    """

    def __init__(self, module: nn.Module, trace_after: int = 0, fold: bool = True, prepack: bool = True) -> None:
        super().__init__()
        if trace_after < 0:
            raise ValueError(f"trace_after must be >= 0, got {trace_after}")
        self.module = module
        self.trace_after = trace_after
        self.fold = fold
        self.prepack = prepack
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
        same window mirrored), so that nothing of the first window can have been folded into it.
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
                    for _ in range(3 if self.fold else 0):  # a second round folds what the first made constant
                        if not _fold_constants(graph, windows[0]):
                            break
                    if self.prepack:  # after folding: the fold reads attributes as constants
                        _prepack_conv_weights(graph, windows[0])
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


_CONTAINERS = {"prim::ListConstruct", "prim::TupleConstruct", "prim::ListUnpack", "prim::TupleUnpack"}
_PURE_PRIMS = {"prim::Constant", "prim::GetAttr", "prim::NumToTensor", *_CONTAINERS}
_FOLDABLE = {"TensorType", "IntType", "FloatType", "BoolType"}
#: ops whose output shape depends on the input's values, not only its shape: sizes are then not constants
_DATA_DEPENDENT = {"aten::nonzero", "aten::argwhere", "aten::masked_select", "aten::unique_consecutive",
                   "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::repeat_interleave",
                   "aten::bincount", "aten::nonzero_numpy"}


def _schema(node: torch._C.Node) -> torch._C.FunctionSchema | None:
    text = node.schema()
    return None if text == "(no schema)" else _parse_schema(text)


@functools.lru_cache(maxsize=None)
def _parse_schema(text: str) -> torch._C.FunctionSchema:
    return torch._C.parse_schema(text)


def _mutated_values(nodes: list[torch._C.Node]) -> set:
    """The values that some node may write to, directly or through a view, list or other alias."""
    parent: dict[int, int] = {}  # union-find over the ids of values that may share memory

    def find(v: int) -> int:
        while parent.get(v, v) != v:
            v = parent[v]
        return v

    def union(values: list) -> None:
        roots = [find(v.unique()) for v in values]
        for r in roots[1:]:
            if r != roots[0]:
                parent[r] = roots[0]

    written = []
    for node in nodes:
        schema = _schema(node)
        if node.kind() in _CONTAINERS:
            union([*node.inputs(), *node.outputs()])
        elif schema is None:
            if node.kind() not in _PURE_PRIMS:
                written.extend(node.inputs())  # unknown effects: assume it writes to everything it gets
        else:
            inputs = list(node.inputs())  # (positional and keyword-only arguments alike, in schema order)
            annotated = [(v, a.alias_info) for v, a in zip(inputs, schema.arguments) if a.alias_info is not None]
            if any(r.alias_info is not None for r in schema.returns):
                union([*(v for v, _ in annotated), *node.outputs()])
            written.extend(v for v, alias in annotated if alias.is_write)
    dirty = {find(v.unique()) for v in written}
    return {v for node in nodes for v in (*node.inputs(), *node.outputs()) if find(v.unique()) in dirty}


def _fold_constants(module: torch.jit.ScriptModule, example: torch.Tensor) -> bool:
    """Replace what ``module``'s graph computes the same on every call by constants, and fold.

    A graph only ever sees the one input shape it was traced at, so two kinds of value are the
    same on every call: every ``aten::size`` (the traced shape arithmetic of the Python code:
    sizes, products, floor divisions, list building, about half of VeloxSeg's ~3000 nodes), and
    everything computed from the frozen weights alone (the attention's position-bias gather,
    which freezing leaves in the graph). They are read in one run of a copy of the graph that
    returns them, written in as constants, and constant propagation removes what computed them.
    Nothing that any node may write to (an output buffer, or a view of one) is taken, and a graph
    with an op whose output shape depends on the input's values (boolean-mask indexing, ``nonzero``)
    is left as it is. Returns whether anything was folded.
    """
    graph = module.graph
    nodes = list(graph.nodes())
    if any(list(node.blocks()) for node in nodes):  # control flow (a scripted part): left as it is
        return False
    mutated = _mutated_values(nodes)
    # values computed from constants alone by deterministic nodes without side effects; the module's own
    # attributes (what freezing left as attribute reads) count as constants unless the graph writes one
    derived: set = set()
    if not any(node.kind() == "prim::SetAttr" for node in nodes):
        derived.update(v for v in graph.inputs() if v.type().kind() == "ClassType")
    for node in nodes:
        schema = _schema(node)
        pure = node.kind() in _PURE_PRIMS if schema is None else not (schema.is_mutable or node.isNondeterministic())
        touched = (*node.inputs(), *node.outputs())
        if node.kind() != "prim::Constant" and pure and not any(v in mutated for v in touched) \
                and all(v.node().kind() == "prim::Constant" or v in derived for v in node.inputs()):
            derived.update(node.outputs())
    for node in nodes:  # boolean-mask indexing and the like: shapes that depend on values, left as traced
        if node.kind() in _DATA_DEPENDENT or (node.kind().startswith("aten::index") and not all(
                v.node().kind() == "prim::Constant" or v in derived for v in list(node.inputs())[1:2])):
            return False
    wanted: list[tuple[int, int]] = []  # (node index, output index) of the values to read
    for i, node in enumerate(nodes):
        for j, value in enumerate(node.outputs()):
            if value.type().kind() not in _FOLDABLE or value in mutated:
                continue
            if node.kind() == "aten::size" or (
                    value in derived and any(use.user.kind() == "prim::Return" or not set(use.user.outputs()) <= derived
                                            for use in value.uses())):
                wanted.append((i, j))
    if not wanted:
        return False
    read = _read_values(module, [(i, "output", j) for i, j in wanted], example)
    for (i, j), value in zip(wanted, read):
        graph.setInsertPoint(nodes[i])
        constant = graph.insertConstant(value)
        graph.setInsertPoint(graph.return_node())  # never leave the insert point on a node about to go
        nodes[i].outputsAt(j).replaceAllUsesWith(constant)
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_dce(graph)
    return True


def _read_values(module: torch.jit.ScriptModule, where: list[tuple[int, str, int]], example: torch.Tensor) -> tuple:
    """The values at ``where`` (node index, ``"input"`` or ``"output"``, position) in one run on ``example``.

    Runs a copy of ``module``'s graph that returns those values instead of its outputs.
    """
    probe = module.graph.copy()
    copied = list(probe.nodes())
    probed = [copied[i].inputsAt(k) if kind == "input" else copied[i].outputsAt(k) for i, kind, k in where]
    returned = probe.create("prim::TupleConstruct", probed)
    returned.output().setType(torch._C.TupleType([v.type() for v in probed]))
    returned.insertBefore(probe.return_node())
    for _ in range(len(list(probe.outputs()))):
        probe.eraseOutput(0)
    probe.registerOutput(returned.output())
    with torch.jit.optimized_execution(False):
        return torch._C._create_function_from_graph("probe", probe)(module._c, example)


def _prepack_conv_weights(module: torch.jit.ScriptModule, example: torch.Tensor) -> int:
    """Give every oneDNN conv of the graph its weight already reordered into oneDNN's blocked layout.

    ``aten::mkldnn_convolution`` with a plain weight reorders it on every call (about 0.6 ms of a
    VeloxSeg forward at 1 thread, weights cold in cache). Each conv's weight is reordered once for
    its one input shape and kept as an attribute of the module. A conv on a channels-last input (the
    head's slabs) becomes ``mkldnn::_convolution_pointwise`` (oneDNN's inference conv, as
    ``torch.compile`` uses it), whose output stays channels-last with a reordered weight, at batch 1
    only (at batch 2 it took a slower kernel); the others keep their op (as ``_convolution_pointwise``
    the grouped convs took other, slower kernels: +3.8 ms a forward). Returns the number of convs
    changed.
    """
    graph = module.graph
    nodes = list(graph.nodes())
    candidates = []
    for i, node in enumerate(nodes):
        if node.kind() != "aten::mkldnn_convolution" or not all(
                node.inputsAt(k).node().kind() == "prim::Constant" for k in range(1, 7)):
            continue
        weight = node.inputsAt(1).toIValue()
        if isinstance(weight, torch.Tensor) and weight.layout == torch.strided and weight.dim() == 5 \
                and weight.dtype == torch.float32:
            candidates.append(i)
    if not candidates:
        return 0
    inputs = _read_values(module, [(i, "input", 0) for i in candidates], example)
    self_value = next(iter(graph.inputs()))
    changed = 0
    for i, x in zip(candidates, inputs):
        node = nodes[i]
        weight, _, padding, stride, dilation, groups = (node.inputsAt(k).toIValue() for k in range(1, 7))
        onednn_input = x.layout != torch.strided
        channels_last = not onednn_input and not x.is_contiguous()
        if not weight.is_contiguous() and not channels_last:
            continue
        if channels_last and x.shape[0] > 1:
            continue  # at batch 2 _convolution_pointwise took another kernel: head +1.9 ms (1 thread), not bit-equal
        try:
            packed = torch._C._nn.mkldnn_reorder_conv3d_weight(weight.contiguous().to_mkldnn(), padding, stride,
                                                               dilation, groups, list(x.shape))
        except RuntimeError:
            continue
        name = f"_onednn_weight_{changed}"
        module._c._register_attribute(name, torch._C.TensorType.get(), packed)
        read = graph.create("prim::GetAttr", [self_value])
        read.s_("name", name)
        read.output().setType(torch._C.TensorType.get())
        read.insertBefore(node)
        node.replaceInput(1, read.output())
        if channels_last:
            _to_pointwise(graph, node)
        changed += 1
    torch._C._jit_pass_dce(graph)
    return changed


def _to_pointwise(graph: torch._C.Graph, node: torch._C.Node) -> None:
    """Replace an ``aten::mkldnn_convolution`` node by ``mkldnn::_convolution_pointwise`` without a fused op."""
    graph.setInsertPoint(node)
    attr, algorithm = graph.insertConstant("none"), graph.insertConstant("")
    scalars = graph.create("prim::ListConstruct", [])
    scalars.output().setType(torch._C.ListType(torch._C.OptionalType(torch._C.NumberType.get())))
    scalars.insertBefore(node)
    conv = graph.create("mkldnn::_convolution_pointwise", [*node.inputs(), attr, scalars.output(), algorithm], 1)
    conv.output().setType(node.output().type())
    conv.insertBefore(node)
    node.output().replaceAllUsesWith(conv.output())
    node.destroy()
    graph.setInsertPoint(graph.return_node())
