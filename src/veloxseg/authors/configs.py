"""The authors' model configurations (``config/models_config_*.json``, key ``VeloxSeg``) and their translation.

Their ``VeloxSeg`` constructor takes ``input_size``, ``in_ch``, ``base_ch`` ...; :func:`model_kwargs`
turns such a configuration into :class:`~veloxseg.networks.VeloxSeg` arguments that compute what
their code computes (the four choices of :data:`AUTHORS_CHOICES`), or an :class:`InputError` naming
what our network cannot express (e.g. two blocks per level).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError

#: the commit of JinPLu/VeloxSeg whose code these configurations and checkpoints come from
AUTHORS_COMMIT = "a668623"

#: what the authors' network computes where veloxseg once differed (docs/architecture.md)
AUTHORS_CHOICES: dict[str, Any] = {
    "attention_residual": "double",
    "layer_norm_eps": 1e-6,
    "ds_align_corners": True,
    "init": "he",
}

#: their ``VeloxSeg.__init__`` defaults, for keys a configuration leaves out
AUTHORS_DEFAULTS: dict[str, Any] = {
    "n_classes": 2, "base_ch": 16, "conv_depths": [1, 1, 1, 1], "kernel_sizes": [1, 3, 5],
    "min_dim_group": [4, 8, 8, 16], "conv_expansion_factor": [3, 3, 2, 2], "attn_base_ch": 16,
    "depths": [2, 2, 2, 2], "min_big_window_sizes": [[3, 3, 3], [6, 6, 6], [3, 3, 3], [3, 3, 3]],
    "min_small_window_sizes": [[1, 1, 1]] * 4, "min_dim_head": [4, 8, 8, 16], "scale_factors": [2, 2, 2, 2],
    "num_heads": [1, 2, 2, 4], "attn_drop": 0.1, "proj_drop": 0.1, "drop_path": 0, "ffn_expansion_ratio": [3, 3, 2, 2],
    "act_layer": "GELU", "patch_norm": False, "qkv_bias": True, "conv_drop": 0.0, "deep_supervision": True,
    "spatial_dim": 3,
}

_COMMON: dict[str, Any] = {
    "patch_size": 4, "n_classes": 2, "base_ch": 16, "conv_depths": [1, 1, 1, 1], "kernel_sizes": [1, 3, 5],
    "min_dim_group": [4, 8, 8, 16], "conv_expansion_factor": [3, 3, 2, 2], "attn_base_ch": 16,
    "depths": [1, 1, 1, 1], "min_small_window_sizes": [[1, 1, 1]] * 4, "min_dim_head": [4, 8, 8, 16],
    "ffn_expansion_ratio": [3, 3, 2, 2], "proj_drop": 0.1, "conv_drop": 0.1, "spatial_dim": 3,
}

#: their three configurations (``models_config_autopetii.json``, ``_hecktor2022.json``, ``_brats2021.json``)
AUTHORS_CONFIGS: dict[str, dict[str, Any]] = {
    "autopet": {**_COMMON, "input_size": [96, 96, 96], "in_ch": [1, 1], "num_heads": [1, 2, 2, 4],
                "min_big_window_sizes": [[3, 3, 3], [6, 6, 6], [3, 3, 3], [3, 3, 3]]},
    "hecktor": {**_COMMON, "input_size": [128, 128, 64], "in_ch": [1, 1],
                "min_big_window_sizes": [[4, 4, 2], [8, 8, 4], [4, 4, 2], [4, 4, 2]]},
    "brats": {**_COMMON, "input_size": [96, 96, 96], "in_ch": [4], "n_classes": 4, "num_heads": [1, 2, 2, 4],
              "min_big_window_sizes": [[3, 3, 3], [6, 6, 6], [3, 3, 3], [3, 3, 3]]},
}


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A configuration file of theirs: a ``models_config_*.json`` (its ``VeloxSeg`` entry) or that entry alone."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: configuration file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{p}: not a readable JSON configuration ({err})") from None
    if isinstance(data, Mapping) and isinstance(data.get("VeloxSeg"), Mapping):
        data = data["VeloxSeg"]
    if not isinstance(data, Mapping) or "in_ch" not in data or "input_size" not in data:
        raise InputError(f"{p}: not a VeloxSeg configuration of the authors' code "
                         f"(needs 'in_ch' and 'input_size', or a 'VeloxSeg' entry holding them)")
    return dict(data)


def _all_equal(values: Any, expected: Any, what: str) -> None:
    if any(v != expected for v in values):
        raise InputError(f"authors' configuration: {what} {list(values)} is not supported (veloxseg needs {expected} "
                         f"on every level)")


def model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~veloxseg.networks.VeloxSeg` arguments computing what their ``VeloxSeg(**config)`` computes."""
    c = {**AUTHORS_DEFAULTS, **config}
    if int(c["spatial_dim"]) != 3:
        raise InputError(f"authors' configuration: spatial_dim {c['spatial_dim']} is not supported (3-D only)")
    _all_equal(c["conv_depths"], 1, "conv_depths")
    _all_equal(c["depths"], 1, "depths")
    _all_equal(c["scale_factors"], 2, "scale_factors")
    small = [list(s) for s in c["min_small_window_sizes"]]
    _all_equal(small, small[0], "min_small_window_sizes")
    checks = {"drop_path": (float(c["drop_path"]) == 0.0, "0"), "patch_norm": (not c["patch_norm"], "false"),
              "qkv_bias": (bool(c["qkv_bias"]), "true"), "act_layer": (str(c["act_layer"]).lower() == "gelu", "GELU")}
    for key, (ok, needed) in checks.items():
        if not ok:
            raise InputError(f"authors' configuration: {key}={c[key]!r} is not supported (veloxseg needs {needed})")
    if float(c["proj_drop"]) != float(c["conv_drop"]):
        raise InputError(f"authors' configuration: proj_drop {c['proj_drop']} != conv_drop {c['conv_drop']} is not "
                         f"supported (veloxseg's transformer FFN and embedding dropout share the conv stream's rate)")
    return {
        "spatial_dims": 3, "in_channels": [int(x) for x in c["in_ch"]], "out_channels": int(c["n_classes"]),
        "img_size": [int(x) for x in c["input_size"]], "patch_size": int(c["patch_size"]),
        "feature_size": int(c["base_ch"]), "attn_feature_size": int(c["attn_base_ch"]),
        "kernel_sizes": [int(k) for k in c["kernel_sizes"]], "group_widths": [int(g) for g in c["min_dim_group"]],
        "conv_ffn_ratios": [int(r) for r in c["conv_expansion_factor"]], "heads": [int(h) for h in c["num_heads"]],
        "min_dim_heads": [int(d) for d in c["min_dim_head"]],
        "window_sizes": [[int(w) for w in win] for win in c["min_big_window_sizes"]],
        "small_window": [int(s) for s in small[0]], "window_scale": 2,
        "attn_ffn_ratios": [int(r) for r in c["ffn_expansion_ratio"]], "attn_drop": float(c["attn_drop"]),
        "proj_drop": float(c["proj_drop"]), "dropout": float(c["conv_drop"]),
        "deep_supervision": bool(c["deep_supervision"]), "texture_teachers": True, **AUTHORS_CHOICES,
    }
