"""Where the network runs: PyTorch (on a CPU as a frozen TorchScript graph), eager PyTorch, a TorchScript
file, or onnxruntime.

A :class:`LoadedModel` bundles an engine (a callable ``(B, C, *patch) float32 -> (B, K, *patch)``
logits) with what prediction needs from the checkpoint: the preprocessing plan, labels and channel
names. It is built from a training checkpoint (``.pt``) or from an exported model whose JSON
sidecar ``veloxseg export`` wrote.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)

#: ``torch``: PyTorch, on a CPU through a frozen TorchScript graph once a window shape has had
#: :data:`~.graph.PREDICT_TRACE_AFTER` calls (:mod:`.graph`); ``eager``: PyTorch, never traced;
#: ``onnxruntime``: the network exported to ONNX.
ENGINES: tuple[str, ...] = ("torch", "eager", "onnxruntime")
Engine = Callable[[torch.Tensor], torch.Tensor]


class TorchEngine:
    """Run an eval-mode module (eager or TorchScript) under ``torch.inference_mode``.

    With ``graph=True`` on a CPU the module runs as a :class:`~.graph.FrozenGraph`: eagerly for the
    first :data:`~.graph.PREDICT_TRACE_AFTER` calls of a window shape, then traced (about 1.5-2 s once)
    and about 10-18 % faster per call; and a batch of windows is spread over the threads one window
    per thread (:class:`~.streams.WindowStreams`), which on 2 threads gets 1.9x the windows of one
    thread from the graph instead of 1.5-1.7x.
    """

    def __init__(self, module: nn.Module, device: str | torch.device = "cpu", graph: bool = False) -> None:
        self.device = torch.device(device)
        module = module.to(self.device).eval()
        self.module: Callable[[torch.Tensor], torch.Tensor] = module
        if graph and self.device.type == "cpu":
            from .graph import PREDICT_TRACE_AFTER, FrozenGraph
            from .streams import WindowStreams

            self.module = WindowStreams(FrozenGraph(module, trace_after=PREDICT_TRACE_AFTER))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x.to(self.device, torch.float32)).float()


def import_onnxruntime():
    """The onnxruntime module, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        from ..errors import VeloxSegError

        raise VeloxSegError("onnxruntime is not installed: pip install 'veloxseg[deploy]'") from None
    return onnxruntime


class OnnxEngine:
    """Run an ONNX model with onnxruntime on the CPU; tensors in and out, no autograd involved."""

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None,
                 input_name: str = "image", output_name: str = "logits") -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as err:
            name = "<in-memory model>" if isinstance(model, bytes) else str(model)
            raise InputError(f"{name}: not a loadable ONNX model ({type(err).__name__}: {err})") from None
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: arr})[0])


@dataclass
class LoadedModel:
    """An engine plus the checkpoint's preprocessing plan, labels and channel names."""

    engine: Engine
    plan: dict[str, Any]
    labels: dict[str, int]
    channel_names: list[str]
    source: Path
    engine_name: str = "torch"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """The sliding-window size: the training patch size."""
        return tuple(int(s) for s in self.plan["patch_size"])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        """Input channels (files per case) the model expects."""
        return len(self.channel_names)


def _check_plan(plan: Any, source: Path) -> dict[str, Any]:
    if not isinstance(plan, Mapping):
        raise InputError(f"{source}: has no preprocessing plan")
    missing = [k for k in ("channel_names", "spacing", "patch_size", "normalization") if k not in plan]
    if missing:
        raise InputError(f"{source}: preprocessing plan lacks {', '.join(missing)}")
    from ..data.preprocessing import normalization_problem

    problem = normalization_problem(plan["normalization"])
    if problem is not None:
        raise InputError(f"{source}: {problem}")
    return dict(plan)


def _labels(value: Any) -> dict[str, int]:
    if isinstance(value, Mapping):
        return {str(k): int(v) for k, v in value.items() if not isinstance(v, (list, tuple))}
    return {}


def is_exported_model(path: str | os.PathLike) -> bool:
    """True for a file ``veloxseg export`` wrote (it has a ``.json`` sidecar beside it)."""
    from ..export import sidecar_path

    p = Path(path)
    return p.suffix.lower() == ".onnx" or sidecar_path(p).is_file()


def load_model(path: str | os.PathLike, engine: str = "torch", device: str | torch.device = "cpu",
               threads: int | None = None) -> LoadedModel:
    """Load a checkpoint or an exported model to run with ``engine`` (one of :data:`ENGINES`).

    A checkpoint with ``engine="onnxruntime"`` is exported to ONNX in memory first. An exported
    ``.onnx`` file always runs with onnxruntime, a TorchScript export with PyTorch (as it is).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    if is_exported_model(path):
        return _load_exported(path, engine, device, threads)
    from ..checkpoint import build_model, load_checkpoint

    ckpt = load_checkpoint(path, map_location="cpu")
    plan = _check_plan(ckpt.get("plan"), path)
    channel_names = [str(c) for c in (ckpt.get("channel_names") or plan["channel_names"])]
    try:
        module = build_model(ckpt, deploy=True).cpu().eval()
    except Exception as err:
        raise InputError(f"{path}: the weights do not fit the stored model ({type(err).__name__}: {err})") from None
    info = {"model_name": ckpt.get("model_name"), "versions": ckpt.get("versions")}
    if engine in ("torch", "eager"):
        run: Engine = TorchEngine(module, device, graph=engine == "torch")
    else:
        run = OnnxEngine(_onnx_bytes(module, len(channel_names), plan["patch_size"]), threads)
    return LoadedModel(run, plan, _labels(ckpt.get("labels")), channel_names, path, engine, info)


def _load_exported(path: Path, engine: str, device: str | torch.device, threads: int | None) -> LoadedModel:
    from ..export import read_sidecar

    meta = read_sidecar(path)
    plan = _check_plan(meta.get("plan"), path)
    channel_names = [str(c) for c in (meta.get("channel_names") or plan["channel_names"])]
    fmt = meta.get("model_format")
    if fmt == "onnx":
        if engine != "onnxruntime":
            log.info("%s is an ONNX export: running it with onnxruntime", path.name)
        run: Engine = OnnxEngine(path, threads, meta.get("input_name", "image"), meta.get("output_name", "logits"))
        engine = "onnxruntime"
    elif fmt == "torchscript":
        if engine == "onnxruntime":
            raise InputError(f"{path}: a TorchScript export runs with --engine torch (or eager); export to ONNX for onnxruntime")
        try:
            with warnings.catch_warnings():  # torch notes that TorchScript is deprecated in favour of torch.export
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise InputError(f"{path}: not a loadable TorchScript model ({type(err).__name__}: {err})") from None
        run = TorchEngine(module, device)
    else:
        raise InputError(f"{path}: unknown exported model format {fmt!r} in its sidecar")
    return LoadedModel(run, plan, _labels(meta.get("labels")), channel_names, path, engine,
                       {"model_name": meta.get("model_name"), "versions": meta.get("versions")})


def _onnx_bytes(module: nn.Module, in_channels: int, patch_size: Any) -> bytes:
    """Export ``module`` to ONNX (checked against eager) and return the file's bytes."""
    from ..export import export_module

    with tempfile.TemporaryDirectory(prefix="veloxseg-onnx-") as tmp:
        out = Path(tmp) / "model.onnx"
        export_module(module, "onnx", out, in_channels, tuple(int(s) for s in patch_size))
        return out.read_bytes()
