"""Writing a volume as a DICOM series (one file per slice): the synthetic studies of the DICOM demo
(``veloxseg demo-data --dicom``) and of the tests, the inverse of :func:`~.series.load_series`.

The series carries no real person: the patient is "VeloxSeg^Phantom" with a made-up ID. CT is
stored as int16 with RescaleSlope/Intercept (HU = stored x slope + intercept); PET as int16 with a
per-slice RescaleSlope, in Bq/mL (Units BQML) with the tags body-weight SUV needs, or with the
Philips convention (Units CNTS and the private scale factors).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .series import LPS_TO_RAS, require_pydicom

SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "PT": "1.2.840.10008.5.1.4.1.1.128",
             "MR": "1.2.840.10008.5.1.4.1.1.4"}
#: F-18 half-life (s), as scanners write it
F18_HALF_LIFE_S = 6586.2


@dataclass
class PetDose:
    """The tags body-weight SUV needs: weight (kg), injected dose (Bq), times, decay correction."""

    weight_kg: float = 75.0
    dose_bq: float = 3.5e8
    half_life_s: float = F18_HALF_LIFE_S
    injection: dt.datetime = dt.datetime(2024, 1, 15, 9, 0, 0)
    series_start: dt.datetime = dt.datetime(2024, 1, 15, 10, 0, 0)
    decay_correction: str = "START"
    full_datetime: bool = True  # RadiopharmaceuticalStartDateTime, else StartTime only

    def suv_factor(self) -> float:
        """``weight (g) / decayed dose (Bq)``: Bq/mL times this is SUVbw (the QIBA formula, by hand)."""
        elapsed = (self.series_start - self.injection).total_seconds()
        decayed = self.dose_bq * (0.5 ** (elapsed / self.half_life_s) if self.decay_correction == "START" else 1.0)
        return self.weight_kg * 1000.0 / decayed


@dataclass
class SeriesSpec:
    """What to write: modality, identifiers, and how values are stored."""

    modality: str
    study_uid: str
    frame_of_reference_uid: str
    description: str = ""
    series_number: int = 1
    series_uid: str = ""
    slope: float | None = 1.0  # None: one slope per slice from the slice's range (PET style)
    intercept: float = 0.0
    units: str = ""
    pet: PetDose | None = None
    philips: Mapping[str, float] = field(default_factory=dict)  # {"suv": ..., "activity": ...} for Units CNTS
    transfer_syntax: str = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    patient_id: str = "PHANTOM-0001"


def _fmt(value: float) -> str:
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def stored_values(values: np.ndarray, slope: float | None, intercept: float) -> tuple[np.ndarray, float]:
    """int16 stored values and the slope that gives back ``values`` (``stored x slope + intercept``)."""
    if slope is None:
        peak = float(np.abs(values - intercept).max())
        slope = float(_fmt(peak / 32000.0)) if peak > 0 else 1.0
    stored = np.clip(np.round((values - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, slope


def write_series(folder: str | os.PathLike, array: np.ndarray, affine: np.ndarray, spec: SeriesSpec,
                 slices: Sequence[int] | None = None, positions: Sequence[np.ndarray] | None = None) -> list[Path]:
    """Write ``array`` (``(columns, rows, slices)``, RAS ``affine``) as one DICOM file per slice.

    ``slices`` picks which slices to write (the tests drop one); ``positions`` overrides each
    written slice's ImagePositionPatient (LPS, mm) to make a tilted or unevenly spaced series.
    Returns the written paths.
    """
    pydicom = require_pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    col_spacing, row_spacing = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    iop = [*(col_step / col_spacing), *(row_step / row_spacing)]
    series_uid = spec.series_uid or generate_uid()
    when = spec.pet.series_start if spec.pet else dt.datetime(2024, 1, 15, 9, 30, 0)
    paths = []
    indices = list(range(array.shape[2])) if slices is None else list(slices)
    for n, k in enumerate(indices):
        stored, slope = stored_values(np.asarray(array[:, :, k], dtype=np.float64).T, spec.slope, spec.intercept)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(SOP_CLASS[spec.modality])
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "VeloxSeg^Phantom", spec.patient_id, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = spec.study_uid, series_uid
        ds.FrameOfReferenceUID = spec.frame_of_reference_uid
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = spec.modality, spec.description, spec.series_number
        ds.InstanceNumber = n + 1
        ds.Manufacturer = "veloxseg synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [_fmt(v) for v in iop]
        pos = positions[n] if positions is not None else lps[:3, 3] + k * slice_step
        ds.ImagePositionPatient = [_fmt(float(v)) for v in pos]
        ds.SliceThickness = _fmt(float(np.linalg.norm(slice_step)))
        ds.PixelSpacing = [_fmt(row_spacing), _fmt(col_spacing)]
        ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = _fmt(slope), _fmt(spec.intercept)
        if spec.modality == "CT":
            ds.RescaleType = "HU"
        if spec.units:
            ds.Units = spec.units
        if spec.pet is not None:
            _pet_tags(ds, spec.pet, len(indices))
        for key, value in spec.philips.items():
            block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
            block.add_new({"suv": 0x00, "activity": 0x09}[key], "DS", _fmt(value))
        ds.PixelData = stored.tobytes()
        if spec.transfer_syntax != "1.2.840.10008.1.2.1":
            ds.compress(UID(spec.transfer_syntax))
        path = folder / f"{spec.modality}_{n + 1:04d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def _pet_tags(ds: Any, pet: PetDose, n_slices: int) -> None:
    import pydicom

    ds.DecayCorrection = pet.decay_correction
    ds.CorrectedImage = ["DECY", "ATTN"]
    ds.NumberOfSlices = n_slices
    ds.PatientWeight = _fmt(pet.weight_kg)
    item = pydicom.Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    item.RadionuclideTotalDose = _fmt(pet.dose_bq)
    item.RadionuclideHalfLife = _fmt(pet.half_life_s)
    item.RadiopharmaceuticalStartTime = pet.injection.strftime("%H%M%S")
    if pet.full_datetime:
        item.RadiopharmaceuticalStartDateTime = pet.injection.strftime("%Y%m%d%H%M%S")
    ds.RadiopharmaceuticalInformationSequence = [item]


def new_study_uids() -> tuple[str, str]:
    """A fresh StudyInstanceUID and FrameOfReferenceUID."""
    from pydicom.uid import generate_uid

    require_pydicom()
    return generate_uid(), generate_uid()


def write_pet_ct_study(folder: str | os.PathLike, ct_hu: np.ndarray, ct_affine: np.ndarray, pet_suv: np.ndarray,
                       pet_affine: np.ndarray, dose: PetDose | None = None, label: np.ndarray | None = None,
                       label_names: Mapping[str, int] | None = None, patient_id: str = "PHANTOM-0001",
                       pet_slope: float | None = None) -> Path:
    """A PET/CT study: ``CT/`` (HU, intercept -1024), ``PET/`` (Bq/mL from SUV with ``dose``'s tags;
    one RescaleSlope per slice unless ``pet_slope`` is given) and, with ``label`` (on the CT grid),
    ``SEG/`` (a DICOM-SEG referencing the CT). Returns ``folder``."""
    from .seg import write_segmentation
    from .series import find_series, load_series

    folder = Path(folder)
    dose = dose or PetDose()
    study, frame = new_study_uids()
    write_series(folder / "CT", ct_hu, ct_affine, SeriesSpec("CT", study, frame, "CT 3mm", 2, intercept=-1024.0,
                                                             patient_id=patient_id))
    write_series(folder / "PET", np.asarray(pet_suv, dtype=np.float64) / dose.suv_factor(), pet_affine,
                 SeriesSpec("PT", study, frame, "PET AC", 3, slope=pet_slope, units="BQML", pet=dose,
                            patient_id=patient_id))
    if label is not None:
        ct = load_series(find_series(folder / "CT")[0])
        (folder / "SEG").mkdir(exist_ok=True)
        write_segmentation(folder / "SEG" / "labels.dcm", np.asarray(label), ct.headers,
                           label_names or {"background": 0, "lesion": 1}, "reference labels")
    return folder


def write_demo_studies(out: str | os.PathLike, cases: int = 4, seed: int = 0, test_cases: int = 0) -> Path:
    """The demo phantoms (:mod:`veloxseg.data.demo`) as DICOM PET/CT studies (``veloxseg demo-data --dicom``).

    ``train/study_NNN/`` hold CT, PET (Bq/mL with the SUV tags) and SEG (the lesions, a DICOM-SEG
    on the CT); ``test/study_NNN/`` hold CT and PET only, their reference labels as NIfTI on the
    CT grid in ``test_labels/study_NNN.nii.gz``. Returns ``out``.
    """
    from ..data.demo import make_case
    from ..io import write_nifti

    out = Path(out)
    for i in range(cases + test_cases):
        ct, pet, label, affine = make_case(seed * 100_003 + i)
        name = f"study_{i:03d}"
        train = i < cases
        write_pet_ct_study(out / ("train" if train else "test") / name, ct, affine, pet, affine,
                           label=label if train else None, patient_id=f"DEMO-{i:04d}")
        if not train:
            write_nifti(out / "test_labels" / f"{name}.nii.gz", label, affine, dtype=np.uint8)
    return out
