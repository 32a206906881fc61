"""Small building blocks shared by the VeloxSeg network parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class InstanceNorm3d(nn.InstanceNorm3d):
    """InstanceNorm3d (no affine) that also accepts a 1x1x1 map, where the normalised value is 0.

    PyTorch refuses a single spatial element; at the deepest level of a 32^3 input that is what
    the network sees, and the mathematical limit ``(x - mean) / std`` there is exactly zero.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] * x.shape[4] == 1:
            return x - x
        return super().forward(x)


class LayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channel axis of a channels-first ``(B, C, D, H, W)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 4, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 4, 1, 2, 3)


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """3-D pixel shuffle: ``(B, C*r^3, D, H, W) -> (B, C, D*r, H*r, W*r)`` (PyTorch channel order)."""
    return rearrange(x, "b (c p1 p2 p3) d h w -> b c (d p1) (h p2) (w p3)", p1=factor, p2=factor, p3=factor)


def space_to_depth_3d(x: torch.Tensor) -> torch.Tensor:
    """Stack the 8 interleaved 2x2x2 sub-grids on channels: ``(B, C, D, H, W) -> (B, 8C, D/2, H/2, W/2)``."""
    return rearrange(x, "b c (d p1) (h p2) (w p3) -> b (p1 p2 p3 c) d h w", p1=2, p2=2, p3=2)


class PatchMerging3d(nn.Module):
    """Swin-style patch merging for channels-first maps: space-to-depth, LayerNorm(8C), 1x1 conv to 2C."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = LayerNorm3d(8 * channels)
        self.reduction = nn.Conv3d(8 * channels, 2 * channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(space_to_depth_3d(x)))


class ConvNorm(nn.Sequential):
    """Conv3d followed by InstanceNorm3d (no learnable affine, PyTorch's default)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups),
            InstanceNorm3d(out_channels),
        )


class UpBlock(nn.Sequential):
    """Decoder upsampling: 2x2x2 stride-2 transposed conv halving the channels, then InstanceNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2),
            InstanceNorm3d(out_channels),
        )
