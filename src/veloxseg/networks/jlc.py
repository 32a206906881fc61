"""JL-guided grouped convolution (JLC): the conv stream's "focus" block.

Multi-scale local branch (grouped convs with kernels 1, 3, 5, each with InstanceNorm and GELU,
summed onto the input) followed by a channel FFN. The group width comes from the JL bound
(:mod:`veloxseg.jl`): ``groups = channels / group_width``; ``group_width = 1`` is depthwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import layers
from .layers import Conv3d, Dropout, InstanceNorm3d


class JLCBlock(nn.Module):
    """One JLC block on a ``(B, C, D, H, W)`` map; the output has the same shape.

    Args:
        channels: feature width ``C``.
        group_width: channels per group of the local convs (must divide ``channels``).
        kernel_sizes: kernel of each local branch (``(1, 3, 5)`` in the paper).
        ffn_ratio: expansion of the channel FFN.
        dropout: dropout after the FFN.
    """

    def __init__(self, channels: int, group_width: int, kernel_sizes: Sequence[int] = (1, 3, 5),
                 ffn_ratio: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        if channels % group_width:
            raise ValueError(f"group width {group_width} does not divide {channels} channels")
        groups = channels // group_width
        self.branches = nn.ModuleList(
            nn.Sequential(
                Conv3d(channels, channels, k, padding=k // 2, groups=groups),
                InstanceNorm3d(channels),
                nn.GELU(),
            )
            for k in kernel_sizes
        )
        hidden = channels * ffn_ratio
        self.ffn = nn.Sequential(
            InstanceNorm3d(channels),
            Conv3d(channels, hidden, 1),
            nn.GELU(),
            Conv3d(hidden, channels, 1),
            Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (layers.fast_paths_enabled() and torch.is_grad_enabled() and x.device.type == "cpu"):
            y = x
            for branch, h in zip(self.branches, self._local_convs(x)):
                y = y + (branch(x) if h is None else branch[1:](h))
            if self.training:
                return y + self.ffn(y)
            return y + layers.conv_gelu_conv(self.ffn[0](y), self.ffn[1], self.ffn[3])  # dropout: identity
        # Training on CPU: oneDNN's backward of these small-group convs is about 2x faster in
        # channels-last layout (the forward is not, hence only when gradients are recorded).
        # The FFN's norm + 1x1 conv + GELU + 1x1 conv is recomputed in the backward instead of keeping
        # its intermediate maps (3x wider than the block): peak RSS of a step 0.71 -> 0.66 GB for +4 %
        # time (recomputing the branches' norm + GELU and the PWA FFNs too: 0.58 GB, +12 %).
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        y = x
        for branch in self.branches:
            conv, rest = branch[0], branch[1:]
            h = conv(x_cl).contiguous() if conv.kernel_size[0] > 1 else conv(x)
            y = y + rest(h)
        return y + self.ffn[-1](layers.recompute(self.ffn[:-1], y))

    def _local_convs(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """The branches' convs of ``x`` that run as depthwise convs on shared rotated copies (else None).

        At inference on CPU float32 maps of more than 4096 voxels (level 0), the 3x3x3 and 5x5x5
        convs share the copies of ``x`` with its channels rotated within their groups
        (:func:`~.layers.grouped_conv_as_depthwise`): autopet frozen graph, -0.42 ms at 1 thread and
        -0.20 ms at 2 on top of the 5x5x5 conv alone (paired; the whole lever:
        ``benchmarks/paired_ab.py --lever depthwise``).
        """
        convs = [branch[0] for branch in self.branches]
        shared = [layers._fast_kernels_apply(x) and layers._depthwise_split(x, c.weight, c.stride, c.dilation,
                                                                            c.groups, shared=True) for c in convs]
        if sum(shared) < 2:
            return [None] * len(convs)
        rotations = layers.channel_rotations(x, next(c.groups for c, s in zip(convs, shared) if s))
        return [layers.grouped_conv_as_depthwise(x, c.weight, c.bias, c.padding, c.groups, rotations) if s else None
                for c, s in zip(convs, shared)]
