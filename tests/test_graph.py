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


def test_no_private_torch_c_calls_in_the_package():
    """The graph is traced and frozen with public APIs only: no ``torch._C`` surgery anywhere in the package."""
    import pathlib

    import veloxseg

    root = pathlib.Path(veloxseg.__file__).parent
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if ("torch._C" in line or "._c._" in line) and not line.lstrip().startswith("#")]
    assert not offenders, offenders


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
