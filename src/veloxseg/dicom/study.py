"""A study's series matched to a model's channels, read, converted (PET to SUV) and put on one grid.

Channels are matched to series by modality, from the channel names a checkpoint carries: ``CT`` ->
CT, ``PET``/``PT``/``SUV`` -> PT (PET), MRI sequence names (``T1``, ``T2``, ``FLAIR``, ...) -> MR. A
study folder can be matched when each channel names a different modality; otherwise (several MRI
sequences) give one series folder per channel, in the checkpoint's order.

All channels end on one grid: the CT's when there is a CT channel (PET/CT), else the first
channel's; the others are resampled onto it through their affines (linear; PET outside its field of
view is 0, CT outside its field of view -1000 HU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .resample import resample_to_grid, same_grid
from .series import SeriesRef, Volume, find_series, load_series

log = logging.getLogger(__name__)

MR_NAMES: tuple[str, ...] = ("MR", "MRI", "T1", "T1C", "T1CE", "T1GD", "T2", "FLAIR", "T2FLAIR", "ADC", "DWI", "PD")
#: what PET values a checkpoint was trained on (its plan's ``pet_units``; absent means SUVbw)
PET_UNITS: tuple[str, ...] = ("SUVbw", "BQML")
FILL_VALUE: dict[str, float] = {"CT": -1000.0}


def channel_modality(name: str) -> str | None:
    """The DICOM Modality a channel name stands for (``CT``, ``PT``, ``MR``), or ``None`` if unknown."""
    n = name.strip().upper().replace("-", "").replace("_", "").replace(" ", "")
    if n.startswith("CT"):
        return "CT"
    if n.startswith("PET") or n in ("PT", "SUV"):
        return "PT"
    if n in MR_NAMES or n.startswith("MR"):
        return "MR"
    return None


def reference_channel(channel_names: Sequence[str]) -> int:
    """The channel whose grid the others are resampled onto: the CT channel if any, else the first."""
    for i, name in enumerate(channel_names):
        if channel_modality(name) == "CT":
            return i
    return 0


@dataclass(frozen=True)
class DicomStudy:
    """The image series of one study (StudyInstanceUID) under a folder, and a name for its case."""

    name: str
    folder: Path
    uid: str
    series: tuple[SeriesRef, ...]


def _safe_name(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-." else "_" for c in text).strip("._")
    return out or "study"


def find_studies(folder: str | os.PathLike) -> list[DicomStudy]:
    """The studies under ``folder``: one when all its series share a StudyInstanceUID, else one per study.

    A study's case name is its folder's name (the deepest folder holding all its files, relative
    to ``folder``, parts joined by ``_``); ``folder``'s own name when the study fills it.
    """
    folder = Path(folder)
    series = find_series(folder)
    by_study: dict[str, list[SeriesRef]] = {}
    for s in series:
        by_study.setdefault(s.study_uid, []).append(s)
    studies, used = [], set()
    for uid, members in sorted(by_study.items(), key=lambda kv: str(min(s.folder for s in kv[1]))):
        common = Path(os.path.commonpath([str(s.folder) for s in members]))
        rel = common.relative_to(folder) if common != folder and folder in common.parents else Path()
        name = _safe_name("_".join(rel.parts)) if rel.parts else _safe_name(folder.resolve().name)
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        studies.append(DicomStudy(name, common, uid, tuple(members)))
    return studies


def _candidates(series: Sequence[SeriesRef], modality: str) -> list[SeriesRef]:
    return [s for s in series if s.modality == modality and not s.is_localizer]


def match_channels(series: Sequence[SeriesRef], channel_names: Sequence[str], where: str | Path) -> list[SeriesRef]:
    """One series per channel, in channel order, chosen by modality; one-line errors when it is ambiguous."""
    wanted = [channel_modality(c) for c in channel_names]
    unknown = [c for c, m in zip(channel_names, wanted) if m is None]
    if unknown:
        raise InputError(f"{where}: cannot tell which DICOM modality channel {unknown[0]!r} is; give one series "
                         f"folder per channel, in the order {', '.join(channel_names)}")
    repeated = sorted({m for m in wanted if wanted.count(m) > 1})  # type: ignore[type-var]
    if repeated:
        names = [c for c, m in zip(channel_names, wanted) if m == repeated[0]]
        raise InputError(f"{where}: channels {', '.join(names)} are all {repeated[0]} series; give one series "
                         f"folder per channel, in the order {', '.join(channel_names)}")
    chosen = []
    for name, modality in zip(channel_names, wanted):
        found = _candidates(series, modality)  # type: ignore[arg-type]
        if not found:
            have = sorted({s.modality for s in series}) or ["none"]
            raise InputError(f"{where}: no {modality} series for channel {name} (found modalities: "
                             f"{', '.join(have)})")
        if len(found) > 1:
            raise InputError(f"{where}: {len(found)} {modality} series for channel {name} ("
                             f"{'; '.join(s.label for s in found[:3])}); keep one per modality, or give one "
                             f"series folder per channel")
        chosen.append(found[0])
    return chosen


def series_of_folder(folder: str | os.PathLike, channel_name: str) -> SeriesRef:
    """The one image series of a series folder given for ``channel_name`` (checked against its modality)."""
    found = [s for s in find_series(folder) if not s.is_localizer and s.modality not in ("SEG", "RTSTRUCT", "SR")]
    if not found:
        raise InputError(f"{folder}: no image series for channel {channel_name}")
    if len(found) > 1:
        raise InputError(f"{folder}: {len(found)} image series ({'; '.join(s.label for s in found[:3])}); give "
                         f"one folder per series for channel {channel_name}")
    expected = channel_modality(channel_name)
    if expected is not None and found[0].modality != expected:
        raise InputError(f"{found[0].label}: channel {channel_name} needs a {expected} series, this one is "
                         f"{found[0].modality or 'without Modality'}")
    return found[0]


@dataclass
class ChannelVolumes:
    """A case's channels as volumes on one grid (the reference channel's), with what was done to them."""

    volumes: list[Volume]
    reference: int
    notes: list[str] = field(default_factory=list)


def load_channels(series: Sequence[SeriesRef], channel_names: Sequence[str], pet_units: str = "SUVbw") -> ChannelVolumes:
    """Read one series per channel, convert PET to ``pet_units``, resample all onto the reference grid."""
    from .suv import to_suv

    if pet_units not in PET_UNITS:
        raise InputError(f"PET units {pet_units!r} of the model are not supported ({', '.join(PET_UNITS)})")
    volumes, notes = [], []
    for name, s in zip(channel_names, series):
        vol = load_series(s)
        if s.modality == "PT":
            if pet_units == "SUVbw":
                to_suv(vol)
            elif vol.units.upper() != "BQML":
                raise InputError(f"{s.label}: the model takes PET in Bq/mL, this series has Units "
                                 f"{vol.units or '(missing)'}")
            notes.append(f"{name}: PET in {vol.units} from the DICOM header")
        volumes.append(vol)
    ref = reference_channel(channel_names)
    target = volumes[ref]
    for name, vol in zip(channel_names, volumes):
        if vol is target or same_grid(vol.array.shape, vol.affine, target.array.shape, target.affine):
            continue
        vol.array = resample_to_grid(vol.array, vol.affine, target.array.shape, target.affine,
                                     fill=FILL_VALUE.get(vol.series.modality, 0.0))
        vol.affine = target.affine.copy()
        notes.append(f"{name}: resampled onto the {channel_names[ref]} grid (linear)")
    return ChannelVolumes(volumes, ref, notes)
