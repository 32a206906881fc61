"""The Johnson-Lindenstrauss bound that sizes VeloxSeg's conv groups and attention heads.

``C_group = kappa * log(M * v)`` (natural log), with ``M`` the number of modalities and
``v = (p * 2**i) ** 3`` the volume ratio between the input and the level-``i`` feature map,
rounded up to a power of two (capped at the level width). With ``M = 2`` and ``p = 4`` any
``kappa`` in about ``(0.72, 0.82]`` gives ``<4, 8, 8, 16>``; the default 0.8 does.
"""

from __future__ import annotations

import math

DEFAULT_KAPPA = 0.8


def jl_raw_width(modalities: int, patch_size: int, level: int, kappa: float = DEFAULT_KAPPA) -> float:
    """Return the unrounded JL lower bound ``kappa * log(M * (p * 2**level) ** 3)``."""
    if modalities < 1:
        raise ValueError(f"modalities must be >= 1, got {modalities}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    volume_ratio = (patch_size * 2**level) ** 3
    return kappa * math.log(modalities * volume_ratio)


def jl_group_widths(
    modalities: int,
    patch_size: int = 4,
    levels: int = 4,
    kappa: float = DEFAULT_KAPPA,
    level_widths: list[int] | None = None,
) -> list[int]:
    """Minimum channels per group for each level, a power of two (``<4, 8, 8, 16>`` for M=2, p=4).

    When ``level_widths`` is given, each width is capped so that it divides the level width.
    """
    widths = []
    for level in range(levels):
        raw = jl_raw_width(modalities, patch_size, level, kappa)
        width = 1 << max(0, math.ceil(math.log2(raw)))
        if level_widths is not None:
            width = min(width, level_widths[level])
            while level_widths[level] % width:
                width //= 2
        widths.append(width)
    return widths
