"""Checkpoints of the authors' VeloxSeg code (JinPLu/VeloxSeg) as veloxseg checkpoints.

:func:`import_weights` reads one of their checkpoints (:mod:`.weights`), builds the network their
configuration describes with the authors' four choices (:mod:`.configs`) and returns the payload of a
veloxseg checkpoint carrying their preprocessing for that dataset (:mod:`.preprocessing`), which
``veloxseg import-weights`` writes with :func:`veloxseg.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from .configs import AUTHORS_CHOICES, AUTHORS_COMMIT, AUTHORS_CONFIGS, model_kwargs, read_config
from .preprocessing import AUTHORS_DATA, authors_plan, ct_statistics_of
from .weights import read_authors_state_dict, rename_state_dict

__all__ = ["AUTHORS_CHOICES", "AUTHORS_COMMIT", "AUTHORS_CONFIGS", "AUTHORS_DATA", "authors_plan", "ct_statistics_of",
           "import_weights", "model_kwargs", "read_authors_state_dict", "read_config", "rename_state_dict"]


def import_weights(path: str | os.PathLike, preset: str, config: Mapping[str, Any] | None = None,
                   ct_statistics: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The veloxseg checkpoint payload of the authors' checkpoint ``path``.

    Args:
        path: their checkpoint (``{"model": state_dict, ...}``, keys possibly prefixed ``module.``) or a
            bare state dict; loaded with ``torch.load(weights_only=True)``.
        preset: ``"autopet"``, ``"hecktor"`` or ``"brats"``: their configuration and preprocessing of that dataset.
        config: a configuration of theirs (``models_config_*.json``'s ``VeloxSeg`` entry) replacing the
            preset's; the preset still gives the channels, labels and spacing.
        ct_statistics: their CT foreground statistics (``mean``, ``std``, ``lower``/``percentile_00_5``,
            ``upper``/``percentile_99_5``); without them prediction refuses the PET/CT checkpoint.

    Raises :class:`InputError` for an unknown preset, a configuration our network cannot express, or
    weights that do not match it (every unknown, missing and mis-shaped key listed).
    """
    from ..networks import VeloxSeg

    name = preset.lower()
    if name not in AUTHORS_CONFIGS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(AUTHORS_CONFIGS)}")
    cfg = dict(config) if config is not None else dict(AUTHORS_CONFIGS[name])
    data = AUTHORS_DATA[name]
    kwargs = model_kwargs(cfg)
    if sum(kwargs["in_channels"]) != len(data["channel_names"]) or kwargs["out_channels"] != len(data["labels"]):
        raise InputError(f"configuration: in_ch {kwargs['in_channels']} and n_classes {kwargs['out_channels']} do not "
                         f"fit preset {name!r} ({len(data['channel_names'])} channels "
                         f"{', '.join(data['channel_names'])}; {len(data['labels'])} classes)")
    try:
        model = VeloxSeg(**{**kwargs, "init": "pytorch"})  # weights come from the file: skip the He init
    except ValueError as err:
        raise InputError(f"configuration: {err}") from None
    state, extra = read_authors_state_dict(path)
    model.load_state_dict(rename_state_dict(state, model, str(path)))
    hparams = {**model.hparams, "init": kwargs["init"]}  # how networks of this kind start training
    source = {"repository": "JinPLu/VeloxSeg", "commit": AUTHORS_COMMIT, "file": Path(path).name, "preset": name,
              **{k: v for k, v in extra.items() if k in ("epoch", "best_train_dice", "best_val_dice")}}
    return {"model_name": "veloxseg", "model_kwargs": hparams,
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "labels": dict(data["labels"]), "channel_names": list(data["channel_names"]),
            "plan": authors_plan(name, kwargs["img_size"], ct_statistics), "imported_from": source}
