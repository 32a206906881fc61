"""Parameter and FLOP counts of a network at a given input size."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .networks import VeloxSeg
from .networks.layers import fast_paths
from .presets import get_preset


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """FLOPs of one eval-mode forward (``FlopCounterMode``: 2 per multiply-add) and the output shape.

    Counted on PyTorch's default ops: ``FlopCounterMode`` does not see the oneDNN kernels that
    the fast paths call directly (the work is the same).
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(input_shape, dtype=param.dtype, device=param.device)
    with fast_paths(False), FlopCounterMode(display=False) as counter:
        y = model(x)
    model.train(was_training)
    return counter.get_total_flops(), tuple(y.shape)


def model_summary(model: VeloxSeg, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Parameters at inference and in training, FLOPs of one forward, input and output shapes."""
    if input_shape is None:
        input_shape = (1, sum(model.in_channels), *model.hparams["img_size"])
    deployed = model.for_inference()
    flops, out_shape = count_flops(deployed, input_shape)
    return {
        "params_inference": count_parameters(deployed),
        "params_training": count_parameters(model),
        "flops": flops,
        "input_shape": list(input_shape),
        "output_shape": list(out_shape),
    }


def preset_summary(name: str) -> dict[str, Any]:
    """:func:`model_summary` of a preset at its reference input size."""
    preset = get_preset(name)
    summary = model_summary(VeloxSeg.from_preset(name), preset.input_shape)
    return {"preset": preset.name, **summary}
