"""Self-contained checkpoints: everything prediction needs lives in one ``.pt`` file.

Interface (used by ``veloxseg train`` and ``veloxseg predict``):

* :func:`save_checkpoint` ``(path, payload)`` -- atomic write (temporary file + rename).
* :func:`load_checkpoint` ``(path, map_location="cpu") -> dict`` -- raises
  :class:`veloxseg.errors.InputError` naming the path for a missing file or one that is not a
  veloxseg checkpoint.
* :func:`build_model` ``(ckpt, deploy=True) -> nn.Module`` -- the network with its weights loaded;
  ``deploy`` gives eval mode with the training-only parts (texture teachers, deep-supervision heads)
  stripped.

Payload keys (``format_version`` 1):

``format``            ``"veloxseg-checkpoint"``
``format_version``    ``1``
``model_name``        a key of :data:`MODEL_BUILDERS` (``"veloxseg"``, or a baseline: ``"unet"``, ...)
``model_kwargs``      constructor arguments (``VeloxSeg.hparams`` / ``BaselineNet.hparams``)
``variant``           (optional) the ablation variant a VeloxSeg was trained as
``state_dict``        weights matching ``model_kwargs``
``labels``            ``{name: int}`` from ``dataset.json``
``channel_names``     channel names in input-channel order
``plan``              the preprocessing plan (:mod:`veloxseg.data.plan`): target spacing, patch
                      size, per-channel normalisation scheme and statistics, foreground cropping
``versions``          ``{"veloxseg", "torch", "monai"}``
``training_state``    only in the "last" file: optimizer, scheduler, scaler, epoch, RNG states,
                      metrics history, best metric
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .io import atomic_path

FORMAT = "veloxseg-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "model_name", "model_kwargs", "state_dict", "labels",
                 "channel_names", "plan")


def _build_veloxseg(kwargs: dict[str, Any]) -> nn.Module:
    from .networks import VeloxSeg
    from .networks.veloxseg import LEGACY_KWARGS

    # an argument missing from model_kwargs: written before it existed, built as then (LEGACY_KWARGS)
    return VeloxSeg(**{**LEGACY_KWARGS, **kwargs})


def _build_baseline(kwargs: dict[str, Any]) -> nn.Module:
    from .baselines import BaselineNet

    return BaselineNet(**kwargs)


#: model name -> builder ``(model_kwargs) -> nn.Module``; other model families register here. The
#: MONAI baselines (``veloxseg train --model unet`` ...) store ``BaselineNet`` arguments as ``model_kwargs``.
MODEL_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "veloxseg": _build_veloxseg,
    **{name: _build_baseline for name in ("unet", "unetr", "swinunetr", "segresnet", "dynunet")},
}


def register_model(name: str, builder: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Make checkpoints with ``model_name == name`` loadable (e.g. MONAI baselines)."""
    MODEL_BUILDERS[name] = builder


def versions() -> dict[str, str]:
    """Versions of veloxseg, torch and monai, for the ``versions`` key."""
    import monai

    from . import __version__

    return {"veloxseg": __version__, "torch": torch.__version__, "monai": monai.__version__}


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically; fills ``format``/``format_version``/``versions`` if absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload.setdefault("format", FORMAT)
    payload.setdefault("format_version", FORMAT_VERSION)
    payload.setdefault("versions", versions())
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`InputError` naming ``path`` when it is missing, unreadable, or not a veloxseg
    checkpoint of a known format version.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found" if not p.exists() else f"{p}: is not a file")
    try:
        # weights_only=False: the payload holds plain Python containers and numpy RNG states
        ckpt = torch.load(str(p), map_location=map_location, weights_only=False)
    except Exception as err:
        raise InputError(f"{p}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{p}: not a veloxseg checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{p}: checkpoint format version {ckpt.get('format_version')!r} is not supported "
                         f"(this veloxseg reads version {FORMAT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise InputError(f"{p}: checkpoint lacks {', '.join(missing)}")
    if ckpt["model_name"] not in MODEL_BUILDERS:
        raise InputError(f"{p}: unknown model {ckpt['model_name']!r} (known: {', '.join(MODEL_BUILDERS)})")
    return ckpt


def build_model(ckpt: dict[str, Any], deploy: bool = True) -> nn.Module:
    """The network of ``ckpt`` with its weights; ``deploy``: eval mode, training-only parts stripped."""
    model = MODEL_BUILDERS[ckpt["model_name"]](dict(ckpt["model_kwargs"]))
    model.load_state_dict(ckpt["state_dict"])
    if deploy:
        model = model.for_inference() if hasattr(model, "for_inference") else model.eval()
    return model

