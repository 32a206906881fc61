"""Self-contained checkpoints: everything prediction needs lives in one ``.pt`` file.

Interface (used by ``veloxseg train`` and ``veloxseg predict``):

* :func:`save_checkpoint` ``(path, payload)`` -- atomic write (temporary file + rename).
* :func:`load_checkpoint` ``(path, map_location="cpu") -> dict`` -- raises
  :class:`veloxseg.errors.InputError` naming the path for a missing file or one that is not a
  veloxseg checkpoint.
* :func:`build_model` ``(ckpt, deploy=True) -> nn.Module`` -- the network with its weights loaded;
  ``deploy`` gives eval mode with the training-only parts (texture teachers, deep-supervision heads)
  stripped.

Safety: a checkpoint holds only what ``torch.load(..., weights_only=True)`` accepts (tensors and
plain containers of str/int/float/bool/None), so loading one never runs code; :func:`to_plain`
turns numpy values into those on saving. A file needing more is refused before any of its objects
is built (:func:`load_checkpoint`); :func:`upgrade_checkpoint` converts a trusted older file once.
``tensor_sha256`` (:func:`tensors_sha256`) covers every tensor of the payload: a flipped bit or a
truncated copy is an error naming the file, and so are non-finite weights.

Payload keys (``format_version`` 2; version 1 files are converted with ``veloxseg checkpoint upgrade``):

``format``            ``"veloxseg-checkpoint"``
``format_version``    ``2``
``model_name``        a key of :data:`MODEL_BUILDERS` (``"veloxseg"``, or a baseline: ``"unet"``, ...)
``model_kwargs``      constructor arguments (``VeloxSeg.hparams`` / ``BaselineNet.hparams``)
``variant``           (optional) the ablation variant a VeloxSeg was trained as
``state_dict``        weights matching ``model_kwargs``
``labels``            ``{name: int}`` from ``dataset.json``
``channel_names``     channel names in input-channel order
``plan``              the preprocessing plan (:mod:`veloxseg.data.plan`): target spacing, patch
                      size, per-channel normalisation scheme and statistics, foreground cropping
``versions``          ``{"veloxseg", "torch", "monai"}`` as plain strings
``tensor_sha256``     SHA-256 over every tensor of the payload (names, dtypes, shapes, bytes)
``imported_from``     (optional) where ``veloxseg import-weights`` took the weights from
``training_state``    only in the "last" file: optimizer, scheduler, scaler, epoch, RNG states (as
                      tensors and lists), metrics history, best metric
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .io import atomic_path

FORMAT = "veloxseg-checkpoint"
FORMAT_VERSION = 2
HASH_KEY = "tensor_sha256"
UPGRADE_HINT = "if you trust where it came from, convert it once: veloxseg checkpoint upgrade OLD NEW --trust-pickle"
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
    """Versions of veloxseg, torch and monai as plain strings, for the ``versions`` key."""
    import monai

    from . import __version__

    return {"veloxseg": str(__version__), "torch": str(torch.__version__), "monai": str(monai.__version__)}


def to_plain(obj: Any) -> Any:
    """``obj`` with numpy values and str/int/float subclasses turned into what ``weights_only`` loads.

    numpy arrays become tensors, numpy scalars Python numbers, ``Path`` a string; a type that
    cannot be stored safely is a ``TypeError`` (a bug in the caller, never user input).
    """
    import numpy as np

    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    raise TypeError(f"cannot store a {type(obj).__name__} safely in a checkpoint")


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in ``obj`` with a path name, in a fixed order (dict keys sorted as strings)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if not (prefix == "" and k == HASH_KEY):
                yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def tensors_sha256(payload: dict[str, Any]) -> str:
    """SHA-256 over every tensor of ``payload``: its path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, t in _tensors(payload):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def non_finite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in ``state_dict`` holding NaN or infinite values."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically as plain data with its tensor hash.

    Fills ``format``/``format_version``/``versions`` if absent. Non-finite weights are a
    ``ValueError``: a diverged network is never saved as a checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = to_plain(dict(payload))
    payload["format"], payload["format_version"] = FORMAT, FORMAT_VERSION
    payload.setdefault("versions", versions())
    bad = non_finite_weights(payload.get("state_dict") or {})
    if bad:
        raise ValueError(f"{path}: refusing to save non-finite weights ({', '.join(bad[:3])}"
                         f"{' ...' if len(bad) > 3 else ''})")
    payload[HASH_KEY] = tensors_sha256(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # the scan itself failed: the file is damaged; torch.load says how
        return []


def read_plain(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with every failure an :class:`InputError` naming ``path``.

    A file that holds Python objects beyond tensors and plain containers is refused before any
    of them is built, naming what it holds.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found" if not p.exists() else f"{p}: is not a file")
    try:
        return torch.load(str(p), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(p) or re.findall(r"GLOBAL ([\w.]+)", str(err))[:1]
        what = f" ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''})" if names else ""
        raise InputError(f"{p}: refused: it holds Python objects beyond tensors and plain data{what}, and "
                         f"loading it could run code; {UPGRADE_HINT}") from None
    except Exception as err:  # torch raises many types for a damaged file (RuntimeError, EOFError, struct.error)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{p}: not a readable checkpoint, truncated or corrupt ({first})") from None


def check_payload(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Check a loaded payload (format, version, keys, tensor hash, finite weights); returns it."""
    p = Path(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{p}: not a veloxseg checkpoint")
    version = ckpt.get("format_version")
    if version == 1:
        raise InputError(f"{p}: written by an earlier veloxseg (checkpoint format 1, no integrity hash); "
                         f"{UPGRADE_HINT}")
    if version != FORMAT_VERSION:
        raise InputError(f"{p}: checkpoint format version {version!r} is not supported "
                         f"(this veloxseg reads version {FORMAT_VERSION})")
    missing = [k for k in (*REQUIRED_KEYS, HASH_KEY) if k not in ckpt]
    if missing:
        raise InputError(f"{p}: checkpoint lacks {', '.join(missing)}")
    if tensors_sha256(ckpt) != ckpt[HASH_KEY]:
        raise InputError(f"{p}: integrity check failed: its tensors do not match their SHA-256 "
                         f"(a damaged or altered copy)")
    if not isinstance(ckpt["state_dict"], dict):
        raise InputError(f"{p}: checkpoint's state_dict is not a mapping of tensors")
    bad = non_finite_weights(ckpt["state_dict"])
    if bad:
        raise InputError(f"{p}: {len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}); "
                         f"the network would segment nothing")
    if ckpt["model_name"] not in MODEL_BUILDERS:
        raise InputError(f"{p}: unknown model {ckpt['model_name']!r} (known: {', '.join(MODEL_BUILDERS)})")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, never running code from it.

    Raises :class:`InputError` naming ``path`` when it is missing, unreadable, truncated, holds
    more than plain data, fails its integrity hash, holds non-finite weights, or is not a veloxseg
    checkpoint of a known format version.
    """
    return check_payload(read_plain(path, map_location), path)


def upgrade_checkpoint(old: str | os.PathLike, new: str | os.PathLike, trust_pickle: bool = False,
                       overwrite: bool = False) -> Path:
    """Convert an older checkpoint (format 1, numpy RNG states) into the current safe format.

    Unpickling the old file in full runs whatever it carries, so it is done only with
    ``trust_pickle`` (the user vouches for the file); a file that already loads safely needs no trust.
    """
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise InputError(f"{old}: checkpoint not found")
    if new.resolve() == old.resolve():
        raise InputError(f"{new}: the upgraded checkpoint must go to a new file, not onto {old}")
    if new.exists() and not overwrite:
        raise InputError(f"{new}: exists; choose another name or pass --overwrite")
    try:
        ckpt = torch.load(str(old), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise InputError(f"{old}: holds Python objects beyond plain data; loading it runs code. Pass "
                             f"--trust-pickle only if you trust where the file came from") from None
        try:
            # the one full unpickling in the package: only with --trust-pickle, the user vouching for the file
            ckpt = torch.load(str(old), map_location="cpu", weights_only=False)
        except Exception as err:
            raise InputError(f"{old}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    except Exception as err:
        raise InputError(f"{old}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{old}: not a veloxseg checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise InputError(f"{old}: checkpoint lacks {', '.join(missing)}")
    ckpt = dict(ckpt)
    ckpt.pop(HASH_KEY, None)
    ckpt["versions"] = {str(k): str(v) for k, v in dict(ckpt.get("versions") or {}).items()}
    state = ckpt.get("training_state")
    if isinstance(state, dict) and isinstance(state.get("rng"), dict):
        from .training.trainer import plain_rng_state

        ckpt["training_state"] = {**state, "rng": plain_rng_state(state["rng"])}
    try:
        save_checkpoint(new, ckpt)
    except (TypeError, ValueError) as err:
        raise InputError(f"{old}: cannot be converted ({err})") from None
    return new


def build_model(ckpt: dict[str, Any], deploy: bool = True) -> nn.Module:
    """The network of ``ckpt`` with its weights; ``deploy``: eval mode, training-only parts stripped."""
    model = MODEL_BUILDERS[ckpt["model_name"]](dict(ckpt["model_kwargs"]))
    model.load_state_dict(ckpt["state_dict"])
    if deploy:
        model = model.for_inference() if hasattr(model, "for_inference") else model.eval()
    return model
