"""The paper's ablation (ARCHITECTURE.md, section 6) as named network variants.

Each :class:`Variant` is a set of :class:`~veloxseg.networks.VeloxSeg` constructor arguments applied
on top of a preset, plus the :class:`~veloxseg.losses.VeloxSegLoss` arguments it trains with, and
the paper's figures for that row (AutoPET-II; parameters in millions, compute in G multiply-adds).

Rows 1-5 train without texture teachers (the teachers and the Gram term arrive in row 6). The
conv-only rows use a single 7x7x7 depthwise kernel: the paper does not name it, but it is the
kernel for which adding the (1, 3, 5) branches *lowers* the parameter count by the paper's 0.07 M.
See docs/ablation.md for the measured figures beside the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .networks import VeloxSeg
from .networks.veloxseg import LEGACY_KWARGS

_CONV_ONLY: dict[str, Any] = dict(use_transformer=False, texture_teachers=False, upsampling="transposed")


@dataclass(frozen=True)
class Variant:
    """A named ablation configuration.

    Attributes:
        name: registry key.
        description: the paper's row label.
        model: ``VeloxSeg`` keyword arguments applied on top of the preset's.
        loss: ``VeloxSegLoss`` keyword arguments.
        paper: the paper's ``(params in M, G multiply-adds, Dice %)`` for the row (None when not reported).
    """

    name: str
    description: str
    model: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=dict)
    paper: tuple[float | None, float | None, float] | None = None


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("conv-only", "conv only, widths <16, 32, 64, 128>, depthwise groups",
            dict(_CONV_ONLY, kernel_sizes=(7,), group_widths=(1, 1, 1, 1)), paper=(0.73, 2.41, 50.10)),
    Variant("multiscale", "+ multi-scale kernels <1, 3, 5>",
            dict(_CONV_ONLY, kernel_sizes=(1, 3, 5), group_widths=(1, 1, 1, 1)), paper=(0.66, 2.30, 53.65)),
    Variant("jl-groups", "+ JL group width <4, 8, 8, 16>",
            dict(_CONV_ONLY, kernel_sizes=(1, 3, 5), group_widths=(4, 8, 8, 16)), paper=(1.18, 2.66, 55.84)),
    Variant("pwa", "+ transformer stream (PWA), conventional upsampling decoder",
            dict(texture_teachers=False, upsampling="transposed"), paper=(1.88, 2.90, 61.03)),
    Variant("unified-upsampling", "+ unified (pixel-shuffle) upsampling",
            dict(texture_teachers=False), paper=(1.66, 1.79, 59.71)),
    Variant("full", "+ Gram supervision (the full model)", dict(), paper=(1.66, 1.79, 62.51)),
    Variant("groups-8-16-16-32", "control: group width <8, 16, 16, 32> (at the jl-groups row)",
            dict(_CONV_ONLY, kernel_sizes=(1, 3, 5), group_widths=(8, 16, 16, 32)), paper=(None, None, 55.14)),
    Variant("pre-authors", "control: veloxseg 0.1's network before it matched the authors' code (single PWA "
            "residual, LayerNorm eps 1e-5, deep supervision align_corners=False, PyTorch's default init)",
            dict(LEGACY_KWARGS)),
    Variant("teachers-no-gram", "control: teachers with reconstruction but no Gram term",
            dict(), loss=dict(lambda_sdkt=0.0), paper=(1.66, 1.79, 59.64)),
)}


def get_variant(name: str) -> Variant:
    """Look a variant up by name, with an error that lists the known ones."""
    try:
        return VARIANTS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None


def build_variant(name: str, preset: str = "autopet", **overrides: Any) -> VeloxSeg:
    """The network of variant ``name`` at ``preset``'s configuration (``overrides`` win over both)."""
    variant = get_variant(name)
    return VeloxSeg.from_preset(preset, **{**variant.model, **overrides})


def variant_loss(name: str, **overrides: Any) -> Any:
    """The :class:`~veloxseg.losses.VeloxSegLoss` variant ``name`` trains with."""
    from .losses import VeloxSegLoss

    return VeloxSegLoss(**{**get_variant(name).loss, **overrides})
