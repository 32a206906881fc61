"""Read a checkpoint of the authors' code and rename its weights onto :class:`~veloxseg.networks.VeloxSeg`.

Their ``save_checkpoint`` writes ``{"model": state_dict, "epoch", ...}``; under DistributedDataParallel
every key starts with ``module.``. A bare state dict is accepted too. Every key of theirs maps onto
exactly one of ours (:data:`RULES`); their relative-position index buffers are checked against ours
and dropped. A key that maps nowhere, a weight of ours left without a value, or a shape that differs
is an :class:`InputError` that lists them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError

def _minus1(value: str) -> str:
    return str(int(value) - 1)


def _jlc(prefix: str) -> Callable[[re.Match[str]], str]:
    """Their ``layerN.0.{spatial_convs.k.0|channel_conv.1|channel_conv.3}`` -> our JLC block ``N - 1``."""
    def rename(m: re.Match[str]) -> str:
        part = m["part"]
        if part.startswith("spatial_convs"):
            part = "branches" + part[len("spatial_convs"):]
        else:
            part = "ffn" + part[len("channel_conv"):]
        return f"{prefix}.{_minus1(m['level'])}.{part}"
    return rename


_ATTN = r"encoder\.encoder_attn\.layers\.(?P<level>\d+)\.blocks\.0\."
_JLC_PART = r"\.0\.(?P<part>spatial_convs\.\d+\.0\.(?:weight|bias)|channel_conv\.[13]\.(?:weight|bias))"
_WB = r"(?P<wb>weight|bias)"

#: (their key, our key) renaming rules, tried in order; ``None``: a buffer checked and dropped
RULES: list[tuple[str, Callable[[re.Match[str]], str | None]]] = [
    (r"encoder\.encoder_attn\.patch_embeds\.(?P<m>\d+)\.proj\." + _WB,
     lambda m: f"transformer.embed.{m['m']}.0.{m['wb']}"),
    (_ATTN + r"attn\.position_embedding\.relative_position_bias_table",
     lambda m: f"transformer.blocks.{m['level']}.attn.relative_position_bias_table"),
    (_ATTN + r"attn\.position_embedding\.relative_position_index", lambda m: None),
    (_ATTN + r"attn\.input_norms\.(?P<m>\d+)\." + _WB,
     lambda m: f"transformer.blocks.{m['level']}.norm1.{m['m']}.{m['wb']}"),
    (_ATTN + r"attn\.qkv_proj\.(?P<m>\d+)\.(?P<i>[012])\." + _WB,
     lambda m: f"transformer.blocks.{m['level']}.attn.{'qkv'[int(m['i'])]}.{m['m']}.{m['wb']}"),
    (_ATTN + r"attn\.mix_channels\.(?P<m>\d+)\." + _WB,
     lambda m: f"transformer.blocks.{m['level']}.attn.mixer.{m['m']}.{m['wb']}"),
    (_ATTN + r"ffns\.(?P<m>\d+)\.linear(?P<i>[12])\." + _WB,
     lambda m: f"transformer.blocks.{m['level']}.ffn.{m['m']}.{1 if m['i'] == '1' else 4}.{m['wb']}"),
    (_ATTN + r"norms\.(?P<m>\d+)\." + _WB, lambda m: f"transformer.blocks.{m['level']}.ffn.{m['m']}.0.{m['wb']}"),
    (r"encoder\.encoder_attn\.layers\.(?P<level>\d+)\.downs\.(?P<m>\d+)\."
     r"(?P<part>reduction\.weight|norm\.weight|norm\.bias)",
     lambda m: f"transformer.merges.{m['level']}.{m['m']}.{m['part']}"),
    (r"encoder\.encoder_conv\.down(?P<level>\d)\.down\." + _WB,
     lambda m: f"conv_stream.downs.{_minus1(m['level'])}.0.{m['wb']}"),
    (r"encoder\.encoder_conv\.layer(?P<level>\d)" + _JLC_PART, _jlc("conv_stream.blocks")),
    (r"encoder\.attn2conv_(?P<level>\d)\.0\." + _WB, lambda m: f"conv_stream.mixers.{_minus1(m['level'])}.0.{m['wb']}"),
    (r"decoder\.layer_up(?P<level>\d)\.up\." + _WB, lambda m: f"decoder.ups.{_minus1(m['level'])}.0.{m['wb']}"),
    (r"decoder\.layer(?P<level>\d)" + _JLC_PART, _jlc("decoder.blocks")),
    (r"decoder\.out_conv1\.0\." + _WB, lambda m: f"head.conv.{m['wb']}"),
    (r"decoder\.out_conv(?P<level>[234])\." + _WB, lambda m: f"ds_heads.{int(m['level']) - 2}.{m['wb']}"),
    (r"rc_decoders\.(?P<m>\d+)\.enc2rc_(?P<level>\d)\.0\." + _WB,
     lambda m: f"teachers.{m['m']}.projections.{_minus1(m['level'])}.0.{m['wb']}"),
    (r"rc_decoders\.(?P<m>\d+)\.layer_up(?P<level>\d)\.up\." + _WB,
     lambda m: f"teachers.{m['m']}.ladder.ups.{_minus1(m['level'])}.0.{m['wb']}"),
    (r"rc_decoders\.(?P<m>\d+)\.layer(?P<level>\d)" + _JLC_PART,
     lambda m: _jlc(f"teachers.{m['m']}.ladder.blocks")(m)),
    (r"rc_decoders\.(?P<m>\d+)\.out_conv\.0\." + _WB, lambda m: f"teachers.{m['m']}.head.conv.{m['wb']}"),
]
_COMPILED = [(re.compile(pattern + "$"), rename) for pattern, rename in RULES]


def _rename(key: str) -> tuple[re.Match[str] | None, str | None]:
    """The first rule matching ``key`` and our name for it (None: unmatched, or a buffer to check)."""
    for pattern, rename in _COMPILED:
        match = pattern.match(key)
        if match is not None:
            return match, rename(match)
    return None, None


def read_authors_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of an authors' checkpoint (``module.`` prefixes removed) and its other plain entries.

    Loads with ``torch.load(weights_only=True)``; an :class:`InputError` names the file when it is
    missing, unreadable or holds no state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found" if not p.exists() else f"{p}: is not a file")
    try:
        data = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors alike
        raise InputError(f"{p}: not a readable PyTorch checkpoint with weights only "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    extra: dict[str, Any] = {}
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        extra = {k: v for k, v in data.items() if k != "model" and isinstance(v, (int, float, str, bool))}
        data = data["model"]
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{p}: holds neither {{'model': state_dict, ...}} nor a state dict of tensors")
    state = {}
    for key, value in data.items():
        key = str(key)
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state, extra


def rename_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """``state`` (the authors' names) renamed onto ``model``'s, checked key by key and shape by shape."""
    ours = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    unknown, mismatched = [], []
    for key, value in state.items():
        match, target = _rename(key)
        if match is not None and target is None:  # a relative-position index: must be what ours computes
            level = int(match["level"])
            index = model.transformer.blocks[level].attn.relative_position_index  # type: ignore[union-attr,index]
            if tuple(value.shape) != tuple(index.shape) or not torch.equal(value.to(index.dtype), index):
                mismatched.append(f"{key} (a position index other than veloxseg's)")
            continue
        if target is None or target not in ours:
            unknown.append(key)
        elif tuple(value.shape) != tuple(ours[target].shape):
            mismatched.append(f"{key} {tuple(value.shape)} vs {target} {tuple(ours[target].shape)}")
        else:
            renamed[target] = value.to(ours[target].dtype)
    missing = [k for k in ours if k not in renamed]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {', '.join(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s) (veloxseg names): {', '.join(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {', '.join(mismatched)}")
    if problems:
        raise InputError(f"{source}: does not match the authors' VeloxSeg of this configuration: "
                         + "; ".join(problems))
    return renamed
