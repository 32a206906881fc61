"""The frozen TorchScript graph that `veloxseg predict` runs on a CPU computes what the eager network does."""

import logging
import warnings

import pytest
import torch
from torch import nn

from veloxseg import VeloxSeg
from veloxseg.inference.graph import FrozenGraph
from veloxseg.networks.layers import fast_paths
from veloxseg.summary import count_flops


@pytest.fixture(scope="module")
def deployed():
    torch.manual_seed(0)
    return VeloxSeg(in_channels=[1, 1], img_size=(64, 64, 64)).for_inference()


def test_graph_matches_eager_and_pads_a_smaller_batch(deployed):
    graph = FrozenGraph(deployed)
    x = torch.randn(2, 2, 64, 64, 64)
    with torch.inference_mode():
        eager = deployed(x)
        out = graph(x)
        last = graph(x[1:])  # the last window of a volume: padded to the traced batch, no second trace
    assert len(graph._graphs) == 1
    (batch, traced), = graph._graphs.values()
    assert batch == 2 and isinstance(traced, torch.jit.ScriptModule)
    assert out.shape == eager.shape and torch.allclose(out, eager, atol=1e-4)
    assert last.shape == (1, *eager.shape[1:]) and torch.allclose(last, eager[1:], atol=1e-4)


def test_graph_stays_eager_where_it_does_not_apply(deployed):
    graph = FrozenGraph(deployed)
    x = torch.randn(1, 2, 64, 64, 64)
    with torch.no_grad(), fast_paths(False):
        straightforward = graph(x)  # the straightforward path is eager PyTorch on the default ops
    assert not graph._graphs
    assert count_flops(graph, (1, 2, 64, 64, 64))[0] == count_flops(deployed, (1, 2, 64, 64, 64))[0]
    assert not graph._graphs
    with torch.no_grad():
        assert torch.allclose(graph(x), straightforward, atol=1e-4)


def test_a_failed_trace_warns_once_and_runs_eagerly(deployed, monkeypatch, caplog):
    def broken_trace(*args, **kwargs):
        raise RuntimeError("tracer broke")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    graph = FrozenGraph(deployed)
    x = torch.randn(1, 2, 64, 64, 64)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        first, second = graph(x), graph(x)
        expected = deployed(x)
    assert [r.getMessage() for r in caplog.records].count(
        "could not trace the network into a TorchScript graph (RuntimeError: tracer broke); running it eagerly") == 1
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_graph_is_traced_only_after_the_given_number_of_eager_calls(deployed):
    graph = FrozenGraph(deployed, trace_after=2)
    x = torch.randn(1, 2, 64, 64, 64)
    with torch.inference_mode():
        expected = deployed(x)
        for _ in range(2):
            assert torch.equal(graph(x), expected) and not graph._graphs  # eager so far
        out = graph(x)
    assert len(graph._graphs) == 1 and torch.allclose(out, expected, atol=1e-4)
    with pytest.raises(ValueError, match="trace_after"):
        FrozenGraph(deployed, trace_after=-1)


def _kinds(graph: FrozenGraph) -> set[str]:
    (_, traced), = graph._graphs.values()
    return {node.kind() for node in traced.graph.nodes()}


def test_shape_arithmetic_and_weight_only_work_are_folded_out_of_the_graph(deployed):
    graph = FrozenGraph(deployed)
    x = torch.randn(1, 2, 64, 64, 64)
    with torch.inference_mode():
        out, eager = graph(x), deployed(x)
        again = graph(-x)  # a second, different window: nothing of the first is baked in
    kinds = _kinds(graph)
    assert "aten::size" not in kinds  # every size read once and written in as a constant
    assert "aten::index" not in kinds and "aten::arange" not in kinds  # position-bias gather, interpolation matrices
    assert torch.allclose(out, eager, atol=1e-4)
    with torch.inference_mode():
        assert torch.allclose(again, deployed(-x), atol=1e-4)
        unfolded = FrozenGraph(deployed, fold=False)
        assert torch.equal(unfolded(x), out)  # folding changes no value
    assert "aten::size" in _kinds(unfolded)


class _WritesIntoABuffer(nn.Module):
    """Allocates a buffer from the input's shape (a constant once sizes are read), writes into views of it,
    returns a view of the whole."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buffer = torch.empty(x.shape[0], 3)
        torch.mul(x[:2, :3], self.weight.repeat(1, 1), out=buffer[:2])  # written through views, as the
        torch.mul(x[2:, :3], 2.0, out=buffer[2:])  # attention writes its chunks
        return buffer.t() + self.weight.flip(0)[:, None]


def test_folding_never_freezes_a_buffer_that_the_graph_writes_to():
    module = _WritesIntoABuffer().eval()
    graph = FrozenGraph(module)
    first, second = torch.randn(4, 5), torch.randn(4, 5)
    with torch.inference_mode():
        graph(first)
        out = graph(second)
        expected = module(second)
    assert torch.equal(out, expected)
    kinds = _kinds(graph)
    assert "aten::flip" not in kinds and "aten::repeat" not in kinds  # computed from the weight alone: folded
    assert "aten::mul" in kinds  # the write into the buffer stays


class _MaskedCount(nn.Module):
    """An output that depends on how many input values are positive: a shape only known at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x[x > 0].shape[0]


def test_sizes_that_depend_on_the_input_values_are_not_folded():
    module = _MaskedCount().eval()
    graph = FrozenGraph(module)
    first, second = torch.ones(2, 3), -torch.ones(2, 3)
    second[0, 0] = 1.0
    with torch.inference_mode():
        assert torch.equal(graph(first), module(first))
        assert torch.equal(graph(second), module(second))  # one positive value now, not six
    assert "aten::size" in _kinds(graph)


def _conv_weights(graph: FrozenGraph) -> list[tuple[str, str]]:
    """Each oneDNN conv of the traced graph: its op, and where it takes its weight from (node kind)."""
    (_, traced), = graph._graphs.values()
    return [(n.kind(), n.inputsAt(1).node().kind()) for n in traced.graph.nodes()
            if n.kind() in ("aten::mkldnn_convolution", "mkldnn::_convolution_pointwise")]


def test_conv_weights_are_reordered_for_onednn_once_with_the_same_result(deployed):
    x = torch.randn(1, 2, 64, 64, 64)
    with torch.inference_mode():
        packed, plain = FrozenGraph(deployed), FrozenGraph(deployed, prepack=False)
        out, expected = packed(x), plain(x)
        again = packed(-x)
    assert {source for _, source in _conv_weights(plain)} == {"prim::Constant"}
    convs = _conv_weights(packed)
    assert len(convs) == len(_conv_weights(plain)) and {source for _, source in convs} == {"prim::GetAttr"}
    assert ("mkldnn::_convolution_pointwise", "prim::GetAttr") in convs  # the head's channels-last slab convs
    assert torch.equal(out, expected)
    with torch.inference_mode():
        assert torch.equal(again, plain(-x))
        pair = FrozenGraph(deployed)
        pair(torch.randn(2, 2, 64, 64, 64))
    # at batch 2 oneDNN's inference conv took a slower kernel for the head: its slab convs keep their op
    assert "mkldnn::_convolution_pointwise" not in {op for op, _ in _conv_weights(pair)}


def test_torchscript_deprecation_shows_and_as_an_error_leaves_the_network_eager(deployed, caplog):
    """The graph stands on TorchScript, which PyTorch deprecates: its warning is not silenced, and the day it
    becomes an error the network still runs (eagerly), saying so in one line."""
    x = torch.randn(1, 2, 64, 64, 64)
    with pytest.warns(DeprecationWarning, match="torch.jit"), torch.inference_mode():
        FrozenGraph(deployed)(x)
    graph = FrozenGraph(deployed)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING), torch.inference_mode():
        warnings.simplefilter("error", DeprecationWarning)
        out = graph(x)
        expected = deployed(x)
    assert torch.equal(out, expected)
    assert not [g for _, g in graph._graphs.values() if g is not None]
    assert any("could not trace" in r.getMessage() and "DeprecationWarning" in r.getMessage() for r in caplog.records)
