"""Where the network runs: PyTorch (on a CPU as a frozen TorchScript graph), eager PyTorch, a package
compiled ahead of time (``torch.export`` + AOTInductor, :mod:`.pt2`), a TorchScript file, or onnxruntime.

A :class:`LoadedModel` bundles an engine (a callable ``(B, C, *patch) float32 -> (B, K, *patch)``
logits) with what prediction needs from the checkpoint: the preprocessing plan, labels and channel
names. It is built from a training checkpoint (``.pt``) or from an exported model whose JSON
sidecar ``veloxseg export`` wrote.
"""

from __future__ import annotations

import logging
import os
import tempfile
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
#: ``pt2``: compiled by AOTInductor once per window shape and cached (:mod:`.pt2`), or a ``.pt2`` export;
#: ``onnxruntime``: the network exported to ONNX.
ENGINES: tuple[str, ...] = ("torch", "eager", "pt2", "onnxruntime")
#: ``auto``: bf16 where the CPU has it natively and the first window's labels agree with fp32 (:mod:`.precision`)
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
Engine = Callable[[torch.Tensor], torch.Tensor]


class TorchEngine:
    """Run an eval-mode module (eager or TorchScript) under ``torch.inference_mode``.

    With ``dtype=torch.bfloat16`` a bfloat16 copy of the module runs on channels-last inputs (eagerly:
    the graph is float32 only) and returns float32 logits.

    With ``graph=True`` on a CPU the module runs as a :class:`~.graph.FrozenGraph`: eagerly for the
    first :data:`~.graph.PREDICT_TRACE_AFTER` calls of a window shape, then traced (about 1-2 s once)
    and about 10-18 % faster per call; and a batch of windows is spread over the threads one window
    per thread (:class:`~.streams.WindowStreams`), which on 2 threads gets 1.9x the windows of one
    thread from the graph instead of 1.5-1.7x.
    """

    def __init__(self, module: nn.Module, device: str | torch.device = "cpu", graph: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        if dtype != torch.float32:
            import copy

            module = copy.deepcopy(module).to(dtype)
        module = module.to(self.device).eval()
        self.module: Callable[[torch.Tensor], torch.Tensor] = module
        if graph and self.device.type == "cpu" and dtype == torch.float32:
            from .graph import PREDICT_TRACE_AFTER, FrozenGraph
            from .streams import WindowStreams

            self.module = WindowStreams(FrozenGraph(module, trace_after=PREDICT_TRACE_AFTER))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.device, self.dtype)
            if self.dtype != torch.float32:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            return self.module(x).float()


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
    #: ``fp32`` or ``bf16``: what ``engine`` computes in; ``auto`` until :class:`~.predictor.Predictor` decides
    precision: str = "fp32"
    #: with ``precision="auto"``: the bf16 engine to choose, and the float32 engine to check it against
    bf16_engine: Engine | None = None
    reference: Engine | None = None

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
    """True for a file ``veloxseg export`` wrote (it has a ``.json`` sidecar beside it, or ends in .onnx or .pt2)."""
    from ..export import sidecar_path

    p = Path(path)
    return p.suffix.lower() in (".onnx", ".pt2") or sidecar_path(p).is_file()


def load_model(path: str | os.PathLike, engine: str = "torch", device: str | torch.device = "cpu",
               threads: int | None = None, precision: str = "fp32") -> LoadedModel:
    """Load a checkpoint or an exported model to run with ``engine`` (one of :data:`ENGINES`) in ``precision``.

    A checkpoint with ``engine="onnxruntime"`` is exported to ONNX in memory first; with ``engine="pt2"`` it is
    compiled per window shape into the user's cache (:class:`~.pt2.CompiledEngine`). An exported ``.onnx``
    file always runs with onnxruntime, a ``.pt2`` package as compiled, a TorchScript export with PyTorch.
    ``precision`` (one of :data:`PRECISIONS`) applies to checkpoints; an export runs in the precision it was
    exported in. With ``auto`` the engine stays undecided (``precision="auto"``) until the first window.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    if is_exported_model(path):
        return _load_exported(path, engine, device, threads, precision)
    from ..checkpoint import build_model, load_checkpoint

    ckpt = load_checkpoint(path, map_location="cpu")
    plan = _check_plan(ckpt.get("plan"), path)
    channel_names = [str(c) for c in (ckpt.get("channel_names") or plan["channel_names"])]
    try:
        module = build_model(ckpt, deploy=True).cpu().eval()
    except Exception as err:
        raise InputError(f"{path}: the weights do not fit the stored model ({type(err).__name__}: {err})") from None
    info = {"model_name": ckpt.get("model_name"), "versions": ckpt.get("versions")}
    labels = _labels(ckpt.get("labels"))
    if engine == "onnxruntime":
        if precision != "fp32":
            log.info("precision %s: onnxruntime runs the network in fp32 here", precision)
        run = OnnxEngine(_onnx_bytes(module, len(channel_names), plan["patch_size"]), threads)
        return LoadedModel(run, plan, labels, channel_names, path, engine, info)
    device = torch.device(device)
    precision = _resolve_precision(precision, device)
    digest = None
    if engine == "pt2" and device.type == "cpu":
        from ..io import file_sha256

        digest = file_sha256(path)  # the cache key of the compiled packages: these exact checkpoint bytes

    def build(dtype: torch.dtype) -> Engine:
        fallback = TorchEngine(module, device, graph=engine in ("torch", "pt2"), dtype=dtype)
        if digest is None:
            return fallback
        from .pt2 import CompiledEngine
        from .streams import WindowStreams

        return WindowStreams(CompiledEngine(module, digest, fallback, "bf16" if dtype == torch.bfloat16 else "fp32"))

    if precision == "auto":
        return LoadedModel(build(torch.float32), plan, labels, channel_names, path, engine, info, "auto",
                           bf16_engine=build(torch.bfloat16), reference=TorchEngine(module, device))
    run = build(torch.bfloat16 if precision == "bf16" else torch.float32)
    return LoadedModel(run, plan, labels, channel_names, path, engine, info, precision)


def _resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` stays ``auto`` (decided on the first window) only where the CPU computes bf16 natively."""
    if precision != "auto":
        return precision
    from . import cpu

    if device.type != "cpu":
        log.info("precision auto: fp32 (bf16 is chosen automatically on CPUs only)")
        return "fp32"
    if not cpu.native_bf16():
        log.info("precision auto: fp32 (this CPU has no native bf16: neither amx_bf16 nor avx512_bf16)")
        return "fp32"
    return "auto"


def _load_exported(path: Path, engine: str, device: str | torch.device, threads: int | None,
                   precision: str = "fp32") -> LoadedModel:
    from ..export import read_sidecar, warn_torchscript

    meta = read_sidecar(path)  # JSON data only
    plan = _check_plan(meta.get("plan"), path)
    channel_names = [str(c) for c in (meta.get("channel_names") or plan["channel_names"])]
    fmt = meta.get("model_format")
    stored = str(meta.get("precision") or "fp32")
    if precision not in ("auto", stored):
        log.info("%s was exported in %s: it runs as exported (--precision applies to checkpoints)", path.name, stored)
    if fmt == "onnx":
        if engine != "onnxruntime":
            log.info("%s is an ONNX export: running it with onnxruntime", path.name)
        run: Engine = OnnxEngine(path, threads, meta.get("input_name", "image"), meta.get("output_name", "logits"))
        engine = "onnxruntime"
    elif fmt == "pt2":
        if engine != "pt2":
            log.info("%s is a compiled .pt2 package: running it as compiled", path.name)
        run = _load_pt2(path, meta)
        engine = "pt2"
    elif fmt == "torchscript":
        if engine == "onnxruntime":
            raise InputError(f"{path}: a TorchScript export runs with --engine torch (or eager); export to ONNX for onnxruntime")
        warn_torchscript(f"loading {path.name}")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise InputError(f"{path}: not a loadable TorchScript model ({type(err).__name__}: {err})") from None
        run = TorchEngine(module, device)
    else:
        raise InputError(f"{path}: unknown exported model format {fmt!r} in its sidecar")
    return LoadedModel(run, plan, _labels(meta.get("labels")), channel_names, path, engine,
                       {"model_name": meta.get("model_name"), "versions": meta.get("versions")}, stored)


def _load_pt2(path: Path, meta: Mapping[str, Any]) -> Engine:
    """A ``.pt2`` export, refused where this CPU lacks an instruction set of the one it was compiled on."""
    import platform

    from .cpu import isa_flags
    from .pt2 import PackageEngine

    built_on = meta.get("machine")
    if built_on and built_on != platform.machine():
        raise InputError(f"{path}: compiled for {built_on}, this machine is {platform.machine()}; export it here")
    missing = sorted(set(meta.get("cpu_flags") or []) - set(isa_flags()))
    if missing:
        raise InputError(f"{path}: compiled on a CPU with {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}, "
                         "which this CPU lacks (it could crash with an illegal instruction); export it on this machine")
    try:
        return PackageEngine(path)
    except Exception as err:
        raise InputError(f"{path}: not a loadable .pt2 package ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None


def _onnx_bytes(module: nn.Module, in_channels: int, patch_size: Any) -> bytes:
    """Export ``module`` to ONNX (checked against eager) and return the file's bytes."""
    from ..export import export_module

    with tempfile.TemporaryDirectory(prefix="veloxseg-onnx-") as tmp:
        out = Path(tmp) / "model.onnx"
        export_module(module, "onnx", out, in_channels, tuple(int(s) for s in patch_size))
        return out.read_bytes()
