"""Paired Window Attention (PWA): the transformer stream's "glance".

One attention call covers every modality and every scale of a level:

1. *Window pairs* ``(b_k, s_k)``: start from the big window ``b_0`` and the small window ``s_0``
   and double both while the big window still divides the feature map, so every pair cuts a
   big window into the same ``n = b_0 / s_0`` small windows (tokens).
2. *JL-sized heads*: query/key width ``K * heads * min_dim_head``; value width is the channel
   count rounded up to a multiple of that.
3. *Gather*: channel group ``k`` is max-pooled by ``s_k`` (one salient token per small window)
   and cut into big windows of ``n`` tokens; all scales are stacked on the batch axis.
4. *Cross-modal*: the ``M`` modalities of a window are concatenated on the token axis.
5. Scaled dot-product attention with a Swin-style relative position bias (one table per level,
   the same bias for every modality pair block), attention dropout.
6. *Scatter*: each window's tokens are upsampled (trilinear, align corners) back to the big
   window and put in place; the scale groups are concatenated back to the value width.
7. *Mixer*: a per-modality 1x1 conv back to the channel count, and dropout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import LayerNorm3d

Size3 = tuple[int, int, int]


def as_size3(value: int | Sequence[int]) -> Size3:
    """Return ``value`` as a 3-tuple of ints (an int is repeated)."""
    if isinstance(value, int):
        return (value, value, value)
    t = tuple(int(v) for v in value)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 ints, got {value!r}")
    return t  # type: ignore[return-value]


def window_pairs(feature_size: Sequence[int], big_window: Sequence[int],
                 small_window: Sequence[int] = (1, 1, 1), scale_factor: int = 2) -> list[tuple[Size3, Size3]]:
    """The paired windows ``[(b_k, s_k), ...]`` of one level, coarsening by ``scale_factor``.

    Raises ``ValueError`` when the first big window does not divide the feature map or the
    small window does not divide the big one.
    """
    size, big, small = as_size3(feature_size), as_size3(big_window), as_size3(small_window)
    if any(f % b for f, b in zip(size, big)):
        raise ValueError(f"big window {big} does not divide the feature map {size}")
    if any(b % s for b, s in zip(big, small)):
        raise ValueError(f"small window {small} does not divide the big window {big}")
    pairs = []
    while all(f % b == 0 for f, b in zip(size, big)):
        pairs.append((big, small))
        big = tuple(b * scale_factor for b in big)  # type: ignore[assignment]
        small = tuple(s * scale_factor for s in small)  # type: ignore[assignment]
    return pairs


def relative_position_index(tokens: Size3) -> torch.Tensor:
    """Swin-style ``(T, T)`` index into a ``(2n_d-1)(2n_h-1)(2n_w-1)`` bias table, ``T = n_d n_h n_w``."""
    nd, nh, nw = tokens
    coords = torch.stack(torch.meshgrid(torch.arange(nd), torch.arange(nh), torch.arange(nw), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[..., 0] += nd - 1
    rel[..., 1] += nh - 1
    rel[..., 2] += nw - 1
    return rel[..., 0] * (2 * nh - 1) * (2 * nw - 1) + rel[..., 1] * (2 * nw - 1) + rel[..., 2]


class PairedWindowAttention(nn.Module):
    """Multi-scale, multi-modal window attention over a list of ``M`` maps ``(B, C, D, H, W)``.

    Args:
        channels: width ``C`` of each modality's map.
        num_modalities: ``M``.
        pairs: the level's window pairs, from :func:`window_pairs`.
        heads: attention heads per scale group.
        min_dim_head: JL minimum query/key width per head.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the mixer.
    """

    def __init__(self, channels: int, num_modalities: int, pairs: Sequence[tuple[Size3, Size3]], heads: int,
                 min_dim_head: int, attn_drop: float = 0.1, proj_drop: float = 0.1) -> None:
        super().__init__()
        if not pairs:
            raise ValueError("PairedWindowAttention needs at least one window pair")
        self.pairs = [(as_size3(b), as_size3(s)) for b, s in pairs]
        self.tokens: Size3 = tuple(b // s for b, s in zip(*self.pairs[0]))  # type: ignore[assignment]
        self.num_modalities = num_modalities
        self.num_scales = len(self.pairs)
        self.heads = heads
        self.dim_qk = min_dim_head
        self.qk_channels = self.num_scales * heads * min_dim_head
        self.v_channels = math.ceil(channels / self.qk_channels) * self.qk_channels
        self.dim_v = self.v_channels // (self.num_scales * heads)
        self.attn_drop = attn_drop

        self.q = nn.ModuleList(nn.Conv3d(channels, self.qk_channels, 1) for _ in range(num_modalities))
        self.k = nn.ModuleList(nn.Conv3d(channels, self.qk_channels, 1) for _ in range(num_modalities))
        self.v = nn.ModuleList(nn.Conv3d(channels, self.v_channels, 1) for _ in range(num_modalities))
        self.mixer = nn.ModuleList(nn.Conv3d(self.v_channels, channels, 1) for _ in range(num_modalities))
        self.proj_drop = nn.Dropout(proj_drop)

        nd, nh, nw = self.tokens
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * nd - 1) * (2 * nh - 1) * (2 * nw - 1), heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.tokens), persistent=False)

    def position_bias(self) -> torch.Tensor:
        """The ``(heads, M*T, M*T)`` additive bias: the per-window table tiled over modality pairs."""
        t = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(t, t, self.heads).permute(2, 0, 1)
        return bias.repeat(1, self.num_modalities, self.num_modalities)

    def _gather(self, x: torch.Tensor, scale: int, dim: int) -> torch.Tensor:
        """Channel group ``scale`` of ``x`` as windows ``(B*nW, heads, T, dim)``."""
        (big, small), width = self.pairs[scale], self.heads * dim
        x = x[:, scale * width:(scale + 1) * width]
        if small != (1, 1, 1):
            x = F.max_pool3d(x, small, small)
        nd, nh, nw = self.tokens
        return rearrange(x, "b (h c) (gd nd) (gh nh) (gw nw) -> (b gd gh gw) h (nd nh nw) c",
                         h=self.heads, nd=nd, nh=nh, nw=nw)

    def _scatter(self, w: torch.Tensor, scale: int, batch: int, size: Size3) -> torch.Tensor:
        """Inverse of :meth:`_gather`: windows back to a ``(B, heads*dim_v, D, H, W)`` map."""
        big, small = self.pairs[scale]
        nd, nh, nw = self.tokens
        gd, gh, gw = (s // b for s, b in zip(size, big))
        w = rearrange(w, "b h (nd nh nw) c -> b (h c) nd nh nw", nd=nd, nh=nh, nw=nw)
        if small != (1, 1, 1):
            w = F.interpolate(w, size=big, mode="trilinear", align_corners=True)
        return rearrange(w, "(b gd gh gw) c d h w -> b c (gd d) (gh h) (gw w)", b=batch, gd=gd, gh=gh, gw=gw)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Attend across the modalities and scales of ``xs`` (already normalised); one output per modality."""
        batch, size = xs[0].shape[0], tuple(xs[0].shape[2:])
        for b, _ in self.pairs:
            if any(s % w for s, w in zip(size, b)):
                raise ValueError(f"PWA window {b} does not divide the feature map {size}")
        qs = [conv(x) for conv, x in zip(self.q, xs)]
        ks = [conv(x) for conv, x in zip(self.k, xs)]
        vs = [conv(x) for conv, x in zip(self.v, xs)]
        q_all, k_all, v_all, counts = [], [], [], []
        for scale in range(self.num_scales):
            q_all.append(torch.cat([self._gather(q, scale, self.dim_qk) for q in qs], dim=2))
            k_all.append(torch.cat([self._gather(k, scale, self.dim_qk) for k in ks], dim=2))
            v_all.append(torch.cat([self._gather(v, scale, self.dim_v) for v in vs], dim=2))
            counts.append(q_all[-1].shape[0])
        out = F.scaled_dot_product_attention(
            torch.cat(q_all), torch.cat(k_all), torch.cat(v_all),
            attn_mask=self.position_bias().to(qs[0].dtype),
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        tokens = out.shape[2] // self.num_modalities
        per_scale = out.split(counts)
        results = []
        for m in range(self.num_modalities):
            maps = [self._scatter(o[:, :, m * tokens:(m + 1) * tokens], s, batch, size)  # type: ignore[arg-type]
                    for s, o in enumerate(per_scale)]
            results.append(self.proj_drop(self.mixer[m](torch.cat(maps, dim=1))))
        return results


class PWABlock(nn.Module):
    """Transformer block with one residual stream per modality: ``x += PWA(LN(x)); x += FFN(LN(x))``."""

    def __init__(self, channels: int, num_modalities: int, pairs: Sequence[tuple[Size3, Size3]], heads: int,
                 min_dim_head: int, ffn_ratio: int = 3, attn_drop: float = 0.1, proj_drop: float = 0.1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.ModuleList(LayerNorm3d(channels) for _ in range(num_modalities))
        self.attn = PairedWindowAttention(channels, num_modalities, pairs, heads, min_dim_head, attn_drop, proj_drop)
        self.ffn = nn.ModuleList(
            nn.Sequential(
                LayerNorm3d(channels),
                nn.Conv3d(channels, channels * ffn_ratio, 1),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Conv3d(channels * ffn_ratio, channels, 1),
                nn.Dropout(dropout),
            )
            for _ in range(num_modalities)
        )

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        attended = self.attn([norm(x) for norm, x in zip(self.norm1, xs)])
        xs = [x + a for x, a in zip(xs, attended)]
        return [x + ffn(x) for ffn, x in zip(self.ffn, xs)]
