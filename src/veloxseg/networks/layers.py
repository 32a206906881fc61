"""Small building blocks shared by the VeloxSeg network parts.

Two of them take faster kernels than PyTorch's defaults on a CPU without changing what is
computed (see docs/benchmarks.md for the figures):

- :class:`Conv3d` calls oneDNN directly on CPU float32. PyTorch's heuristic sends an ungrouped
  batch-1 3-D conv whose first four dims are small (the 16 -> 128 head conv at 24^3) to a
  slow im2col path that is 3x slower.
- :class:`InstanceNorm3d` is computed as a GroupNorm with one channel per group (identical
  maths, without the reshape copies of PyTorch's instance norm; 5x faster at 24^3).
- At inference, 1x1x1 convs on small maps or in narrow groups are one matrix product per group
  (:func:`conv1x1_gemm`), skipping oneDNN's per-call set-up; wide grouped convs on large maps are
  depthwise convs on channel-rotated copies (:func:`grouped_conv_as_depthwise`), summed.

:func:`fast_paths` switches them back to PyTorch's defaults (the straightforward path), which
the equivalence tests compare against. Tracing, ONNX export and compiling use the default ops, except
the CPU graph traced inside :func:`tracing_fast_kernels`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint


class _Switches(threading.local):
    """Per thread, like PyTorch's grad mode: a block on one thread does not switch another's kernels."""

    fast = True  # fast_paths
    trace_fast = False  # tracing_fast_kernels


_STATE = _Switches()


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Enable or disable the fast CPU kernels of :class:`Conv3d` and :class:`InstanceNorm3d` in a block
    (on the calling thread)."""
    previous, _STATE.fast = _STATE.fast, enabled
    try:
        yield
    finally:
        _STATE.fast = previous


def fast_paths_enabled() -> bool:
    """Whether the fast CPU kernels are on (see :func:`fast_paths`): not while exporting, and not for inference
    under ``torch.autocast`` (the inference kernels write into buffers of one dtype, which autocast's mixed dtypes
    break, e.g. in the validation of ``train --precision bf16``; the training kernels keep working under it)."""
    return _STATE.fast and not _exporting() and not (
        not torch.is_grad_enabled() and (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")))


@contextlib.contextmanager
def tracing_fast_kernels() -> Iterator[None]:
    """Keep the fast CPU kernels while ``torch.jit.trace`` records (a CPU-only graph, see
    :mod:`veloxseg.inference.graph`); other tracing, ONNX export and compiling use the default ops."""
    previous, _STATE.trace_fast = _STATE.trace_fast, True
    try:
        yield
    finally:
        _STATE.trace_fast = previous


def _exporting() -> bool:
    return (torch.jit.is_tracing() and not _STATE.trace_fast) or torch.jit.is_scripting() \
        or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _keep_mask(like: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The scaled dropout mask (``0`` or ``1 / (1 - p)``) that ``seed`` determines, shaped like ``like``.

    Random bits come 64 at a time from ``random_`` on int64 (6x cheaper than ``uniform_`` per
    element) and are compared as 16-bit integers: ``P(keep) = round((1 - p) 2^16) / 2^16``.
    """
    n = like.numel()
    gen = torch.Generator().manual_seed(seed)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None, generator=gen)
    threshold = int(round((1.0 - p) * 65536)) - 32768
    mask = torch.empty(like.shape, dtype=like.dtype)
    torch.lt(bits.view(torch.int16)[:n].view(like.shape), threshold, out=mask)
    return mask.mul_(1.0 / (1.0 - p))


def _draw_seed() -> int:
    """A mask seed from PyTorch's global generator, so ``torch.manual_seed`` keeps runs reproducible."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class _Dropout(torch.autograd.Function):
    """Inverted dropout that keeps no mask for the backward: it regenerates it from a saved seed.

    This saves keeping a float mask the size of the input per dropout layer in training.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        ctx.seed, ctx.p = _draw_seed(), p
        return x * _keep_mask(x, p, ctx.seed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * _keep_mask(grad, ctx.p, ctx.seed), None


def recompute(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` keeping only ``x`` for the backward, which runs ``fn`` again (activation checkpointing).

    For cheap, deterministic parts (no dropout inside) whose intermediate maps are large.
    """
    if not (fast_paths_enabled() and torch.is_grad_enabled() and x.requires_grad):
        return fn(x)
    return checkpoint(fn, x, use_reentrant=False, preserve_rng_state=False)


def matmul_narrow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a narrow ``b`` (attention weights times 4-8 value channels), computed as ``(b^T a^T)^T``.

    MKL's GEMM is slow when the output's last dimension is that small: for 432x432 times 432x8,
    147 us as ``a @ b`` vs 42 us transposed. The result is a transposed view.
    """
    return torch.matmul(b.transpose(-1, -2), a.transpose(-1, -2)).transpose(-1, -2)


class _DropoutMatmul(torch.autograd.Function):
    """``dropout(a) @ b`` keeping only ``a``, ``b`` and a seed: the dropped ``a`` (what a matmul saves)
    is rebuilt in the backward from the regenerated mask. For attention, ``a`` is the softmax output,
    which the softmax keeps anyway, so the score-sized dropped copy and mask are not kept at all. Under CPU
    autocast (``veloxseg train --precision bf16``) the backward runs in the forward's autocast state."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")  # CPU only: dropout_matmul takes it on the CPU fast path alone
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        ctx.seed, ctx.p = _draw_seed(), p
        ctx.save_for_backward(a, b)
        return matmul_narrow(a * _keep_mask(a, p, ctx.seed), b)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        mask = _keep_mask(a, ctx.p, ctx.seed)
        # grad_b = (a * mask)^T @ grad: narrow again, so transposed as in the forward
        grad_b = matmul_narrow((a * mask).transpose(-1, -2), grad) if ctx.needs_input_grad[1] else None
        grad_a = torch.matmul(grad, b.transpose(-1, -2)).mul_(mask) if ctx.needs_input_grad[0] else None
        return grad_a, grad_b, None


def dropout_matmul(a: torch.Tensor, b: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``dropout(a, p) @ b`` (attention weights times values); faster and leaner on the fast CPU path."""
    if not fast_paths_enabled() or a.device.type != "cpu":
        return torch.matmul(F.dropout(a, p, True) if training and p > 0 else a, b)
    if not training or p == 0.0:
        return matmul_narrow(a, b)
    if a.shape[:-2] != b.shape[:-2]:  # broadcasting: the fused function assumes equal batch shapes
        return matmul_narrow(dropout(a, p, True), b)
    return _DropoutMatmul.apply(a, b, p)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout; on the fast CPU path through :class:`_Dropout` (cheaper random bits, no saved mask)."""
    if not training or p == 0.0:
        return x
    if not fast_paths_enabled() or x.device.type != "cpu" or not x.dtype.is_floating_point:
        return F.dropout(x, p, True)
    return _Dropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


_GEMM_1X1 = True  # off only for benchmarks/paired_ab.py; fast_paths(False) turns it off too


def _pointwise(stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> bool:
    return all(v == 1 for v in stride) and all(v == 0 for v in padding) and all(v == 1 for v in dilation)


def conv1x1_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1) -> torch.Tensor:
    """A (grouped) 1x1x1 conv of a channels-first ``(B, C, D, H, W)`` map as one matrix product per group.

    ``out[g] = W[g] @ x[g] + b[g]`` on the ``(channels, voxels)`` view. On a CPU this beats oneDNN's
    conv for small maps (levels 2-3: 54 -> 38 us at 1 thread, 66 -> 23 us at 2 threads for 128 -> 64
    channels at 6^3) and for narrow groups at any size (the JLC 1x1 branch, 16 channels in groups of
    4 at 24^3: 212 -> 44 us), where oneDNN's per-call set-up dominates.
    """
    b, cin = x.shape[:2]
    cout = weight.shape[0]
    w = weight.view(groups, cout // groups, cin // groups)
    xs = x.reshape(b, groups, cin // groups, -1)
    if b == 1 and bias is not None:
        out = torch.baddbmm(bias.view(groups, -1, 1), w, xs[0])
    else:
        out = torch.matmul(w, xs)
        if bias is not None:
            out = out.add_(bias.view(groups, -1, 1))
    return out.view(b, cout, *x.shape[2:])


def _fast_kernels_apply(x: torch.Tensor) -> bool:
    """Whether :meth:`Conv3d.conv` takes its fast CPU kernels for ``x`` (CPU float32, fast paths on)."""
    return _STATE.fast and x.device.type == "cpu" and x.dtype == torch.float32 and not _exporting()


def _gemm_1x1(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int], groups: int) -> bool:
    """Whether :meth:`Conv3d.conv` runs a conv as :func:`conv1x1_gemm` (inference, small maps or narrow groups)."""
    return _GEMM_1X1 and tuple(kernel) == (1, 1, 1) and _pointwise(stride, padding, dilation) \
        and not torch.is_grad_enabled() and (math.prod(x.shape[2:]) <= 1728 or groups >= 4)


#: run wide grouped convs on large maps as depthwise convs (:func:`grouped_conv_as_depthwise`)
#: (off only for ``benchmarks/paired_ab.py --lever depthwise``)
DEPTHWISE_SPLIT = True


def _depthwise_split(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], dilation: Sequence[int],
                     groups: int, shared: bool = False) -> bool:
    """Whether a grouped conv runs as :func:`grouped_conv_as_depthwise` (:meth:`Conv3d.conv`, :class:`~.jlc.JLCBlock`).

    At inference, for groups of 2-4 input and output channels on maps of more than 4096 voxels (level
    0), with kernels of at least 5x5x5, or 3x3x3 where the rotated copies of the input are
    ``shared`` with another conv (the JLC blocks' 3x3x3 and 5x5x5 branches); elsewhere oneDNN's
    grouped kernel is as fast or faster (level 1 and deeper: docs/dev/performance.md).
    """
    width = weight.shape[1]
    return (DEPTHWISE_SPLIT and not torch.is_grad_enabled() and groups > 1 and weight.shape[0] == groups * width
            and 2 <= width <= 4 and math.prod(weight.shape[2:]) >= (27 if shared else 125)
            and math.prod(x.shape[2:]) > 4096 and all(s == 1 for s in stride) and all(d == 1 for d in dilation))


def channel_rotations(x: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Channels-last copies of ``x`` with its channels rotated by 0, 1, ... within each of ``groups`` groups.

    Copy ``s`` holds, in channel ``c``, input channel ``(c + s) mod g`` of ``c``'s group (``g`` channels
    per group): the inputs of :func:`grouped_conv_as_depthwise`.
    """
    g = x.shape[1] // groups
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    nhwc = x_cl.permute(0, 2, 3, 4, 1).unflatten(-1, (groups, g))  # (B, D, H, W, groups, g), a view
    return [x_cl] + [nhwc.roll(-s, -1).flatten(-2).permute(0, 4, 1, 2, 3) for s in range(1, g)]


def grouped_conv_as_depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              padding: Sequence[int], groups: int,
                              rotations: list[torch.Tensor] | None = None) -> torch.Tensor:
    """A grouped conv with ``g`` input and ``g`` output channels per group, as ``g`` depthwise convs, summed.

    Term ``s`` convolves each channel ``c`` of a copy of ``x`` whose channels are rotated by ``s``
    within their group (channel ``c`` holds input ``(c + s) mod g`` of its group) with the weights
    that output ``c`` gives that input, so every (output, input) pair of a group is covered once.
    The depthwise convs run channels-last, where oneDNN vectorises over the channels: the JLC
    5x5x5 conv on 16 channels in groups of 4 at 24^3, 2.9 -> 1.5 ms at 1 thread, 1.6 -> 0.9 ms at
    2, where the grouped kernel keeps most of each vector register idle. The sum runs in another
    order than the grouped conv's (agrees to ~1e-6 relative). ``rotations``: :func:`channel_rotations`
    of ``x``, when several convs of ``x`` share them. Returns a channels-first tensor.
    """
    c, g = weight.shape[0], weight.shape[1]
    channel = torch.arange(c, device=weight.device)
    out = None
    for s, rotated in enumerate(rotations if rotations is not None else channel_rotations(x, groups)):
        w = weight[channel, (channel % g + s) % g].unsqueeze(1).contiguous(memory_format=torch.channels_last_3d)
        y = torch.mkldnn_convolution(rotated, w, bias if s == 0 else None, padding, (1, 1, 1), (1, 1, 1), c)
        out = y if out is None else out.add_(y)
    return out.contiguous()


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes oneDNN directly on CPU float32 (faster for batch-1 3-D convs).

    The same result, except that wide grouped convs at inference (:func:`_depthwise_split`) sum in
    another order (agreeing to ~1e-6 relative).
    """

    @staticmethod
    def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int] = (1, 1, 1),
             padding: Sequence[int] = (0, 0, 0), dilation: Sequence[int] = (1, 1, 1), groups: int = 1) -> torch.Tensor:
        """``F.conv3d`` with the fast CPU kernel when it applies."""
        if _fast_kernels_apply(x):
            if _gemm_1x1(x, weight.shape[2:], stride, padding, dilation, groups):
                return conv1x1_gemm(x, weight, bias, groups)
            if _depthwise_split(x, weight, stride, dilation, groups):
                return grouped_conv_as_depthwise(x, weight, bias, padding, groups)
            return torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return self.conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


#: keep the hidden map of :func:`conv_gelu_conv` in oneDNN's layout
#: (off only for ``benchmarks/paired_ab.py --lever mlp``)
ONEDNN_MLP = True


def conv_gelu_conv(x: torch.Tensor, fc1: nn.Conv3d, fc2: nn.Conv3d) -> torch.Tensor:
    """``fc2(gelu(fc1(x)))`` for two 1x1x1 convs (a channel FFN without dropout: inference).

    Where both convs run on oneDNN (CPU float32 inference on a map of more than 1728 voxels), the
    hidden map never leaves oneDNN's blocked layout: each conv between plain PyTorch tensors
    reorders its input into that layout and its output back, and the hidden map is the FFN's
    widest (3x). Bitwise the same result; the level-0 FFN (16 -> 48 -> 16 at 24^3) 0.67 -> 0.51 ms
    at 1 thread, 0.39 -> 0.30 ms at 2.
    """
    one = (1, 1, 1)
    if (ONEDNN_MLP and _fast_kernels_apply(x) and not torch.is_grad_enabled()
            and not _gemm_1x1(x, one, one, (0, 0, 0), one, 1)  # (the hidden map has x's voxels)
            and all(fc.groups == 1 and fc.kernel_size == one and _pointwise(fc.stride, fc.padding, fc.dilation)
                    for fc in (fc1, fc2))):
        zero = (0, 0, 0)
        h = torch.mkldnn_convolution(x.to_mkldnn(), fc1.weight, fc1.bias, zero, one, one, 1)
        h = torch.mkldnn_convolution(F.gelu(h), fc2.weight, fc2.bias, zero, one, one, 1)
        return h.to_dense()
    return fc2(F.gelu(fc1(x)))


class InstanceNorm3d(nn.InstanceNorm3d):
    """InstanceNorm3d without affine, computed as a one-channel-per-group GroupNorm on the fast path.

    It also accepts a 1x1x1 map (the deepest level of a 32^3 input), where PyTorch's instance
    norm refuses and the mathematical value ``(x - mean) / std`` is exactly 0.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _STATE.fast and not _exporting():
            return torch.group_norm(x, x.shape[1], None, None, self.eps, False)
        if x.shape[2] * x.shape[3] * x.shape[4] == 1:
            return x - x
        return super().forward(x)


class LayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channel axis of a channels-first ``(B, C, D, H, W)`` tensor.

    For inference on large maps the fast path normalises in place along the channel axis with
    broadcast reductions, which avoids the two permuted copies and leaves a contiguous result
    (2x faster for 16 channels at 24^3, and the following 1x1 convs are faster too).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (fast_paths_enabled() and not torch.is_grad_enabled() and x.device.type == "cpu"
                and x[0, 0].numel() >= 4096):
            mean = x.mean(1, keepdim=True)
            centred = x - mean
            inv_std = torch.rsqrt(centred.square().mean(1, keepdim=True).add_(self.eps))
            shape = (1, -1, 1, 1, 1)
            return centred.mul_(inv_std).mul_(self.weight.view(shape)).add_(self.bias.view(shape))
        x = x.permute(0, 2, 3, 4, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 4, 1, 2, 3)


@functools.lru_cache(maxsize=64)
def _linear_weights(n_in: int, n_out: int, align_corners: bool) -> torch.Tensor:
    """The ``(n_out, n_in)`` matrix of 1-D linear interpolation, with PyTorch's source-index rule.

    Built outside inference mode: the cached matrix is shared with later training in the process,
    where an inference tensor could not be saved for the backward.
    """
    with torch.inference_mode(False):
        return _interpolation_matrix(n_in, n_out, align_corners)


def _interpolation_matrix(n_in: int, n_out: int, align_corners: bool) -> torch.Tensor:
    dst = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else dst * 0
    else:
        src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    frac = src - i0
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights[torch.arange(n_out), i0] += 1 - frac
    weights[torch.arange(n_out), i1] += frac
    return weights.float()


def upsample_trilinear(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode="trilinear")`` of a ``(B, C, D, H, W)`` map.

    On the fast path it is three matmuls with the 1-D interpolation matrices (trilinear
    interpolation is separable): the same values to float rounding, and on a CPU 5-10x faster
    than PyTorch's kernel forward and backward (a 6^3 map to 96^3: 25 -> 3 ms).
    """
    if not fast_paths_enabled() or x.dtype != torch.float32:
        return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=align_corners)
    # plain ints: while a graph is traced (veloxseg.inference.graph) sizes come as tensors, which would miss
    # the matrix cache and rebuild the matrices inside the graph on every call
    (d, h, w), (od, oh, ow) = (int(s) for s in x.shape[2:]), (int(s) for s in size)
    mw, mh, md = (_linear_weights(i, o, align_corners).to(x.device) for i, o in ((w, ow), (h, oh), (d, od)))
    y = torch.matmul(x, mw.t())  # (B, C, d, h, ow)
    y = torch.matmul(mh, y)  # (B, C, d, oh, ow)
    y = torch.matmul(md, y.reshape(*x.shape[:2], d, oh * ow))  # (B, C, od, oh*ow)
    return y.view(*x.shape[:2], od, oh, ow)


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """3-D pixel shuffle: ``(B, C*r^3, D, H, W) -> (B, C, D*r, H*r, W*r)`` (PyTorch channel order)."""
    return rearrange(x, "b (c p1 p2 p3) d h w -> b c (d p1) (h p2) (w p3)", p1=factor, p2=factor, p3=factor)


def space_to_depth_3d(x: torch.Tensor) -> torch.Tensor:
    """Stack the 8 interleaved 2x2x2 sub-grids on channels: ``(B, C, D, H, W) -> (B, 8C, D/2, H/2, W/2)``."""
    return rearrange(x, "b c (d p1) (h p2) (w p3) -> b (p1 p2 p3 c) d h w", p1=2, p2=2, p3=2)


class PatchMerging3d(nn.Module):
    """Swin-style patch merging for channels-first maps: space-to-depth, LayerNorm(8C), 1x1 conv to 2C."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = LayerNorm3d(8 * channels, eps=eps)
        self.reduction = Conv3d(8 * channels, 2 * channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(space_to_depth_3d(x)))


class ConvNorm(nn.Sequential):
    """Conv3d followed by InstanceNorm3d (no learnable affine, PyTorch's default)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> None:
        super().__init__(
            Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups),
            InstanceNorm3d(out_channels),
        )


class UpBlock(nn.Sequential):
    """Decoder upsampling: 2x2x2 stride-2 transposed conv halving the channels, then InstanceNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2),
            InstanceNorm3d(out_channels),
        )
