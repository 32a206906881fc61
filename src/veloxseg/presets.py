"""The paper's reference configurations (ARCHITECTURE.md, "Reference configurations")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A named configuration: network arguments plus the training patch size and voxel spacing."""

    name: str
    model: dict[str, Any]
    spacing: tuple[float, float, float]
    channel_names: tuple[str, ...] = field(default=())

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Training patch (crop) size, which is also the network's ``img_size``."""
        return tuple(self.model["img_size"])  # type: ignore[return-value]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The ``(1, C, D, H, W)`` input the paper's figures are measured at."""
        return (1, sum(self.model["in_channels"]), *self.patch_size)


PRESETS: dict[str, Preset] = {
    "autopet": Preset(
        "autopet",
        dict(in_channels=[1, 1], out_channels=2, img_size=(96, 96, 96), window_sizes=[3, 6, 3, 3]),
        spacing=(2.036, 2.036, 3.0), channel_names=("PET", "CT"),
    ),
    "hecktor": Preset(
        "hecktor",
        dict(in_channels=[1, 1], out_channels=2, img_size=(128, 128, 64),
             window_sizes=[(4, 4, 2), (8, 8, 4), (4, 4, 2), (4, 4, 2)]),
        spacing=(1.0, 1.0, 1.0), channel_names=("CT", "PET"),
    ),
    "brats": Preset(
        "brats",
        dict(in_channels=[4], out_channels=4, img_size=(96, 96, 96), window_sizes=[3, 6, 3, 3]),
        spacing=(1.0, 1.0, 1.0), channel_names=("FLAIR", "T1", "T1c", "T2"),
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name, with an error that lists the known ones."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
