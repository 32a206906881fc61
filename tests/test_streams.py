"""A batch of windows spread over the threads, one window per thread, gives the logits of one call."""

import threading

import pytest
import torch

from veloxseg import VeloxSeg
from veloxseg.inference import streams
from veloxseg.inference.engines import TorchEngine
from veloxseg.inference.graph import FrozenGraph
from veloxseg.inference.streams import WindowStreams
from veloxseg.networks.layers import fast_paths, fast_paths_enabled


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def deployed():
    torch.manual_seed(0)
    return VeloxSeg(in_channels=[1, 1], img_size=(64, 64, 64)).for_inference()


class Recorder:
    """An engine that records on which thread, with how many intra-op threads, each window ran."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.fast: list[bool] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls.append((threading.get_ident(), torch.get_num_threads(), x.shape[0]))
            self.fast.append(fast_paths_enabled())
        if self.fail_on is not None and float(x[0, 0]) == self.fail_on:
            raise ValueError("window broke")
        return x * 2


def test_windows_run_one_per_thread_on_one_intra_op_thread_each(two_threads):
    engine = Recorder()
    x = torch.arange(4.0).view(4, 1)
    out = WindowStreams(engine)(x)
    assert torch.equal(out, x * 2)  # in order
    assert len(engine.calls) == 2 and {c[2] for c in engine.calls} == {2}
    assert len({c[0] for c in engine.calls}) == 2  # two threads ...
    assert {c[1] for c in engine.calls} == {1}  # ... each with one intra-op thread
    assert torch.get_num_threads() == 2  # restored


def test_one_window_or_one_thread_is_a_plain_call(two_threads):
    engine = Recorder()
    WindowStreams(engine)(torch.zeros(1, 1))
    torch.set_num_threads(1)
    WindowStreams(engine)(torch.zeros(2, 1))
    assert [(c[1], c[2]) for c in engine.calls] == [(2, 1), (1, 2)]
    assert {c[0] for c in engine.calls} == {threading.get_ident()}


def test_a_failing_window_raises_and_restores_the_thread_count(two_threads):
    streamed = WindowStreams(Recorder(fail_on=1))
    with pytest.raises(ValueError, match="window broke"):
        streamed(torch.tensor([[0.0], [1.0]]))  # the second window, on the worker thread, fails
    assert torch.get_num_threads() == 2
    assert torch.equal(streamed(torch.tensor([[0.0], [2.0]])), torch.tensor([[0.0], [4.0]]))


def test_streamed_graph_matches_one_call_and_traces_once(deployed, two_threads, monkeypatch):
    builds = []
    graph = FrozenGraph(deployed)
    build = graph._build
    monkeypatch.setattr(graph, "_build", lambda x: builds.append(x.shape) or build(x))
    x = torch.randn(2, 2, 64, 64, 64)
    with torch.inference_mode():
        expected = deployed(x)
        out = WindowStreams(graph)(x)  # both windows reach the untraced graph at once: one traces
    assert builds == [torch.Size([1, 2, 64, 64, 64])]
    assert list(graph._graphs) == [((2, 64, 64, 64), 1)]  # one window per call, one intra-op thread
    assert torch.allclose(out, expected, atol=1e-4)


def test_predict_engine_spreads_windows_over_the_threads(deployed):
    engine = TorchEngine(deployed, graph=True)
    assert isinstance(engine.module, WindowStreams) and isinstance(engine.module.engine, FrozenGraph)
    assert not isinstance(TorchEngine(deployed).module, WindowStreams)  # --engine eager: as it is


def test_openmp_threads_can_be_released_where_pytorch_runs_on_gnu_openmp():
    release = streams.openmp_release()
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        assert release is None
        return
    assert release is not None and release() == 0
    assert torch.ones(1 << 20).sum().item() == 1 << 20  # OpenMP starts new threads as needed


def test_switching_the_fast_kernels_off_on_one_thread_leaves_the_others_alone():
    inside, done = threading.Event(), threading.Event()
    seen = []

    def straightforward() -> None:
        with fast_paths(False):
            seen.append(fast_paths_enabled())
            inside.set()
            done.wait(10)

    worker = threading.Thread(target=straightforward)
    worker.start()
    assert inside.wait(10)
    assert seen == [False] and fast_paths_enabled()  # (was one process-wide switch: the bench's
    done.set()  # straightforward row, run on two threads, left the fast kernels off for every model after it)
    worker.join()
    assert fast_paths_enabled()


def test_the_callers_fast_kernel_setting_reaches_every_window(two_threads):
    engine = Recorder()
    with fast_paths(False):
        WindowStreams(engine)(torch.zeros(2, 1))
    WindowStreams(engine)(torch.zeros(2, 1))
    assert engine.fast == [False, False, True, True]
