"""Spatially decoupled knowledge transfer (SDKT): per-modality texture teachers and Gram matrices.

Each teacher reconstructs its own modality from that modality's attention maps and the fused
conv features; the Gram matrix of its last decoder feature is a spatially invariant "texture"
target for the segmentation decoder. Teachers exist in training only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .decoder import DecoderLadder, PixelShuffleHead
from .layers import ConvNorm


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """``GM(X) = X X^T / (C * D * H * W)`` per sample: ``(B, C, D, H, W) -> (B, C, C)``."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * flat.shape[-1])


class TextureTeacher(nn.Module):
    """Reconstruction decoder of one modality: 1x1 projections, the Up/JLC ladder, a pixel-shuffle head.

    ``forward`` returns ``(reconstruction (B, C_m, D, H, W), last decoder feature (B, F, d, h, w))``.
    """

    def __init__(self, modality_channels: int, width: int, attn_width: int, patch_size: int,
                 group_widths: Sequence[int], kernel_sizes: Sequence[int], ffn_ratios: Sequence[int],
                 dropout: float = 0.1, levels: int = 4) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            ConvNorm(attn_width * 2**i + width * 2**i, width * 2**i) for i in range(levels)
        )
        self.ladder = DecoderLadder(width, group_widths, kernel_sizes, ffn_ratios, dropout, levels)
        self.head = PixelShuffleHead(width, modality_channels, patch_size)

    def forward(self, attention: list[torch.Tensor], feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        projected = [proj(torch.cat([a, f], dim=1)) for proj, a, f in zip(self.projections, attention, feats)]
        last = self.ladder(projected)[0]
        return self.head(last), last
