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

from .layers import Conv3d, Dropout, LayerNorm3d, conv_gelu_conv, dropout_matmul, fast_paths_enabled, upsample_trilinear

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

        self.q = nn.ModuleList(Conv3d(channels, self.qk_channels, 1) for _ in range(num_modalities))
        self.k = nn.ModuleList(Conv3d(channels, self.qk_channels, 1) for _ in range(num_modalities))
        self.v = nn.ModuleList(Conv3d(channels, self.v_channels, 1) for _ in range(num_modalities))
        self.mixer = nn.ModuleList(Conv3d(self.v_channels, channels, 1) for _ in range(num_modalities))
        self.proj_drop = Dropout(proj_drop)

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

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of one grouped 1x1 conv giving q, k, v of every modality.

        Output channels are ordered (modality, scale, head, [q | k | v]) so that a scale's
        channels are one block per modality and a head's q, k and v sit side by side.
        """
        k_, h = self.num_scales, self.heads
        weights, biases = [], []
        for q, k, v in zip(self.q, self.k, self.v):
            parts = [(conv.weight.reshape(k_, h, dim, -1), conv.bias.reshape(k_, h, dim))
                     for conv, dim in ((q, self.dim_qk), (k, self.dim_qk), (v, self.dim_v))]
            weights.append(torch.cat([w for w, _ in parts], dim=2).reshape(-1, parts[0][0].shape[-1], 1, 1, 1))
            biases.append(torch.cat([b for _, b in parts], dim=2).reshape(-1))
        return torch.cat(weights), torch.cat(biases)

    def _fused_mixer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of one grouped 1x1 conv applying every modality's mixer."""
        return torch.cat([m.weight for m in self.mixer]), torch.cat([m.bias for m in self.mixer])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Attend across the modalities and scales of ``xs`` (already normalised); one output per modality."""
        m, heads, dq = self.num_modalities, self.heads, self.dim_qk
        batch, size = xs[0].shape[0], tuple(xs[0].shape[2:])
        for b, _ in self.pairs:
            if any(s % w for s, w in zip(size, b)):
                raise ValueError(f"PWA window {b} does not divide the feature map {size}")
        nd, nh, nw = self.tokens
        weight, bias = self._fused_qkv()
        qkv = _conv1x1(torch.cat(xs, dim=1), weight, bias, m)
        qkv = qkv.view(batch, m, self.num_scales, -1, *size)

        # gather: one salient token per small window, n tokens per big window, modalities on the token axis
        # inference: one copy per scale, no cat (not in train mode with attention dropout, which it leaves out)
        direct = fast_paths_enabled() and not torch.is_grad_enabled() and not (self.training and self.attn_drop > 0)
        counts = [batch * math.prod(s // b for s, b in zip(size, big)) for big, _ in self.pairs]
        tokens = qkv.new_empty(sum(counts), heads, m * nd * nh * nw, qkv.shape[3] // heads) if direct else None
        windows, offset = [], 0
        split, merged = "b gd gh gw h m nd nh nw c", "(b gd gh gw) h (m nd nh nw) c"
        for scale, (_, small) in enumerate(self.pairs):
            x = qkv[:, :, scale]  # (B, M, channels of the scale, D, H, W), a view
            if small != (1, 1, 1):
                x = _max_pool(x, small)
            x = rearrange(x, f"b m (h c) (gd nd) (gh nh) (gw nw) -> {split if direct else merged}",
                          h=heads, nd=nd, nh=nh, nw=nw)
            if tokens is None:
                windows.append(x)
                continue
            tokens[offset:offset + counts[scale]].view(x.shape).copy_(x)
            offset += counts[scale]
        if tokens is None:
            tokens = torch.cat(windows) if len(windows) > 1 else windows[0]

        # one batched attention over all windows of all scales
        q, k, v = tokens[..., :dq], tokens[..., dq:2 * dq], tokens[..., 2 * dq:]
        if direct:
            out = _attention_chunked(q * dq**-0.5, k, v, self.position_bias().to(q.dtype))
        else:
            attn = torch.matmul(q * dq**-0.5, k.transpose(-1, -2))
            attn.add_(self.position_bias().to(attn.dtype))  # in place: matmul's backward does not need its output
            attn = attn.softmax(dim=-1)
            out = dropout_matmul(attn, v, self.attn_drop, self.training)

        # scatter: tokens back to their small-window grid, upsampled to the big window
        values = out.new_empty(batch, m, self.v_channels, *size) if direct else None
        maps, first = [], 0
        for (big, small), o in zip(self.pairs, out.split(counts)):
            grid = {"b": batch, **{g: s // b for g, s, b in zip(("gd", "gh", "gw"), size, big)}}
            if small == (1, 1, 1):
                split = "b m h c gd nd gh nh gw nw"
                merged = "b m (h c) (gd nd) (gh nh) (gw nw)"
                o = rearrange(o, f"(b gd gh gw) h (m nd nh nw) c -> {split if direct else merged}",
                              nd=nd, nh=nh, nw=nw, **grid)
            else:
                o = rearrange(o, "w h (m nd nh nw) c -> w (m h c) nd nh nw", nd=nd, nh=nh, nw=nw)
                o = upsample_trilinear(o, big, align_corners=True)
                split = "b m c gd nd gh nh gw nw"
                merged = "b m c (gd nd) (gh nh) (gw nw)"
                o = rearrange(o, f"(b gd gh gw) (m c) nd nh nw -> {split if direct else merged}", m=m, **grid)
            if values is None:
                maps.append(o)
                continue
            width = math.prod(o.shape[2:-6])  # the scale's value channels (h c, or c)
            slot = values[:, :, first:first + width]  # (B, M, width, D, H, W), written through a view
            slot.view(o.shape).copy_(o)
            first += width
        values = (values if values is not None else torch.cat(maps, dim=2)).reshape(batch, m * self.v_channels, *size)
        weight, bias = self._fused_mixer()
        return list(self.proj_drop(_conv1x1(values, weight, bias, m)).chunk(m, dim=1))


def _max_pool(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """Max-pool the last three dims of ``x`` by non-overlapping ``window``s (any leading dims).

    Without gradients (inference, fast path) as three reductions over a strided view, which on a
    CPU is about 2x faster than ``max_pool3d`` for 2- and 4-voxel windows and needs no copy of
    the slice; with gradients ``max_pool3d`` (whose backward routes each gradient to one voxel).
    """
    lead, (d, h, w) = x.shape[:-3], x.shape[-3:]
    sd, sh, sw = window
    if fast_paths_enabled() and not torch.is_grad_enabled():
        y = x.unflatten(-1, (w // sw, sw)).amax(-1)
        y = y.unflatten(-2, (h // sh, sh)).amax(-2)
        return y.unflatten(-3, (d // sd, sd)).amax(-3)
    return F.max_pool3d(x.reshape(-1, 1, d, h, w), window, window).view(*lead, d // sd, h // sh, w // sw)


def _attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                       chunk_bytes: int = 1 << 20) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` for ``(W, heads, T, d)`` inputs, a few (window, head) pairs at a time.

    Inference only. Each chunk's score matrices (at most ``chunk_bytes`` per thread) stay in the CPU's L2
    caches from the matmul through the softmax to the second matmul, and the bias is added by the
    matmul itself (``baddbmm``); the whole-tensor version streams every score matrix through
    memory three times. The second product is computed transposed, ``(v^T P^T)^T``: with the value
    width (4-8) as the small dimension of the output instead of its last one, MKL's GEMM is 3.5x
    faster (432 tokens: 147 -> 42 us per window and head).
    """
    wins, heads, t, dv = v.shape
    qf = q.reshape(wins * heads, t, q.shape[-1])
    kf = k.transpose(-1, -2).reshape(wins * heads, k.shape[-1], t)
    vt = v.transpose(-1, -2).reshape(wins * heads, dv, t)
    per = chunk_bytes * torch.get_num_threads() // (t * t * q.element_size())  # (window, head) pairs per chunk
    per = per // heads * heads if per >= heads else 1  # whole windows, or a single head
    bias_chunk = bias.repeat(per // heads, 1, 1) if per >= heads else bias
    out_t = torch.empty(wins * heads, dv, t, dtype=v.dtype, device=v.device)
    for start in range(0, wins * heads, per):
        stop = min(start + per, wins * heads)
        b = bias_chunk[: stop - start] if per >= heads else bias[start % heads: start % heads + 1]
        scores = torch.baddbmm(b, qf[start:stop], kf[start:stop])
        torch.bmm(vt[start:stop], scores.softmax(dim=-1).transpose(-1, -2), out=out_t[start:stop])
    return out_t.transpose(-1, -2).view(wins, heads, t, dv)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped 1x1x1 conv (one group per modality) through :class:`~.layers.Conv3d`'s kernel choice."""
    return Conv3d.conv(x, weight, bias, groups=groups)


#: forms of the attention residual of :class:`PWABlock`
RESIDUALS: tuple[str, ...] = ("double", "single")


class PWABlock(nn.Module):
    """Transformer block with one residual stream per modality.

    ``residual="double"`` (the authors' code: their attention module returns ``inputs + mixer(attn)`` and
    their block adds the input again) computes ``x = 2x + PWA(LN(x)); x += FFN(LN(x))``;
    ``residual="single"`` (what veloxseg computed before, kept for its checkpoints)
    ``x += PWA(LN(x)); x += FFN(LN(x))``.
    ``eps``: of the LayerNorms (the authors' 1e-6).
    """

    def __init__(self, channels: int, num_modalities: int, pairs: Sequence[tuple[Size3, Size3]], heads: int,
                 min_dim_head: int, ffn_ratio: int = 3, attn_drop: float = 0.1, proj_drop: float = 0.1,
                 dropout: float = 0.1, residual: str = "double", eps: float = 1e-6) -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"unknown attention residual {residual!r}; choose one of {', '.join(RESIDUALS)}")
        self.residual_scale = 2.0 if residual == "double" else 1.0
        self.norm1 = nn.ModuleList(LayerNorm3d(channels, eps=eps) for _ in range(num_modalities))
        self.attn = PairedWindowAttention(channels, num_modalities, pairs, heads, min_dim_head, attn_drop, proj_drop)
        self.ffn = nn.ModuleList(
            nn.Sequential(
                LayerNorm3d(channels, eps=eps),
                Conv3d(channels, channels * ffn_ratio, 1),
                nn.GELU(),
                Dropout(dropout),
                Conv3d(channels * ffn_ratio, channels, 1),
                Dropout(dropout),
            )
            for _ in range(num_modalities)
        )

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        attended = self.attn([norm(x) for norm, x in zip(self.norm1, xs)])
        # 2x + a as one fused op (exact: doubling is exact in floating point)
        xs = [torch.add(a, x, alpha=self.residual_scale) for x, a in zip(xs, attended)]
        if self.training:
            return [x + ffn(x) for ffn, x in zip(self.ffn, xs)]
        return [x + conv_gelu_conv(ffn[0](x), ffn[1], ffn[4]) for ffn, x in zip(self.ffn, xs)]  # dropouts: identity
