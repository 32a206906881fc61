"""DICOM input of ``veloxseg predict``: studies and series folders turned into ordinary cases.

Each DICOM case is converted once into uncompressed NIfTI files, one per channel on the reference
grid, in a work folder the caller owns and removes (``veloxseg predict`` uses a temporary folder
removed when the run ends, also on an error or Ctrl-C); the predictor then reads them exactly as it
reads a user's NIfTI files, so both paths give the same labels for the same voxels and geometry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inference.cases import Case
from .series import SeriesRef, contains_dicom
from .study import find_studies, load_channels, match_channels, series_of_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DicomCase(Case):
    """A case read from DICOM: its converted channel files plus the source it came from."""

    reference_series: SeriesRef | None = field(default=None, compare=False)
    reference_headers: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    notes: tuple[str, ...] = field(default=(), compare=False)


def is_dicom_input(inputs: Sequence[str | os.PathLike]) -> bool:
    """True when ``-i`` names folders of DICOM files: one study folder, or one series folder per channel.

    A single folder counts as DICOM only when it holds no NIfTI file at its top level.
    """
    paths = [Path(p) for p in inputs]
    if not paths or not all(p.is_dir() for p in paths):
        return False
    if len(paths) == 1 and any(q.name.endswith((".nii", ".nii.gz")) for q in paths[0].iterdir()):
        return False
    return all(contains_dicom(p) for p in paths)


def _case_name(folders: Sequence[Path]) -> str:
    parents = {p.resolve().parent for p in folders}
    base = parents.pop().name if len(parents) == 1 else folders[0].resolve().name
    return "".join(c if c.isalnum() or c in "-." else "_" for c in base).strip("._") or "case"


def convert_case(name: str, series: Sequence[SeriesRef], channel_names: Sequence[str], workdir: Path,
                 pet_units: str = "SUVbw") -> DicomCase:
    """Read ``series`` (one per channel) and write them as ``workdir/<name>/<name>_XXXX.nii``."""
    from ..io import write_nifti

    log.info("%s: reading %s", name, "; ".join(f"{c}: {s.label}" for c, s in zip(channel_names, series)))
    loaded = load_channels(series, channel_names, pet_units)
    folder = workdir / name
    paths = []
    for c, vol in enumerate(loaded.volumes):
        paths.append(write_nifti(folder / f"{name}_{c:04d}.nii", vol.array, vol.affine))
    ref = loaded.volumes[loaded.reference]
    for note in loaded.notes:
        log.info("%s: %s", name, note)
    return DicomCase(name, tuple(paths), reference_series=ref.series, reference_headers=tuple(ref.headers),
                     notes=tuple(loaded.notes))


def cases_from_dicom(inputs: Sequence[str | os.PathLike], channel_names: Sequence[str], workdir: str | os.PathLike,
                     pet_units: str = "SUVbw") -> list[DicomCase]:
    """The cases of DICOM ``-i``: a folder of one or more studies, or one series folder per channel.

    A study folder is matched to the channels by modality (:func:`~.study.match_channels`); a
    list of series folders must be in the checkpoint's channel order. Every series is read and
    checked here, before any prediction starts.
    """
    workdir = Path(workdir)
    paths = [Path(p) for p in inputs]
    if len(paths) == 1:
        studies = find_studies(paths[0])
        cases = []
        for study in studies:
            where = study.folder if len(studies) > 1 else paths[0]
            chosen = match_channels(study.series, channel_names, where)
            cases.append(convert_case(study.name, chosen, channel_names, workdir, pet_units))
        return cases
    if len(paths) != len(channel_names):
        raise InputError(f"{paths[0]}: got {len(paths)} series folder(s), the model takes {len(channel_names)} "
                         f"({', '.join(channel_names)}), one series folder per channel in this order")
    chosen = [series_of_folder(p, c) for p, c in zip(paths, channel_names)]
    return [convert_case(_case_name(paths), chosen, channel_names, workdir, pet_units)]
