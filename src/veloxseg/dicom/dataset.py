"""A folder of DICOM studies turned into an nnU-Net v2 raw dataset (``veloxseg dataset-from-dicom``).

Each study (StudyInstanceUID; see :func:`~.study.find_studies`) becomes one case ``<prefix>_<NNN>``
(numbered in the order of the study folders: no patient identifier reaches a file name): its
channels converted exactly as ``veloxseg predict`` converts them (PET to SUVbw, all on the CT grid),
written as ``imagesTr/<case>_<XXXX>.nii.gz`` when the study has a label, else ``imagesTs/``.

Labels come from a DICOM-SEG inside the study (Modality SEG, referencing the reference series: the
CT of a PET/CT; segment ``n`` becomes label ``n``), or from ``--labels LABELS_DIR`` holding
``<study name>.nii.gz`` on the reference series' grid (the study name as ``find_studies`` gives it:
the study's folder name). ``study_to_case.csv`` maps each study folder and StudyInstanceUID to its
case: keep it with the data, not with the dataset you share.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .study import DicomStudy, find_studies, load_channels, match_channels

log = logging.getLogger(__name__)

MAPPING_FILE = "study_to_case.csv"


@dataclass
class ConversionSummary:
    """What a conversion wrote: cases with and without labels, and skipped studies with the reason."""

    output: Path
    training: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)


def _segmentations(study: DicomStudy) -> list:
    return [s for s in study.series if s.modality == "SEG"]


def _segment_names(seg_file: Path) -> list[str]:
    from .seg import require_highdicom

    hd = require_highdicom()
    seg = hd.seg.segread(str(seg_file))
    return [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]


def study_label(study: DicomStudy, reference, labels_dir: Path | None) -> tuple[np.ndarray | None, str]:
    """The label map of ``study`` on its reference grid (or ``None``) and where it came from."""
    from ..io import read_nifti
    from .seg import read_segmentation_labels

    if labels_dir is not None:
        for suffix in (".nii.gz", ".nii"):
            path = labels_dir / f"{study.name}{suffix}"
            if path.is_file():
                data, affine = read_nifti(path, dtype=np.float32)
                if data.shape != reference.array.shape or not np.allclose(affine, reference.affine, atol=1e-3):
                    raise InputError(f"{path}: label map is not on the grid of {reference.series.label} "
                                     f"(shape {data.shape} vs {reference.array.shape}, or a different affine)")
                if np.any(data < 0) or np.any(data != np.round(data)):
                    raise InputError(f"{path}: a label map must hold non-negative integers")
                return data.astype(np.uint8), path.name
    segs = _segmentations(study)
    if len(segs) > 1:
        raise InputError(f"{study.folder}: {len(segs)} DICOM-SEG series in one study; keep the one with the labels")
    if segs:
        if len(segs[0].files) != 1:
            raise InputError(f"{segs[0].label}: a DICOM-SEG series of {len(segs[0].files)} files; one is supported")
        return read_segmentation_labels(segs[0].files[0], reference.headers), f"DICOM-SEG {segs[0].files[0].name}"
    return None, ""


def convert_studies(studies_dir: str | os.PathLike, output: str | os.PathLike, channel_names: Sequence[str],
                    labels_dir: str | os.PathLike | None = None, label_names: Sequence[str] | None = None,
                    prefix: str = "case", skip_invalid: bool = False, pet_units: str = "SUVbw") -> ConversionSummary:
    """Convert every study under ``studies_dir`` into the nnU-Net raw dataset ``output`` (see module doc).

    ``output`` must not hold a ``dataset.json`` yet (nothing is overwritten). With ``skip_invalid``
    a study that cannot be converted is logged (one line) and listed in the CSV; otherwise its
    error stops the conversion.
    """
    from ..io import write_nifti
    from .resample import same_grid

    output = Path(output)
    if (output / "dataset.json").exists():
        raise InputError(f"{output}: already holds a dataset.json; choose a new dataset folder")
    if not prefix or not all(c.isalnum() or c in "-" for c in prefix):
        raise InputError(f"--prefix {prefix!r}: use letters, digits and '-' only")
    lab_dir = Path(labels_dir) if labels_dir is not None else None
    if lab_dir is not None and not lab_dir.is_dir():
        raise InputError(f"{lab_dir}: labels folder does not exist")
    studies = find_studies(studies_dir)
    summary = ConversionSummary(output)
    rows: list[list[str]] = []
    names = list(label_names) if label_names else []
    for index, study in enumerate(studies):
        case = f"{prefix}_{index:03d}"
        where = Path(studies_dir) if len(studies) == 1 else study.folder
        try:
            chosen = match_channels(study.series, channel_names, where)
            loaded = load_channels(chosen, channel_names, pet_units)
            reference = loaded.volumes[loaded.reference]
            label, source = study_label(study, reference, lab_dir)
        except InputError as err:
            if not skip_invalid:
                raise
            log.warning("skipped: %s", err)
            summary.skipped.append((study.name, str(err)))
            rows.append(["", "skipped", _relative(study.folder, studies_dir), study.uid, str(err)])
            continue
        if label is not None and not names:
            names = _segment_names(_segmentations(study)[0].files[0]) if source.startswith("DICOM-SEG") else ["lesion"]
        if label is not None and int(label.max()) > len(names):
            raise InputError(f"{study.folder}: label value {int(label.max())} but only {len(names)} label "
                             f"name(s) ({', '.join(names)}); give --label-names")
        split = "Tr" if label is not None else "Ts"
        for c, vol in enumerate(loaded.volumes):
            assert same_grid(vol.array.shape, vol.affine, reference.array.shape, reference.affine)
            write_nifti(output / f"images{split}" / f"{case}_{c:04d}.nii.gz", vol.array, vol.affine)
        if label is not None:
            write_nifti(output / "labelsTr" / f"{case}.nii.gz", label, reference.affine, dtype=np.uint8)
            summary.training.append(case)
        else:
            summary.test.append(case)
        rows.append([case, split, _relative(study.folder, studies_dir), study.uid, source or "no label"])
    if not summary.training and not summary.test:
        raise InputError(f"{studies_dir}: no study could be converted")
    summary.label_names = names or ["lesion"]
    _write_dataset_json(output, channel_names, summary, pet_units)
    _write_mapping(output / MAPPING_FILE, rows)
    return summary


def _relative(folder: Path, root: str | os.PathLike) -> str:
    try:
        return str(Path(folder).relative_to(Path(root))) or "."
    except ValueError:
        return str(folder)


def _write_dataset_json(output: Path, channel_names: Sequence[str], summary: ConversionSummary, pet_units: str) -> None:
    from ..evaluation import atomic_write_text

    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(summary.label_names)}}
    meta = {"channel_names": {str(i): name for i, name in enumerate(channel_names)}, "labels": labels,
            "numTraining": len(summary.training), "file_ending": ".nii.gz", "name": output.name,
            "description": "converted from DICOM by veloxseg dataset-from-dicom", "pet_units": pet_units}
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "dataset.json", json.dumps(meta, indent=2) + "\n")


def _write_mapping(path: Path, rows: list[list[str]]) -> None:
    from ..evaluation import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "split", "study_folder", "study_instance_uid", "labels"])
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
