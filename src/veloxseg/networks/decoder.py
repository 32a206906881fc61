"""The segmentation decoder: an Up/JLC ladder and the unified pixel-shuffle head (or, for the ablation, a
conventional upsampling head that continues the ladder to full resolution)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .jlc import JLCBlock
from .layers import Conv3d, UpBlock, fast_paths_enabled, pixel_shuffle_3d


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


#: element types that move this many bytes at once (a bit-for-bit copy; the values are never read as numbers)
_WIDE_ELEMENT = {16: torch.complex128, 8: torch.float64}
#: the head's pixel shuffle through :func:`pixel_shuffle_into_`
#: (off only for ``benchmarks/paired_ab.py --lever shuffle``)
WIDE_COPIES = True


def _shuffle_into(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out (B, C, d, r, h, r, w, r) <- pixel shuffle of x (B, C*r^3, d, h, w)``, value by value."""
    b, c, d, r, h, _, w, _ = out.shape
    out.copy_(x.view(b, c, r, r, r, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4))


def pixel_shuffle_into_(out: torch.Tensor, x: torch.Tensor) -> None:
    """Write the 3-D pixel shuffle of ``x`` ``(B, C*r^3, d, h, w)`` into ``out`` viewed as ``(B, C, d, r, h, r, w, r)``.

    The shuffle's innermost contiguous run is ``r`` values: one voxel's ``r`` neighbouring channels
    in a channels-last ``x``. Moved as one 16- or 8-byte element (a bit-for-bit copy), the copy is
    about 4x faster than value by value (autopet head slab, 1 thread: 170 -> 40 us). Any other
    layout or size is copied value by value. TorchScript cannot reinterpret a tensor's element type,
    so a traced graph calls this function as the operator ``torch.ops.veloxseg.pixel_shuffle_into_``
    (:func:`_pixel_shuffle_into_op`). The eager network calls it as a Python function.
    """
    b, c, d, r, h, _, w, _ = out.shape
    wide = _WIDE_ELEMENT.get(r * x.element_size())
    if wide is not None and x.is_contiguous(memory_format=torch.channels_last_3d):
        try:  # a view of r-value runs as one element needs them contiguous and aligned in both tensors
            dst, src = out.view(wide), x.permute(0, 2, 3, 4, 1).view(wide)
        except RuntimeError:
            pass
        else:
            dst.view(b, c, d, r, h, r, w).copy_(src.view(b, d, h, w, c, r, r).permute(0, 4, 1, 5, 2, 6, 3))
            return
    _shuffle_into(out, x)


@torch.library.custom_op("veloxseg::pixel_shuffle_into_", mutates_args=("out",), device_types="cpu")
def _pixel_shuffle_into_op(out: torch.Tensor, x: torch.Tensor) -> None:
    """:func:`pixel_shuffle_into_` as the operator ``torch.ops.veloxseg.pixel_shuffle_into_`` (for the traced graph).

    Registered the supported way, with a fake kernel for tracers that run on meta tensors. Only a graph
    calls it (the eager network and the exporters do not): its first call imports torch's custom-op
    machinery (~800 modules with sympy, ~80 MB, ~1.6 s), which defining it does not.
    """
    pixel_shuffle_into_(out, x)


@_pixel_shuffle_into_op.register_fake
def _(out: torch.Tensor, x: torch.Tensor) -> None:
    return None


class PixelShuffleHead(nn.Module):
    """"Unified upsampling": a 3x3x3 conv to ``p^3 * out_channels`` and a 3-D pixel shuffle by ``p``."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = Conv3d(in_channels, out_channels * factor**3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_paths_enabled() and not torch.is_grad_enabled() and x.device.type == "cpu":
            return self._forward_slabs(x)
        return pixel_shuffle_3d(self.conv(x), self.factor)

    def _forward_slabs(self, x: torch.Tensor, slab_bytes: int = 1 << 20) -> torch.Tensor:
        """The same output computed a few depth slices at a time (inference on a CPU).

        Each slab's conv output (at most ``slab_bytes``) is still in cache when it is shuffled into
        place; shuffling the whole conv output at once reads it back from memory with a stride of
        a whole channel. autopet head, 1 thread: 16.4 -> 9.1 ms (caches flushed), 8.2 -> 7.6 ms
        with the channels-last layout.
        """
        b, _, d, h, w = x.shape
        r, c = self.factor, self.conv.out_channels // self.factor**3
        slab = max(1, slab_bytes // (self.conv.out_channels * h * w * x.element_size()))
        # channels-last: oneDNN's conv is ~6 % faster and the shuffle reads 4 neighbouring channels at once
        padded = F.pad(x, (0, 0, 0, 0, 1, 1)).contiguous(memory_format=torch.channels_last_3d)
        weight = self.conv.weight.contiguous(memory_format=torch.channels_last_3d)
        out = torch.empty(b, c, d * r, h * r, w * r, dtype=x.dtype, device=x.device)
        view = out.view(b, c, d, r, h, r, w, r)
        for d0 in range(0, d, slab):
            d1 = min(d0 + slab, d)
            y = Conv3d.conv(padded[:, :, d0:d1 + 2], weight, self.conv.bias, padding=(0, 1, 1))
            if WIDE_COPIES and torch.jit.is_tracing():  # recorded in the graph as the operator
                torch.ops.veloxseg.pixel_shuffle_into_(view[:, :, d0:d1], y)
            elif WIDE_COPIES:
                pixel_shuffle_into_(view[:, :, d0:d1], y)
            else:
                _shuffle_into(view[:, :, d0:d1], y)
        return out


class TransposedConvHead(nn.Module):
    """Conventional upsampling (the ablation's "three-level upsampling decoder" rows).

    Continues the Up/JLC ladder from the level-0 map to full resolution: ``log2(factor)`` stages of
    ``JLC(Up(x))`` (2x2x2 transposed conv halving the channels, then a JLC block), then a 1x1 conv
    to the classes. Group widths are capped by the stage's channels.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int, group_width: int,
                 kernel_sizes: Sequence[int], ffn_ratio: int, dropout: float = 0.1) -> None:
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"transposed upsampling needs a power-of-two patch size, got {factor}")
        stages, width = [], in_channels
        for _ in range(factor.bit_length() - 1):
            half = max(1, width // 2)
            stages.append(nn.Sequential(UpBlock(width, half),
                                        JLCBlock(half, min(group_width, half), kernel_sizes, ffn_ratio, dropout)))
            width = half
        self.stages = nn.Sequential(*stages)
        self.out = Conv3d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.stages(x))
