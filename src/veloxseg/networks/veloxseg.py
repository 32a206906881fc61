"""VeloxSeg: dual-stream encoder, pixel-shuffle segmentation decoder, and SDKT texture teachers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ..jl import DEFAULT_KAPPA, jl_group_widths
from .decoder import DecoderLadder, PixelShuffleHead, TransposedConvHead
from .encoder import ConvStream, TransformerStream
from .initialization import INITS, init_weights_
from .layers import Conv3d, upsample_trilinear
from .pwa import RESIDUALS, Size3, as_size3, window_pairs
from .sdkt import TextureTeacher, gram_matrix

REFERENCE_WINDOWS: tuple[int, ...] = (3, 6, 3, 3)
LEVELS = 4
UPSAMPLING: tuple[str, ...] = ("pixel_shuffle", "transposed")
#: The constructor arguments that follow the authors' code (JinPLu/VeloxSeg) by default, with the value
#: networks were built with before the argument existed. A checkpoint whose ``model_kwargs`` lack one of
#: them was written by such a version: :func:`veloxseg.checkpoint.build_model` fills these in, so it keeps
#: computing what it computed (docs/architecture.md, "Differences from the authors' code").
LEGACY_KWARGS: dict[str, Any] = {
    "attention_residual": "single",
    "layer_norm_eps": 1e-5,
    "ds_align_corners": False,
    "init": "pytorch",
}


class VeloxSegOutput(NamedTuple):
    """What a VeloxSeg returns in train mode.

    Attributes:
        logits: full-resolution logits first, then the deep-supervision outputs resized to the input.
        reconstruction: the teachers' reconstruction of the input ``(B, sum C_m, D, H, W)`` (None without teachers).
        gram_student: Gram matrix of the segmentation decoder's last feature ``(B, F, F)`` (None without teachers).
        gram_teachers: one ``(B, F, F)`` Gram matrix per modality's teacher.
    """

    logits: list[torch.Tensor]
    reconstruction: torch.Tensor | None
    gram_student: torch.Tensor | None
    gram_teachers: list[torch.Tensor]


def level_size(img_size: Sequence[int], patch_size: int, level: int) -> Size3:
    """Spatial size of the level-``level`` feature map for an input of ``img_size``."""
    factor = patch_size * 2**level
    return tuple(s // factor for s in img_size)  # type: ignore[return-value]


def resolve_windows(img_size: Sequence[int], patch_size: int, windows: Sequence[int | Sequence[int]] | None = None,
                    levels: int = LEVELS) -> list[Size3]:
    """Big window of each level: the given ones (checked), else derived from ``img_size``.

    Derived windows keep the reference window (3, 6, 3, 3) on every axis it divides the feature
    map, otherwise the largest divisor of the feature size below it.
    """
    img = as_size3(img_size)
    factor = patch_size * 2 ** (levels - 1)
    if any(s % factor for s in img):
        raise ValueError(f"input size {img} must be divisible by {factor} (patch_size * 2**{levels - 1}) on every axis")
    if windows is not None and len(windows) != levels:
        raise ValueError(f"window_sizes needs one window per level ({levels}), got {len(windows)}")
    result = []
    for level in range(levels):
        feat = level_size(img, patch_size, level)
        if windows is not None:
            win = as_size3(windows[level])
            if any(f % w for f, w in zip(feat, win)):
                raise ValueError(f"level {level}: window {win} does not divide the feature map {feat} "
                                 f"(input {img}, patch size {patch_size})")
        else:
            ref = as_size3(REFERENCE_WINDOWS[level])
            win = tuple(r if f % r == 0 else max(d for d in range(1, r + 1) if f % d == 0)
                        for f, r in zip(feat, ref))  # type: ignore[assignment]
        result.append(win)
    return result


class VeloxSeg(nn.Module):
    """VeloxSeg (ICLR 2026) for 3-D multi-modal segmentation, in MONAI's constructor style.

    Args:
        spatial_dims: must be 3.
        in_channels: channels of each modality block, e.g. ``[1, 1]`` for PET/CT, ``[4]`` for BraTS.
        out_channels: number of classes (background included).
        img_size: training patch size; windows are derived from it when ``window_sizes`` is None.
        patch_size: ``p``, the stride of the patch embedding and of the first conv.
        feature_size: conv width ``F`` of level 0.
        attn_feature_size: attention width ``E`` per modality at level 0.
        kernel_sizes: kernels of the JLC local branches.
        group_widths: JLC channels per group per level (default: the JL bound, ``<4, 8, 8, 16>``).
        conv_ffn_ratios: JLC channel-FFN expansion per level.
        heads: attention heads per level.
        min_dim_heads: JL minimum head width per level (default: the JL bound).
        window_sizes: big window per level (int or 3 ints); derived from ``img_size`` when None.
        small_window: the small window of the first pair (1 in the paper).
        window_scale: factor between successive window pairs.
        attn_ffn_ratios: transformer FFN expansion per level.
        attn_drop, proj_drop, dropout: attention, projection and conv/FFN dropout.
        deep_supervision: build the 1x1 deep-supervision heads (training only).
        texture_teachers: build one reconstruction teacher per modality (training only).
        jl_kappa: ``kappa`` of the JL bound used for the defaults.
        use_transformer: build the PWA transformer stream and the modal mixers (False: the ablation's
            conv-only rows; needs ``texture_teachers=False``, the teachers read the attention maps).
        upsampling: ``"pixel_shuffle"`` (the paper's unified upsampling) or ``"transposed"`` (the
            ablation's conventional decoder, :class:`~veloxseg.networks.decoder.TransposedConvHead`).
        attention_residual: ``"double"`` (the authors' code: a PWA block computes ``2x + PWA(LN(x))``
            before its FFN residual) or ``"single"`` (``x + PWA(LN(x))``, what veloxseg computed before).
        layer_norm_eps: epsilon of the transformer stream's LayerNorms (the authors' 1e-6; before: 1e-5).
        ds_align_corners: ``align_corners`` of the trilinear upsampling of the deep-supervision logits
            (the authors' True; before: False).
        init: ``"he"`` (the authors': He-normal convs, zero biases, :mod:`.initialization`) or
            ``"pytorch"`` (PyTorch's default, what veloxseg used before).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: Sequence[int] | int = (1, 1),
        out_channels: int = 2,
        img_size: Sequence[int] | int = (96, 96, 96),
        patch_size: int = 4,
        feature_size: int = 16,
        attn_feature_size: int = 16,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        group_widths: Sequence[int] | None = None,
        conv_ffn_ratios: Sequence[int] = (3, 3, 2, 2),
        heads: Sequence[int] = (1, 2, 2, 4),
        min_dim_heads: Sequence[int] | None = None,
        window_sizes: Sequence[int | Sequence[int]] | None = None,
        small_window: int | Sequence[int] = 1,
        window_scale: int = 2,
        attn_ffn_ratios: Sequence[int] = (3, 3, 2, 2),
        attn_drop: float = 0.1,
        proj_drop: float = 0.1,
        dropout: float = 0.1,
        deep_supervision: bool = True,
        texture_teachers: bool = True,
        jl_kappa: float = DEFAULT_KAPPA,
        use_transformer: bool = True,
        upsampling: str = "pixel_shuffle",
        attention_residual: str = "double",
        layer_norm_eps: float = 1e-6,
        ds_align_corners: bool = True,
        init: str = "he",
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"VeloxSeg is a 3-D network: spatial_dims must be 3, got {spatial_dims}")
        in_ch = [in_channels] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        if not in_ch or any(c < 1 for c in in_ch):
            raise ValueError(f"in_channels must list at least one positive channel count, got {in_channels!r}")
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        if upsampling not in UPSAMPLING:
            raise ValueError(f"unknown upsampling {upsampling!r}; choose one of {', '.join(UPSAMPLING)}")
        if attention_residual not in RESIDUALS:
            raise ValueError(f"unknown attention_residual {attention_residual!r}; "
                             f"choose one of {', '.join(RESIDUALS)}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        if not layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {layer_norm_eps}")
        if texture_teachers and not use_transformer:
            raise ValueError("texture_teachers need the transformer stream (use_transformer=True)")
        m = len(in_ch)
        widths = [feature_size * 2**i for i in range(LEVELS)]
        jl = jl_group_widths(m, patch_size, LEVELS, jl_kappa, widths)
        group_widths = list(group_widths) if group_widths is not None else jl
        min_dim_heads = list(min_dim_heads) if min_dim_heads is not None else jl_group_widths(m, patch_size, LEVELS, jl_kappa)
        img = as_size3(img_size)
        windows = resolve_windows(img, patch_size, window_sizes)
        small = as_size3(small_window)
        self.level_pairs = [
            window_pairs(level_size(img, patch_size, i), windows[i], small, window_scale) for i in range(LEVELS)
        ]
        self.hparams: dict[str, Any] = {
            "spatial_dims": 3, "in_channels": in_ch, "out_channels": out_channels, "img_size": list(img),
            "patch_size": patch_size, "feature_size": feature_size, "attn_feature_size": attn_feature_size,
            "kernel_sizes": list(kernel_sizes), "group_widths": group_widths, "conv_ffn_ratios": list(conv_ffn_ratios),
            "heads": list(heads), "min_dim_heads": min_dim_heads, "window_sizes": [list(w) for w in windows],
            "small_window": list(small), "window_scale": window_scale, "attn_ffn_ratios": list(attn_ffn_ratios),
            "attn_drop": attn_drop, "proj_drop": proj_drop, "dropout": dropout,
            "deep_supervision": deep_supervision, "texture_teachers": texture_teachers, "jl_kappa": jl_kappa,
            "use_transformer": use_transformer, "upsampling": upsampling,
            "attention_residual": attention_residual, "layer_norm_eps": float(layer_norm_eps),
            "ds_align_corners": bool(ds_align_corners), "init": init,
        }
        self.ds_align_corners = bool(ds_align_corners)
        self.in_channels = in_ch
        self.out_channels = out_channels
        self.patch_size = patch_size

        self.transformer = TransformerStream(in_ch, attn_feature_size, patch_size, self.level_pairs, heads,
                                             min_dim_heads, attn_ffn_ratios, attn_drop, proj_drop, dropout,
                                             attention_residual, layer_norm_eps) if use_transformer else None
        self.conv_stream = ConvStream(sum(in_ch), feature_size, attn_feature_size, m, patch_size, group_widths,
                                      kernel_sizes, conv_ffn_ratios, dropout, LEVELS, with_mixers=use_transformer)
        self.decoder = DecoderLadder(feature_size, group_widths, kernel_sizes, conv_ffn_ratios, dropout, LEVELS)
        self.head: nn.Module = PixelShuffleHead(feature_size, out_channels, patch_size) \
            if upsampling == "pixel_shuffle" else TransposedConvHead(feature_size, out_channels, patch_size,
                                                                     group_widths[0], kernel_sizes, conv_ffn_ratios[0],
                                                                     dropout)
        # deep supervision on u_1, u_2 (decoder) and the deepest encoder feature
        self.ds_heads = nn.ModuleList(
            Conv3d(widths[i], out_channels, 1) for i in range(1, LEVELS)
        ) if deep_supervision else None
        self.teachers = nn.ModuleList(
            TextureTeacher(c, feature_size, attn_feature_size, patch_size, group_widths, kernel_sizes,
                           conv_ffn_ratios, dropout, LEVELS)
            for c in in_ch
        ) if texture_teachers else None
        init_weights_(self, init)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> VeloxSeg:
        """Build a reference configuration (``"autopet"``, ``"hecktor"``, ``"brats"``), with overrides.

        Overriding ``img_size`` without ``window_sizes`` derives the windows from the new size
        (the preset's windows are tied to its own size).
        """
        from ..presets import get_preset

        kwargs = dict(get_preset(name).model)
        if "img_size" in overrides and "window_sizes" not in overrides:
            kwargs.pop("window_sizes", None)
        kwargs.update(overrides)
        return cls(**kwargs)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with a clear message when ``x`` cannot go through this network."""
        expected = sum(self.in_channels)
        if x.dim() != 5:
            raise ValueError(f"VeloxSeg expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != expected:
            raise ValueError(f"VeloxSeg expects {expected} input channels (modalities {self.in_channels}), "
                             f"got {x.shape[1]} in a tensor of shape {tuple(x.shape)}")
        size = tuple(x.shape[2:])
        factor = self.patch_size * 2 ** (LEVELS - 1)
        if any(s % factor for s in size):
            raise ValueError(f"spatial size {size} must be divisible by {factor} on every axis")
        for level, pairs in enumerate(self.level_pairs):
            feat = level_size(size, self.patch_size, level)
            for big, _ in pairs:
                if any(f % b for f, b in zip(feat, big)):
                    raise ValueError(f"level {level}: window {big} does not divide the feature map {feat} of "
                                     f"input {size}; build the model with img_size={list(size)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor | VeloxSegOutput:
        """Logits ``(B, classes, D, H, W)`` in eval mode; a :class:`VeloxSegOutput` in train mode."""
        self.check_input(x)
        attention = self.transformer(x) if self.transformer is not None else None
        feats = self.conv_stream(x, attention)
        decoded = self.decoder(feats)
        logits = self.head(decoded[0])
        if not self.training:
            return logits
        size = x.shape[2:]
        all_logits = [logits]
        if self.ds_heads is not None:
            for head, feat in zip(self.ds_heads, [*decoded[1:], feats[-1]]):
                all_logits.append(upsample_trilinear(head(feat), size, align_corners=self.ds_align_corners))
        if self.teachers is None:
            return VeloxSegOutput(all_logits, None, None, [])
        recons, grams = [], []
        assert attention is not None  # teachers are only built with the transformer stream
        for m, teacher in enumerate(self.teachers):
            recon, last = teacher([level[m] for level in attention], feats)
            recons.append(recon)
            grams.append(gram_matrix(last))
        return VeloxSegOutput(all_logits, torch.cat(recons, dim=1), gram_matrix(decoded[0]), grams)

    def for_inference(self) -> VeloxSeg:
        """A copy for deployment: eval mode, no teachers, no deep-supervision heads, same logits."""
        hparams = dict(self.hparams, deep_supervision=False, texture_teachers=False)
        deployed = type(self)(**hparams)
        missing, _ = deployed.load_state_dict(self.state_dict(), strict=False)
        if missing:
            raise RuntimeError(f"for_inference: keys missing from the source model: {missing}")
        return deployed.to(next(self.parameters()).device).eval()
