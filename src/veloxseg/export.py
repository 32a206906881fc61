"""Export the deployable network (no teachers, no deep supervision) to ONNX, a ``.pt2`` package or TorchScript.

Beside the model file ``FILE`` a JSON sidecar ``FILE.json`` keeps what prediction needs besides
the weights: the preprocessing plan, labels, channel names, the patch (window) size and the
channel layout, so ``veloxseg predict -m FILE`` runs the whole pipeline from the two files.
Every export is checked against eager PyTorch on a random patch before it is kept.

ONNX goes through PyTorch's ``torch.export``-based exporter (``dynamo=True``); ``pt2`` is the same
program compiled by AOTInductor (:mod:`veloxseg.inference.pt2`). Both keep the channels and the window
fixed and the batch dynamic. TorchScript (``torch.jit.trace``) is deprecated by PyTorch: it is kept while
torch ships it, and says so when used.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError

FORMATS: tuple[str, ...] = ("onnx", "pt2", "torchscript")
SIDECAR_FORMAT = "veloxseg-export"
SIDECAR_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_OPSET = 18  # the torch.export-based exporter writes opset 18 natively (17 fails: Split)
LOGIT_TOLERANCE = 1e-3
MIN_ARGMAX_AGREEMENT = 0.999


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and how closely it reproduces eager PyTorch."""

    model_path: Path
    sidecar_path: Path
    max_abs_logit_diff: float
    argmax_agreement: float


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """The JSON sidecar of an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def read_sidecar(model_path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``model_path``, checked; an :class:`InputError` naming the file otherwise."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise InputError(f"{path}: sidecar of exported model {Path(model_path).name} is missing "
                         f"(export it with `veloxseg export`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable veloxseg export sidecar ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise InputError(f"{path}: not a veloxseg export sidecar")
    if int(meta.get("format_version", 0)) > SIDECAR_VERSION:
        raise InputError(f"{path}: sidecar format version {meta.get('format_version')} is newer than this "
                         f"veloxseg understands ({SIDECAR_VERSION}); upgrade veloxseg")
    return meta


def export_module(model: nn.Module, fmt: str, output: str | os.PathLike, in_channels: int,
                  roi_size: tuple[int, int, int], metadata: Mapping[str, Any] | None = None,
                  opset: int = ONNX_OPSET) -> ExportResult:
    """Export an eval-mode module returning logits ``(B, K, *roi)`` and write its sidecar.

    The model is written to a temporary name, compared with eager PyTorch on a random input
    (logits within :data:`LOGIT_TOLERANCE`, argmax agreement at least :data:`MIN_ARGMAX_AGREEMENT`),
    and only then renamed into place with its sidecar.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    output = Path(output)
    if not output.parent.is_dir():
        raise InputError(f"{output}: folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise InputError(f"{output}: folder {output.parent} is not writable")
    model = model.eval()
    from .inference.pt2 import example_input

    example = example_input((in_channels, *roi_size))  # batch 2: traced with a batch of 1 it would stay 1
    # the temporary name keeps the suffix: AOTInductor writes only to *.pt2
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp.pt2" if fmt == "pt2" else ".tmp",
                                    dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            expected = model(example)
        _write(model, fmt, example, tmp, opset)
        got = _run_exported(tmp, fmt, example.numpy())
        diff, agreement = compare_logits(expected.numpy(), got)
        if not (diff <= LOGIT_TOLERANCE and agreement >= MIN_ARGMAX_AGREEMENT):
            raise RuntimeError(f"export check failed: max |logit difference| {diff:.3g} (limit {LOGIT_TOLERANCE}), "
                               f"argmax agreement {agreement:.4%} (minimum {MIN_ARGMAX_AGREEMENT:.1%})")
        meta = {
            "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "model_format": fmt,
            "model_file": output.name, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
            "in_channels": int(in_channels), "out_channels": int(expected.shape[1]), "roi_size": list(roi_size),
            "opset": opset if fmt == "onnx" else None, "batch": "dynamic",
            **(_pt2_fields() if fmt == "pt2" else {}),
            "check": {"max_abs_logit_diff": diff, "argmax_agreement": agreement},
            **dict(metadata or {}),
        }
        side = sidecar_path(output)
        side_tmp = tmp.with_name(tmp.name + ".json")
        side_tmp.write_text(json.dumps(meta, indent=2, default=_json_default))
        os.replace(tmp, output)
        os.replace(side_tmp, side)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".json").unlink(missing_ok=True)
    return ExportResult(output, side, diff, agreement)


def check_export_target(source: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an output that is the source checkpoint (or its sidecar would be), or any file that is not
    an earlier veloxseg export, unless ``overwrite``; the source is never replaced."""
    src, out = Path(source), Path(output)
    for t in (out, sidecar_path(out)):
        if t.absolute() == src.absolute() or (t.exists() and src.exists() and t.resolve() == src.resolve()):
            raise InputError(f"{out}: would replace the checkpoint being exported ({src}); choose another output name")
    existing = [t for t in (out, sidecar_path(out)) if t.exists() or t.is_symlink()]
    if existing and not overwrite and not _is_our_export(out):
        raise InputError(f"{existing[0]}: exists and is not a veloxseg export; choose another name or pass --overwrite")


def _is_our_export(path: Path) -> bool:
    try:
        meta = json.loads(sidecar_path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == SIDECAR_FORMAT and meta.get("model_file") == path.name


def _write(model: nn.Module, fmt: str, example: torch.Tensor, path: Path, opset: int) -> None:
    """Write ``model`` in ``fmt`` to ``path``, traced at ``example`` (channels and window fixed, batch dynamic)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    if fmt == "onnx":
        from .extras import require

        require(("onnx", "onnxscript"), "veloxseg export --format onnx", "deploy")
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), verbose=False)
    elif fmt == "pt2":
        from .inference.pt2 import compile_package

        compile_package(model, example, path)
    else:
        warn_torchscript("TorchScript export")
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on shape checks that are constant for a fixed window (TracerWarning only)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), str(path))


def warn_torchscript(what: str) -> None:
    """Say (a FutureWarning, shown by default) that ``what`` stands on TorchScript, which PyTorch deprecates."""
    warnings.warn(f"{what}: TorchScript (torch.jit) is deprecated by PyTorch and may stop working with a future "
                  "torch; --format pt2 or onnx (veloxseg export) is the supported way", FutureWarning, stacklevel=3)


def _pt2_fields() -> dict[str, Any]:
    """What a ``.pt2`` package depends on besides its file: the CPU it was compiled for, torch, the precision."""
    import platform

    from .inference.cpu import isa_flags

    return {"precision": "fp32", "machine": platform.machine(), "cpu_flags": isa_flags(), "torch": torch.__version__}


def export_checkpoint(checkpoint: str | os.PathLike, fmt: str, output: str | os.PathLike,
                      opset: int = ONNX_OPSET, overwrite: bool = False) -> ExportResult:
    """Export the deployable network of a veloxseg training checkpoint, with its sidecar."""
    from .checkpoint import build_model, load_checkpoint

    check_export_target(checkpoint, output, overwrite)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    model = build_model(ckpt, deploy=True).cpu().eval()
    kwargs = ckpt["model_kwargs"]
    plan = ckpt.get("plan") or {}
    # from the plan, so that any registered model family (MONAI baselines too) exports the same way
    in_channels = len(ckpt.get("channel_names") or plan.get("channel_names") or [])
    roi = tuple(int(s) for s in (plan.get("patch_size") or kwargs.get("img_size") or ()))
    if not in_channels or len(roi) != 3:
        raise InputError(f"{checkpoint}: checkpoint lacks the channel names or the patch size to export with")
    metadata = {
        "model_name": ckpt.get("model_name", "VeloxSeg"),
        "model_kwargs": kwargs,
        "labels": ckpt.get("labels"),
        "channel_names": ckpt.get("channel_names"),
        "plan": ckpt.get("plan"),
        "source_checkpoint": Path(checkpoint).name,
        "versions": ckpt.get("versions"),
    }
    return export_module(model, fmt, output, in_channels, roi, metadata, opset)  # type: ignore[arg-type]


def compare_logits(expected: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Max absolute logit difference and the fraction of voxels whose argmax agrees."""
    diff = float(np.max(np.abs(expected - got)))
    agreement = float(np.mean(expected.argmax(1) == got.argmax(1)))
    return diff, agreement


def _run_exported(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        from .inference.engines import import_onnxruntime

        session = import_onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    if fmt == "pt2":
        from .inference.pt2 import load_package

        module = load_package(path)
    else:
        module = torch.jit.load(str(path), map_location="cpu")  # deprecated by PyTorch: its warning is left as it is
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in the export sidecar")
