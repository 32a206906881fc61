"""DICOM-SEG output: a label map on a source series' grid written with highdicom.

The segmentation references the source series (the CT for PET/CT), one BINARY segment per
non-background label of the checkpoint, named after the label, with a fixed colour per label
number; empty frames are left out. Viewers (3D Slicer, OHIF, ...) place it on the source series.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, VeloxSegError
from ..io import atomic_path
from .series import quiet_pydicom

#: display colours (RGB) of labels 1, 2, 3, ... (repeating): red, green, blue, yellow, cyan, magenta, orange
LABEL_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 40, 40), (40, 200, 60), (50, 90, 230), (240, 220, 40), (40, 210, 220), (210, 60, 210), (250, 140, 30))
SERIES_NUMBER = 9001


def require_highdicom():
    """The highdicom module, or a one-line error saying how to install the DICOM extra.

    highdicom logs every module it copies at INFO, with the study's UID: its logger is set to WARNING.
    """
    try:
        import highdicom
    except ImportError:
        raise VeloxSegError("DICOM-SEG output needs highdicom: pip install 'veloxseg[dicom]'") from None
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    return highdicom


def label_colour(value: int) -> tuple[int, int, int]:
    """The display colour (RGB) of label ``value`` (1-based)."""
    return LABEL_COLOURS[(int(value) - 1) % len(LABEL_COLOURS)]


def segment_labels(labels: Mapping[str, int]) -> list[tuple[int, str]]:
    """``(label value, name)`` of the segments: the checkpoint's non-background labels in value order."""
    out = sorted((int(v), str(k)) for k, v in labels.items() if int(v) > 0)
    return out or [(1, "foreground")]


@quiet_pydicom
def build_segmentation(labels: np.ndarray, source_headers: Sequence[Any], label_names: Mapping[str, int],
                       description: str = "VeloxSeg segmentation", software_version: str = "") -> Any:
    """A ``highdicom.seg.Segmentation`` of ``labels`` (``(columns, rows, slices)`` on the source grid).

    ``source_headers`` are the source series' datasets in slice order (as
    :class:`~.series.Volume` keeps them; pixel data not needed).
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    rows, cols = int(source_headers[0].Rows), int(source_headers[0].Columns)
    if labels.shape != (cols, rows, len(source_headers)):
        raise InputError(f"label map of shape {labels.shape} does not fit the source series "
                         f"({cols} columns x {rows} rows x {len(source_headers)} slices)")
    segments = segment_labels(label_names)
    frames = np.transpose(labels, (2, 1, 0))  # (slices, rows, columns), as the source images
    masks = np.stack([frames == value for value, _ in segments], axis=-1).astype(np.uint8)
    from .. import __version__

    algorithm = hd.AlgorithmIdentificationSequence(name="VeloxSeg", version=software_version or __version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*label_colour(value)))
        for number, (value, name) in enumerate(segments, start=1)
    ]
    try:
        return _segmentation(hd, source_headers, masks, descriptions, description, software_version)
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        # highdicom validates the patient/study attributes it copies; its message may quote one
        where = getattr(source_headers[0], "filename", None) or "the source series"
        raise InputError(f"{where}: cannot build a DICOM-SEG from the source series' headers "
                         f"({type(err).__name__}: an invalid or missing attribute, such as a malformed date)") from None


def _segmentation(hd: Any, source_headers: Sequence[Any], masks: np.ndarray, descriptions: list, description: str,
                  software_version: str) -> Any:
    from pydicom.uid import generate_uid

    from .. import __version__

    return hd.seg.Segmentation(
        source_images=list(source_headers), pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="veloxseg",
        manufacturer_model_name="VeloxSeg", software_versions=software_version or __version__,
        device_serial_number="0", series_description=description[:64], content_label="VELOXSEG",
        content_description=description[:64], omit_empty_frames=bool(masks.any()))


def write_segmentation(path: str | os.PathLike, labels: np.ndarray, source_headers: Sequence[Any],
                       label_names: Mapping[str, int], description: str = "VeloxSeg segmentation") -> Path:
    """Write ``labels`` as DICOM-SEG to ``path`` atomically; returns the path."""
    return save_atomic(build_segmentation(labels, source_headers, label_names, description), path)


def save_atomic(ds: Any, path: str | os.PathLike) -> Path:
    """Save the DICOM dataset ``ds`` to ``path`` atomically (a finished file or none); returns the path."""
    path = Path(path)
    with atomic_path(path, ".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


@quiet_pydicom
def read_segmentation_labels(path: str | os.PathLike, source_headers: Sequence[Any]) -> np.ndarray:
    """A DICOM-SEG read back as a label map on its source series' grid ``(columns, rows, slices)``.

    Segment ``n`` becomes label ``n`` (overlaps: the higher segment number wins). The source
    headers (in slice order) give the frames their slices; frames of other series are an error.
    """
    hd = require_highdicom()
    try:
        seg = hd.seg.segread(str(path))
    except Exception as err:
        raise InputError(f"{path}: not a readable DICOM-SEG ({type(err).__name__})") from None
    uids = [str(h.SOPInstanceUID) for h in source_headers]
    try:
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                   relabel=False, skip_overlap_checks=True)
    except (ValueError, KeyError, AttributeError) as err:
        raise InputError(f"{path}: its frames do not reference the series it is stored with "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return np.transpose(np.asarray(pixels), (2, 1, 0)).astype(np.uint8)
