"""RTSTRUCT output: a label map on a source series' grid as an RT Structure Set, for radiotherapy systems.

One ROI per non-background label of the checkpoint (named and coloured as the DICOM-SEG's segments),
``ROIGenerationAlgorithm`` AUTOMATIC, ``RTROIInterpretedType`` left empty (a person decides whether a
label is a GTV, an organ, ...) and ``ApprovalStatus`` UNAPPROVED. Per slice of the source series (the
CT for PET/CT) each ROI has CLOSED_PLANAR contours in patient coordinates (mm, LPS, from the slice's
ImagePositionPatient, ImageOrientationPatient and PixelSpacing), each referencing that slice's
SOPInstanceUID.

Contours follow the pixel edges (:mod:`.contours`): vertices on pixel corners, so filling them with
the even-odd rule at pixel centres gives back exactly the label map. **Holes** are separate contours
on the same slice (inner boundaries, running the other way round); a pixel is inside the ROI when it
is inside an odd number of the slice's contours of that ROI (even-odd / XOR), the usual reading of
nested contours in one plane. Diagonal neighbours touching
only at a corner are separate contours sharing that corner.

Patient and study attributes are copied from the source series as for the DICOM-SEG (highdicom's
``SOPClass``, whose documented use is sub-classing for an IOD it does not implement); none of their
values is logged.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .contours import mask_contours
from .seg import label_colour, segment_labels
from .series import quiet_pydicom

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: what an RT Referenced Study item names as its SOP class (Detached Study Management), as RT systems write it
STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
SERIES_NUMBER = 9002


def require_rt_libraries():
    """highdicom (and pydicom), or a one-line error saying how to install the DICOM extra."""
    from ..extras import require

    require(["pydicom", "highdicom"], "RTSTRUCT output", "dicom")
    import logging

    import highdicom

    logging.getLogger("highdicom").setLevel(logging.WARNING)
    return highdicom


def _ds(value: float) -> str:
    """A coordinate as a DICOM decimal string (at most 16 characters, 0.1 um or better in a body)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def slice_frame(header: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origin, column step and row step (LPS mm) of a slice: pixel (column i, row j) is at
    ``origin + i * column_step + j * row_step`` (DICOM PS3.3 C.7.6.2.1.1)."""
    origin = np.asarray([float(v) for v in header.ImagePositionPatient], dtype=np.float64)
    iop = np.asarray([float(v) for v in header.ImageOrientationPatient], dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    return origin, iop[:3] * column_spacing, iop[3:] * row_spacing


def slice_contour_data(mask: np.ndarray, header: Any) -> list[list[str]]:
    """The contours of ``mask`` (``(rows, columns)``) on the slice ``header`` as flat ``x\\y\\z`` lists (LPS mm)."""
    origin, column_step, row_step = slice_frame(header)
    out = []
    for polygon in mask_contours(mask):
        points = origin + polygon[:, :1] * column_step + polygon[:, 1:] * row_step
        out.append([_ds(float(v)) for v in points.ravel()])
    return out


def _item(**attributes: Any) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


@quiet_pydicom
def build_rtstruct(labels: np.ndarray, source_headers: Sequence[Any], label_names: Mapping[str, int],
                   description: str = "VeloxSeg segmentation", software_version: str = "") -> Any:
    """An RT Structure Set dataset of ``labels`` (``(columns, rows, slices)`` on the source grid).

    ``source_headers`` are the source series' datasets in slice order (as :class:`~.series.Volume`
    keeps them; pixel data not needed).
    """
    hd = require_rt_libraries()
    labels = np.asarray(labels)
    first = source_headers[0]
    rows, cols = int(first.Rows), int(first.Columns)
    if labels.shape != (cols, rows, len(source_headers)):
        raise InputError(f"label map of shape {labels.shape} does not fit the source series "
                         f"({cols} columns x {rows} rows x {len(source_headers)} slices)")
    try:
        ds = _structure_set(hd, first, description, software_version)
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        where = getattr(first, "filename", None) or "the source series"
        raise InputError(f"{where}: cannot build an RTSTRUCT from the source series' headers "
                         f"({type(err).__name__}: an invalid or missing attribute)") from None
    frame_uid = str(first.FrameOfReferenceUID)
    images = [_item(ReferencedSOPClassUID=h.SOPClassUID, ReferencedSOPInstanceUID=h.SOPInstanceUID)
              for h in source_headers]
    series = _item(SeriesInstanceUID=first.SeriesInstanceUID, ContourImageSequence=images)
    study = _item(ReferencedSOPClassUID=STUDY_REFERENCE_SOP_CLASS, ReferencedSOPInstanceUID=first.StudyInstanceUID,
                  RTReferencedSeriesSequence=[series])
    ds.ReferencedFrameOfReferenceSequence = [_item(FrameOfReferenceUID=frame_uid, RTReferencedStudySequence=[study])]
    from .. import __version__

    generator = f"VeloxSeg {software_version or __version__}"
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (value, name) in enumerate(segment_labels(label_names), start=1):
        ds.StructureSetROISequence.append(_item(
            ROINumber=number, ReferencedFrameOfReferenceUID=frame_uid, ROIName=name[:64],
            ROIGenerationAlgorithm="AUTOMATIC", ROIGenerationDescription=generator[:64]))
        contours = []
        for k, header in enumerate(source_headers):
            mask = labels[:, :, k].T == value  # (rows, columns), as the slice's pixels
            if not mask.any():
                continue
            for data in slice_contour_data(mask, header):
                contours.append(_item(
                    ContourImageSequence=[_item(ReferencedSOPClassUID=header.SOPClassUID,
                                                ReferencedSOPInstanceUID=header.SOPInstanceUID)],
                    ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(data) // 3,
                    ContourNumber=len(contours) + 1, ContourData=data))
        roi = _item(ReferencedROINumber=number, ROIDisplayColor=list(label_colour(value)))
        if contours:
            roi.ContourSequence = contours
        ds.ROIContourSequence.append(roi)
        ds.RTROIObservationsSequence.append(_item(
            ObservationNumber=number, ReferencedROINumber=number, ROIObservationLabel=name[:64],
            RTROIInterpretedType="", ROIInterpreter=""))
    return ds


def _structure_set(hd: Any, source: Any, description: str, software_version: str) -> Any:
    """The RTSTRUCT's patient, study, series, equipment, structure-set and approval attributes."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from .. import __version__

    now = dt.datetime.now()
    # patient/study values are copied element by element below, never passed through highdicom's
    # checks (which log an unusual patient name verbatim)
    ds = hd.SOPClass(study_instance_uid=source.StudyInstanceUID, series_instance_uid=generate_uid(),
                     series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), sop_class_uid=RTSTRUCT_SOP_CLASS,
                     instance_number=1, modality="RTSTRUCT", manufacturer="veloxseg",
                     transfer_syntax_uid=ExplicitVRLittleEndian, series_description=description[:64],
                     manufacturer_model_name="VeloxSeg", software_versions=software_version or __version__,
                     device_serial_number="0")
    ds.copy_patient_and_study_information(source)
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = source.FrameOfReferenceUID
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = "VELOXSEG"
    ds.StructureSetName = "VeloxSeg"
    ds.StructureSetDescription = description[:1024]
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def write_rtstruct(path: str | os.PathLike, labels: np.ndarray, source_headers: Sequence[Any],
                   label_names: Mapping[str, int], description: str = "VeloxSeg segmentation") -> Path:
    """Write ``labels`` as an RTSTRUCT to ``path`` atomically; returns the path."""
    from .seg import save_atomic

    return save_atomic(build_rtstruct(labels, source_headers, label_names, description), path)
