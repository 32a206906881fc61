"""The segmentation decoder: an Up/JLC ladder and the unified pixel-shuffle head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .jlc import JLCBlock
from .layers import UpBlock, pixel_shuffle_3d


class DecoderLadder(nn.Module):
    """``u_i = JLC(f_i + Up(u_{i+1}))`` from the deepest level up to level 0.

    Takes the encoder features finest first (``[f_0, ..., f_L]``) and returns the decoder
    features finest first (``[u_0, ..., u_{L-1}]``).
    """

    def __init__(self, width: int, group_widths: Sequence[int], kernel_sizes: Sequence[int],
                 ffn_ratios: Sequence[int], dropout: float = 0.1, levels: int = 4) -> None:
        super().__init__()
        self.ups = nn.ModuleList(UpBlock(width * 2 ** (i + 1), width * 2**i) for i in range(levels - 1))
        self.blocks = nn.ModuleList(
            JLCBlock(width * 2**i, group_widths[i], kernel_sizes, ffn_ratios[i], dropout) for i in range(levels - 1)
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = feats[-1]
        out: list[torch.Tensor] = []
        for i in range(len(self.ups) - 1, -1, -1):
            x = self.blocks[i](feats[i] + self.ups[i](x))
            out.insert(0, x)
        return out


class PixelShuffleHead(nn.Module):
    """"Unified upsampling": a 3x3x3 conv to ``p^3 * out_channels`` and a 3-D pixel shuffle by ``p``."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv3d(in_channels, out_channels * factor**3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.conv(x), self.factor)
