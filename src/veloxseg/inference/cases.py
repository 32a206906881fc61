"""Finding the cases to predict and checking their files before any work starts.

A folder holds nnU-Net-style files ``<case>_<XXXX>.nii.gz`` (``XXXX`` the channel index, four
digits). A single case can also be given as one file per channel, in the training order. DICOM
folders (a study, or one series folder per channel) are recognised and converted
(:mod:`veloxseg.dicom.cases`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    """One case: its identifier and one file per channel, in channel order.

    ``missing`` lists the channel indices without a file (only for a model trained with modality
    dropout, :mod:`.missing`); ``channels`` then holds the present channels' files, in order.
    """

    name: str
    channels: tuple[Path, ...]
    missing: tuple[int, ...] = ()


def _strip_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _describe(channel_names: Sequence[str]) -> str:
    return f"{len(channel_names)} ({', '.join(channel_names)})" if channel_names else str(len(channel_names))


def cases_from_folder(folder: str | os.PathLike, channel_names: Sequence[str], allow_missing: bool = False) -> list[Case]:
    """The cases of an nnU-Net-style folder, sorted by name, each with exactly the expected channels.

    Raises :class:`InputError` naming the file or case for a NIfTI file that does not follow the
    naming, a missing channel file (unless ``allow_missing``: a model trained with modality dropout;
    the case then lists it in ``missing``), or a case with more channels than the model takes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: input folder does not exist" if not folder.exists() else f"{folder}: not a folder")
    found: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(NIFTI_SUFFIXES):
            continue
        m = CHANNEL_FILE.match(p.name)
        if not m:
            raise InputError(f"{p}: not named <case>_<channel>.nii.gz (e.g. {_strip_suffix(p.name)}_0000.nii.gz)")
        chans = found.setdefault(m["case"], {})
        if int(m["channel"]) in chans:
            raise InputError(f"{chans[int(m['channel'])]} and {p.name}: two files for one channel of case "
                             f"{m['case']}; keep one")
        chans[int(m["channel"])] = p
    if not found:
        raise InputError(f"{folder}: no input files <case>_0000.nii.gz found")
    n = len(channel_names)
    cases = []
    for name in sorted(found):
        chans = found[name]
        extra = sorted(c for c in chans if c >= n)
        if extra:
            raise InputError(f"{chans[extra[0]]}: case {name} has {max(chans) + 1} channel files, the model "
                             f"takes {_describe(channel_names)}")
        absent = tuple(c for c in range(n) if c not in chans)
        if absent and not allow_missing:
            from .missing import not_trained_message

            c = absent[0]
            some = next(iter(chans.values()))
            suffix = ".nii.gz" if some.name.endswith(".nii.gz") else ".nii"
            raise InputError(not_trained_message(f"{folder / f'{name}_{c:04d}{suffix}'}: channel file missing for "
                                                 f"case {name} (channel {c}, {channel_names[c]})"))
        cases.append(Case(name, tuple(chans[c] for c in range(n) if c in chans), absent))
    return cases


def case_from_files(files: Sequence[str | os.PathLike], channel_names: Sequence[str]) -> Case:
    """One case given as one file per channel; its name is the first file's without ``_0000`` and suffix."""
    paths = tuple(Path(f) for f in files)
    if len(paths) != len(channel_names):
        raise InputError(f"{paths[0] if paths else '<no input>'}: got {len(paths)} channel file(s), the model "
                         f"takes {_describe(channel_names)}, one file per channel in this order")
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: channel file missing")
        if p.is_dir():
            raise InputError(f"{p}: is a folder; give a folder alone, or one file per channel")
    first = _strip_suffix(paths[0].name)
    m = re.match(r"^(.+)_\d{4}$", first)
    return Case(m.group(1) if m else first, paths)


def resolve_input(inputs: Sequence[str | os.PathLike], channel_names: Sequence[str],
                  dicom_workdir: str | os.PathLike | None = None, pet_units: str = "SUVbw",
                  allow_missing: bool = False) -> list[Case]:
    """``-i`` of ``veloxseg predict``: one folder of cases (``allow_missing``: channel files may be absent,
    see :mod:`.missing`), or one case's channel files.

    DICOM input (a study folder, or one series folder per channel; :mod:`veloxseg.dicom.cases`) is
    converted into NIfTI files under ``dicom_workdir``, which the caller creates and removes.
    """
    from ..dicom.cases import is_dicom_input

    if is_dicom_input(inputs):
        if dicom_workdir is None:
            raise ValueError("DICOM input needs dicom_workdir: a folder for the converted channels")
        from ..dicom.cases import cases_from_dicom

        return list(cases_from_dicom(inputs, channel_names, dicom_workdir, pet_units))
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return cases_from_folder(inputs[0], channel_names, allow_missing)
    if len(inputs) == 1 and not Path(inputs[0]).exists():
        raise InputError(f"{inputs[0]}: input missing (give a folder of cases, or one file per channel)")
    return [case_from_files(inputs, channel_names)]


def select_part(cases: Sequence[Case], num_parts: int = 1, part_id: int = 0) -> list[Case]:
    """This process's share of ``cases`` (sorted by name): every ``num_parts``-th from ``part_id`` (nnU-Net)."""
    if num_parts < 1:
        raise ValueError(f"--num-parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in [0, {num_parts - 1}], got {part_id}")
    return list(sorted(cases, key=lambda c: c.name))[part_id::num_parts]
