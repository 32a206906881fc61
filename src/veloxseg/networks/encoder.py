"""The dual-stream encoder: PWA transformer stream ("glance"), JLC conv stream ("focus"), 1x1 modal mixers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .jlc import JLCBlock
from .layers import Conv3d, ConvNorm, Dropout, PatchMerging3d, fast_paths_enabled
from .pwa import PWABlock, Size3


class TransformerStream(nn.Module):
    """One branch per modality: patch embedding, then a PWA block per level and patch merging between levels.

    ``residual`` and ``eps``: the PWA blocks' attention residual and the LayerNorms' epsilon (:class:`PWABlock`).

    Returns, for each level, the list of the ``M`` modalities' maps (width ``E * 2**level``).
    """

    def __init__(self, in_channels: Sequence[int], width: int, patch_size: int,
                 level_pairs: Sequence[Sequence[tuple[Size3, Size3]]], heads: Sequence[int],
                 min_dim_heads: Sequence[int], ffn_ratios: Sequence[int], attn_drop: float = 0.1,
                 proj_drop: float = 0.1, dropout: float = 0.1, residual: str = "double", eps: float = 1e-6) -> None:
        super().__init__()
        m, levels = len(in_channels), len(level_pairs)
        self.embed = nn.ModuleList(
            nn.Sequential(Conv3d(c, width, patch_size, stride=patch_size), Dropout(dropout))
            for c in in_channels
        )
        self.blocks = nn.ModuleList(
            PWABlock(width * 2**i, m, level_pairs[i], heads[i], min_dim_heads[i], ffn_ratios[i],
                     attn_drop, proj_drop, dropout, residual, eps)
            for i in range(levels)
        )
        self.merges = nn.ModuleList(
            nn.ModuleList(PatchMerging3d(width * 2**i, eps) for _ in range(m)) for i in range(levels - 1)
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """The per-level, per-modality maps of the input ``x`` (modalities' channels concatenated)."""
        widths = [embed[0].in_channels for embed in self.embed]
        if fast_paths_enabled() and len(set(widths)) == 1 and torch.is_grad_enabled():
            # one grouped conv on ``x`` itself: convs on channel slices would copy and keep each slice
            weight = torch.cat([embed[0].weight for embed in self.embed])
            bias = torch.cat([embed[0].bias for embed in self.embed])
            conv = self.embed[0][0]
            maps = Conv3d.conv(x, weight, bias, conv.stride, conv.padding, groups=len(widths)).chunk(len(widths), 1)
            xs = [embed[1](m) for embed, m in zip(self.embed, maps)]
        else:
            xs = [embed(part) for embed, part in zip(self.embed, torch.split(x, widths, dim=1))]
        levels = []
        for i, block in enumerate(self.blocks):
            xs = block(xs)
            levels.append(xs)
            if i < len(self.merges):
                xs = [merge(x) for merge, x in zip(self.merges[i], xs)]
        return levels


class ConvStream(nn.Module):
    """Modal-fusion conv stream on the concatenated input, with a 1x1 modal mixer adding the attention maps.

    Level 0 downsamples by the patch size (kernel ``2p-1``), later levels by 2; each level is
    ``JLC(down(x) + mixer(concat(attention maps)))``. Without mixers (``with_mixers=False``, the
    ablation's conv-only rows) it is ``JLC(down(x))``.
    """

    def __init__(self, in_channels: int, width: int, attn_width: int, num_modalities: int, patch_size: int,
                 group_widths: Sequence[int], kernel_sizes: Sequence[int], ffn_ratios: Sequence[int],
                 dropout: float = 0.1, levels: int = 4, with_mixers: bool = True) -> None:
        super().__init__()
        self.downs = nn.ModuleList(
            [ConvNorm(in_channels, width, 2 * patch_size - 1, stride=patch_size, padding=patch_size - 1)]
            + [ConvNorm(width * 2 ** (i - 1), width * 2**i, 3, stride=2, padding=1) for i in range(1, levels)]
        )
        self.mixers = nn.ModuleList(
            ConvNorm(num_modalities * attn_width * 2**i, width * 2**i) for i in range(levels)
        ) if with_mixers else None
        self.blocks = nn.ModuleList(
            JLCBlock(width * 2**i, group_widths[i], kernel_sizes, ffn_ratios[i], dropout) for i in range(levels)
        )

    def forward(self, x: torch.Tensor, attention: list[list[torch.Tensor]] | None) -> list[torch.Tensor]:
        feats = []
        for i, (down, block) in enumerate(zip(self.downs, self.blocks)):
            x = down(x)
            if self.mixers is not None and attention is not None:
                x = x + self.mixers[i](torch.cat(attention[i], dim=1))
            x = block(x)
            feats.append(x)
        return feats
