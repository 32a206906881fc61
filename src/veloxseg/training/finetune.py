"""Fine-tuning: start a run from another checkpoint's weights (``veloxseg train --init-from``).

Every tensor of the source whose name and shape match the new network is copied; the others keep
their fresh initialisation: a different class count re-initialises the segmentation head, a
different number of channels the input embeddings, and a deployed ``checkpoint_best.pt`` (texture
teachers and deep-supervision heads stripped) leaves those freshly initialised. The source is read
with :func:`veloxseg.checkpoint.load_checkpoint` (``weights_only``, integrity hash) and identified
by the SHA-256 of its file's bytes, recorded in ``config.json``, ``run_info.json`` and
``RUN_DIR/init_from.json`` (the full lists of loaded, skipped and new tensors).

``--freeze encoder`` keeps the encoder (VeloxSeg's transformer and convolution streams) fixed, for
very small datasets: only the decoder, the heads and the teachers are trained.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..io import file_sha256

#: what ``--freeze`` accepts
FREEZABLE: tuple[str, ...] = ("encoder",)
#: VeloxSeg's encoder: the PWA transformer stream and the convolution stream (with its modal mixers)
ENCODER_MODULES: tuple[str, ...] = ("transformer", "conv_stream")
#: constructor arguments that follow the new dataset, never the source checkpoint
DATASET_KWARGS: tuple[str, ...] = ("spatial_dims", "in_channels", "out_channels", "img_size", "deep_supervision",
                                   "texture_teachers")
#: parts a deployed checkpoint does not hold (they stay freshly initialised)
TRAINING_ONLY: tuple[str, ...] = ("teachers.", "ds_heads.")


@dataclass
class InitReport:
    """What :func:`transfer_weights` did: tensor names loaded, skipped (shape mismatch), new and unused."""

    source: str
    sha256: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # name, source, network shape
    new: list[str] = field(default_factory=list)  # in the network, not in the source
    unused: list[str] = field(default_factory=list)  # in the source, not in the network
    source_model: str = ""
    deployed_source: bool = False
    frozen: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``init_from.json``."""
        return {"path": self.source, "sha256": self.sha256, "source_model": self.source_model,
                "deployed_source": self.deployed_source, "frozen": self.frozen,
                "loaded": self.loaded, "skipped_shape_mismatch": [{"name": n, "source_shape": a, "network_shape": b}
                                                                  for n, a, b in self.skipped],
                "newly_initialised": self.new, "unused_from_source": self.unused}

    def summary(self) -> dict[str, Any]:
        """Counts and the skipped names, for ``run_info.json``."""
        return {"path": self.source, "sha256": self.sha256, "loaded": len(self.loaded),
                "skipped_shape_mismatch": [n for n, _, _ in self.skipped], "newly_initialised": len(self.new),
                "unused_from_source": len(self.unused), "frozen": self.frozen}

    def lines(self) -> list[str]:
        """The loading report, one line per kind, for the training log."""
        out = [f"init from {self.source} (sha256 {self.sha256[:16]}..., {self.source_model}): "
               f"{len(self.loaded)} tensor(s) loaded, {len(self.skipped)} skipped (shape mismatch), "
               f"{len(self.new)} newly initialised, {len(self.unused)} of the source unused"]
        out.append(f"  loaded: {group_names(self.loaded)}")
        if self.skipped:
            out.append("  skipped, shape differs (re-initialised): " + ", ".join(
                f"{n} {tuple(a)} -> {tuple(b)}" for n, a, b in self.skipped))
        if self.new:
            out.append(f"  newly initialised (not in the source): {group_names(self.new)}")
        if self.deployed_source and any(n.startswith(TRAINING_ONLY) for n in self.new):
            out.append("  the source is a deployed checkpoint (no texture teachers or deep-supervision heads): "
                       "those start from a fresh initialisation")
        if self.unused:
            out.append(f"  unused from the source: {group_names(self.unused)}")
        return out


def group_names(names: Iterable[str], depth: int = 2) -> str:
    """``names`` summarised by their first ``depth`` dotted parts: ``"decoder.up0.* (12), head.* (2)"``."""
    counts: dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        key = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} ({v})" if v > 1 else k for k, v in counts.items()) or "none"


def read_source(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The source checkpoint (loaded safely) and the SHA-256 of its file."""
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location="cpu")
    return ckpt, file_sha256(path)


def source_architecture(ckpt: Mapping[str, Any], patch_size: list[int]) -> dict[str, Any]:
    """The source VeloxSeg's constructor arguments that do not follow the dataset (widths, heads, ...).

    Its windows are kept only when it was trained with the same patch size (they are derived from it).
    """
    kwargs = {k: v for k, v in dict(ckpt.get("model_kwargs") or {}).items() if k not in DATASET_KWARGS}
    if list(dict(ckpt.get("model_kwargs") or {}).get("img_size") or []) != list(patch_size):
        kwargs.pop("window_sizes", None)
    return kwargs


def transfer_weights(network: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "",
                     sha256: str = "") -> InitReport:
    """Copy every tensor of ``state_dict`` whose name and shape match ``network``'s; report the rest."""
    own = network.state_dict()
    report = InitReport(source, sha256)
    update = {}
    for name, target in own.items():
        if name not in state_dict:
            report.new.append(name)
            continue
        value = state_dict[name]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(target.shape):
            shape = list(value.shape) if isinstance(value, torch.Tensor) else []
            report.skipped.append((name, shape, list(target.shape)))
            continue
        update[name] = value.to(dtype=target.dtype)
        report.loaded.append(name)
    report.unused = [n for n in state_dict if n not in own]
    network.load_state_dict(update, strict=False)
    return report


def init_from_checkpoint(network: nn.Module, path: str | os.PathLike, ckpt: Mapping[str, Any] | None = None,
                         sha256: str | None = None) -> InitReport:
    """:func:`transfer_weights` from the checkpoint at ``path``; an :class:`InputError` if nothing matches."""
    if ckpt is None or sha256 is None:
        ckpt, sha256 = read_source(path)
    report = transfer_weights(network, ckpt["state_dict"], str(path), sha256)
    report.source_model = str(ckpt.get("model_name"))
    kwargs = ckpt.get("model_kwargs") or {}
    report.deployed_source = "training_state" not in ckpt and not kwargs.get("texture_teachers", True)
    if not report.loaded:
        raise InputError(f"{path}: no tensor of this checkpoint ({report.source_model}) matches the network to "
                         f"train by name and shape; --init-from needs a checkpoint of the same model")
    return report


def freeze(network: nn.Module, part: str) -> int:
    """Stop gradients to ``part`` of ``network`` (``"encoder"``); returns the number of frozen parameters."""
    if part not in FREEZABLE:
        raise InputError(f"--freeze {part}: choose one of {', '.join(FREEZABLE)}")
    modules = [getattr(network, name, None) for name in ENCODER_MODULES]
    modules = [m for m in modules if m is not None]
    if not modules:
        raise InputError(f"--freeze {part}: applies to VeloxSeg networks only, not {type(network).__name__}")
    count = 0
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
            count += p.numel()
    return count


def write_report(report: InitReport, folder: str | os.PathLike) -> Path:
    """``folder/init_from.json``: the full loading report."""
    import json

    from ..io import atomic_path

    path = Path(folder) / "init_from.json"
    with atomic_path(path, ".json") as tmp:
        Path(tmp).write_text(json.dumps(report.as_dict(), indent=2))
    return path
