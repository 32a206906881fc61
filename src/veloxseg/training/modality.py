"""Modality dropout (``veloxseg train --modality-dropout P``): train a model that still segments with a channel missing.

Per sample, each input channel group is zeroed (after normalisation) with probability ``P``, never
all of them: when every group of a sample is drawn, one of them, chosen at random, is kept. A group
is a modality block of one channel (PET, CT), or one channel of a multi-channel block (BraTS's MRI
sequences form one block, each sequence is its own group), so today every channel is a group of its
own; the blocks still matter for the teachers: a block's texture teacher (its Gram term) counts for a
sample while any of the block's channels is present, and the reconstruction term only counts the
present channels (:meth:`veloxseg.losses.VeloxSegLoss.presence`).

The probability and the groups are recorded in the plan (``plan["modality_dropout"]``,
``plan["modality_groups"]``), so every checkpoint and export says whether the model may be used
with a channel absent; ``veloxseg predict`` then zeroes that channel after normalisation, as here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def channel_groups(in_channels: Sequence[int]) -> list[list[int]]:
    """Channel indices dropped together: a one-channel block alone, each channel of a larger (MRI) block alone."""
    groups, start = [], 0
    for size in in_channels:
        groups.extend([[start + i] for i in range(size)])
        start += size
    return groups


def block_of_channel(in_channels: Sequence[int]) -> list[int]:
    """For each input channel, the index of its modality block."""
    return [m for m, size in enumerate(in_channels) for _ in range(size)]


def draw_keep(batch: int, groups: Sequence[Sequence[int]], probability: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Which channels each sample keeps, ``(batch, channels)`` bool: each group dropped with ``probability``,
    never all groups of a sample."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"modality dropout must be in [0, 1), got {probability}")
    n = len(groups)
    keep_groups = torch.rand(batch, n, generator=generator) >= probability
    none = torch.nonzero(~keep_groups.any(1)).flatten()
    if len(none):
        keep_groups[none, torch.randint(n, (len(none),), generator=generator)] = True
    channels = 1 + max(c for g in groups for c in g)
    keep = torch.zeros(batch, channels, dtype=torch.bool)
    for g, chans in enumerate(groups):
        keep[:, list(chans)] = keep_groups[:, g:g + 1]
    return keep


def blocks_present(keep: torch.Tensor, in_channels: Sequence[int]) -> torch.Tensor:
    """``(batch, blocks)`` bool: a block is present while any of its channels is kept."""
    owner = block_of_channel(in_channels)
    return torch.stack([keep[:, [c for c, b in enumerate(owner) if b == m]].any(1) for m in range(len(in_channels))],
                       dim=1)


def drop_channels(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``image`` ``(B, C, ...)`` with the channels not kept set to zero."""
    return image * keep.to(image.device, image.dtype).view(*keep.shape, *(1,) * (image.dim() - 2))
