"""DICOM series in a folder: found by SeriesInstanceUID, stacked by position, checked, and turned into
the volume a NIfTI file of the same geometry would hold.

Why pydicom with our own geometry checks (and not SimpleITK's series reader): pydicom is pure Python
(no 100 MB binary wheel), already what highdicom (DICOM-SEG output) stands on, reads compressed pixel
data through its decoder plugins, and lets every check name the series in one line; SimpleITK/ITK
sort by position too but warn (or silently resample) on gaps, tilt and uneven spacing instead of
stopping with a message a user can act on. The geometry itself is a few lines of the DICOM standard
(Part 3, C.7.6.2.1.1): the checks are what matter, and they are here.

Conventions of a :class:`Volume` (those of dcm2niix/nibabel, so a volume written with
:func:`veloxseg.io.write_nifti` is the NIfTI file of the same geometry):

* ``array[i, j, k]`` is column ``i``, row ``j`` of slice ``k``; slices sorted by their position
  along the slice normal (row direction x column direction) from low to high;
* ``affine`` maps ``(i, j, k, 1)`` to RAS+ millimetres (DICOM's LPS with x and y negated);
* values are the stored values with the Modality LUT (RescaleSlope/Intercept) applied: HU for CT,
  the scanner's units (Bq/mL, counts) for PET before :mod:`veloxseg.dicom.suv`.

Errors are :class:`~veloxseg.errors.InputError` lines naming the series by its folder and its
SeriesDescription (or SeriesInstanceUID), never by a patient-identifying value.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import InputError, VeloxSegError

log = logging.getLogger(__name__)

#: images whose ImageOrientationPatient differ by more than this (direction cosines) are "mixed"
ORIENTATION_TOLERANCE = 1e-4
#: slices closer than this (mm) along the normal are duplicates
DUPLICATE_TOLERANCE_MM = 1e-3
#: slice gaps may differ from the median by this much (mm, or this fraction of the median if larger)
SPACING_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_FRACTION = 0.01
#: slice positions off the slice normal by more than this (mm) mean a gantry tilt (sheared grid)
TILT_TOLERANCE_MM = 0.01
#: modalities whose series are images we can stack; SEG/RTSTRUCT/SR etc. are found but not stacked
IMAGE_MODALITIES: tuple[str, ...] = ("CT", "PT", "MR", "NM")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
F = TypeVar("F", bound=Callable[..., Any])


def require_pydicom():
    """The pydicom module, or a one-line error saying how to install the DICOM extra."""
    try:
        import pydicom
    except ImportError:
        raise VeloxSegError("DICOM input needs pydicom and highdicom: pip install 'veloxseg[dicom]'") from None
    return pydicom


def quiet_pydicom(func: F) -> F:
    """Run ``func`` with pydicom's value warnings silenced (UserWarnings and its logger, below ERROR).

    pydicom warns about an invalid value by quoting it, and the value may be a patient's name or
    birth date: no such value may reach the console. Problems we care about are checked explicitly.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logger = logging.getLogger("pydicom")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")
                warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom(\..*)?$")
                return func(*args, **kwargs)
        finally:
            logger.setLevel(level)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class SeriesRef:
    """A series found on disk: its identifiers (no patient data) and its files."""

    uid: str
    modality: str
    description: str
    study_uid: str
    folder: Path
    files: tuple[Path, ...] = field(repr=False)
    sop_class_uid: str = ""
    image_type: tuple[str, ...] = ()

    @property
    def is_localizer(self) -> bool:
        """A scout/localizer series (ImageType LOCALIZER): never a channel."""
        return "LOCALIZER" in self.image_type

    @property
    def label(self) -> str:
        """How errors and logs name the series: folder and description (or UID)."""
        what = f"series '{self.description}'" if self.description else f"series {self.uid}"
        return f"{self.folder} ({self.modality} {what})"


@dataclass
class Volume:
    """A series as a volume: voxels ``(columns, rows, slices)``, RAS affine, the sorted headers."""

    array: np.ndarray
    affine: np.ndarray
    series: SeriesRef
    headers: list[Any] = field(default_factory=list)
    units: str = ""

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the array's three axes."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))  # type: ignore[return-value]


# -- finding series --------------------------------------------------------------------------------


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM Part 10 preamble (``DICM`` at byte 128); reads 132 bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _walk_files(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.upper() != "DICOMDIR":
                yield Path(root) / name


def contains_dicom(folder: str | os.PathLike) -> bool:
    """True when ``folder`` (or a sub-folder) holds at least one DICOM Part 10 file."""
    return any(is_dicom_file(p) for p in _walk_files(Path(folder)))


def _common_folder(files: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in files]))


def _multi(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (str(value).upper(),) if isinstance(value, str) else tuple(str(v).upper() for v in value)


@quiet_pydicom
def find_series(folder: str | os.PathLike) -> list[SeriesRef]:
    """Every DICOM series under ``folder`` (recursively), grouped by SeriesInstanceUID, sorted by folder.

    Files without the DICOM preamble, hidden files and ``DICOMDIR`` are ignored. Raises
    :class:`InputError` when ``folder`` does not exist or holds no DICOM file.
    """
    pydicom = require_pydicom()
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: DICOM folder does not exist" if not folder.exists() else f"{folder}: not a folder")
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in _walk_files(folder):
        if not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as err:  # pydicom raises several types for a damaged file
            raise InputError(f"{path}: not a readable DICOM file ({type(err).__name__})") from None
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise InputError(f"{path}: DICOM file without SeriesInstanceUID (0020,000E)")
        groups.setdefault(uid, []).append((path, ds))
    if not groups:
        raise InputError(f"{folder}: no DICOM files found (files with the DICOM preamble 'DICM')")
    found = []
    for uid, items in groups.items():
        files = tuple(p for p, _ in items)
        first = items[0][1]
        found.append(SeriesRef(uid, str(first.get("Modality", "") or "").upper(),
                               str(first.get("SeriesDescription", "") or "").strip(),
                               str(first.get("StudyInstanceUID", "") or ""), _common_folder(files), files,
                               str(first.get("SOPClassUID", "") or ""),
                               _multi(first.get("ImageType"))))
    return sorted(found, key=lambda s: (str(s.folder), s.modality, s.uid))


# -- reading one series ----------------------------------------------------------------------------


def _required(ds: Any, keyword: str, tag: str, series: SeriesRef) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise InputError(f"{series.label}: {keyword} {tag} missing; cannot place the slices in space")
    return value


def _vector(value: Any, n: int, keyword: str, series: SeriesRef) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{series.label}: {keyword} is not numeric") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{series.label}: {keyword} must hold {n} finite numbers")
    return arr


def _decoder_hint(transfer_syntax: str) -> str:
    """The pip command that installs pydicom's decoder plugin for a compressed transfer syntax."""
    jpeg2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
    jpegls = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
    jpeg = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
    if transfer_syntax in jpeg2000:
        return "pip install pylibjpeg pylibjpeg-openjpeg"
    if transfer_syntax in jpegls:
        return "pip install pylibjpeg pylibjpeg-libjpeg (or pyjpegls)"
    if transfer_syntax in jpeg:
        return "pip install pylibjpeg pylibjpeg-libjpeg"
    return "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg"


def decode_pixels(ds: Any, path: Path, series: SeriesRef) -> np.ndarray:
    """One slice's stored values with the Modality LUT applied (float64, ``(rows, columns)``).

    Compressed transfer syntaxes go through pydicom's decoder plugins; when none can decode the
    data the error names the plugin to install.
    """
    from pydicom.pixels import apply_modality_lut

    ts = ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else ""
    try:
        pixels = ds.pixel_array
    except Exception as err:
        name = getattr(ts, "name", str(ts)) or "unknown"
        if getattr(ts, "is_compressed", False):
            raise InputError(f"{series.label}: cannot decode the {name} pixel data of {path.name}; install "
                             f"pydicom's decoder plugin: {_decoder_hint(str(ts))}") from None
        raise InputError(f"{series.label}: cannot read the pixel data of {path.name} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if pixels.ndim != 2:
        raise InputError(f"{series.label}: {path.name} holds pixel data of shape {pixels.shape}; only "
                         f"single-frame greyscale images are supported")
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)


@dataclass(frozen=True)
class SliceGeometry:
    """Where the sorted slices of a series lie: the order and the voxel-to-LPS affine."""

    order: list[int]
    affine_lps: np.ndarray


def slice_geometry(headers: Sequence[Any], series: SeriesRef) -> SliceGeometry:
    """Sort ``headers`` along the slice normal and check the stack is a regular grid.

    One-line :class:`InputError` for: mixed orientations or image sizes, duplicate slices, missing
    slices (a gap of about a whole multiple of the usual spacing, or fewer images than PET's
    NumberOfSlices), uneven spacing and gantry tilt (slices sheared off the normal).
    """
    if len(headers) < 2:
        raise InputError(f"{series.label}: {len(headers)} image(s); a volume needs at least 2 slices")
    iops = np.stack([_vector(_required(h, "ImageOrientationPatient", "(0020,0037)", series), 6,
                             "ImageOrientationPatient", series) for h in headers])
    if np.abs(iops - iops[0]).max() > ORIENTATION_TOLERANCE:
        raise InputError(f"{series.label}: mixed orientations (ImageOrientationPatient differs between images); "
                         f"split the series or reformat it")
    sizes = {(int(_required(h, "Rows", "(0028,0010)", series)), int(_required(h, "Columns", "(0028,0011)", series)))
             for h in headers}
    spacings = np.stack([_vector(_required(h, "PixelSpacing", "(0028,0030)", series), 2, "PixelSpacing", series)
                         for h in headers])
    if len(sizes) > 1 or np.abs(spacings - spacings[0]).max() > 1e-4:
        raise InputError(f"{series.label}: images of different sizes or pixel spacings in one series")
    row, col = iops[0, :3], iops[0, 3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3 or abs(float(row @ col)) > 1e-3:
        raise InputError(f"{series.label}: ImageOrientationPatient is not two orthonormal directions")
    positions = np.stack([_vector(_required(h, "ImagePositionPatient", "(0020,0032)", series), 3,
                                  "ImagePositionPatient", series) for h in headers])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along, positions = along[order], positions[order]
    steps = np.diff(along)
    if (steps < DUPLICATE_TOLERANCE_MM).any():
        k = int(np.argmax(steps < DUPLICATE_TOLERANCE_MM))
        n_dup = int((np.abs(along - along[k]) < DUPLICATE_TOLERANCE_MM).sum())
        raise InputError(f"{series.label}: duplicate slices ({n_dup} images at position {along[k]:.2f} mm along "
                         f"the slice normal); remove the copies or split the series")
    median = float(np.median(steps))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * median)
    gaps = steps > 1.5 * median
    if gaps.any():
        missing = int(sum(round(s / median) - 1 for s in steps[gaps]))
        first = int(np.argmax(gaps))
        raise InputError(f"{series.label}: missing slice(s): about {max(missing, 1)} missing after slice {first + 1} "
                         f"of {len(headers)} (gap {steps[first]:.2f} mm, usual spacing {median:.2f} mm)")
    if np.abs(steps - median).max() > tolerance:
        raise InputError(f"{series.label}: uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm); "
                         f"resample the series to even spacing first")
    expected = headers[0].get("NumberOfSlices") if series.modality == "PT" else None
    if expected not in (None, "") and int(expected) > len(headers):
        raise InputError(f"{series.label}: missing slice(s): {len(headers)} images, NumberOfSlices (0054,0081) "
                         f"says {int(expected)}")
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    shear = np.linalg.norm(in_plane, axis=1)
    if shear.max() > TILT_TOLERANCE_MM:
        k = int(np.argmax(shear))
        angle = float(np.degrees(np.arctan2(shear[k], abs(offsets[k] @ normal))))
        raise InputError(f"{series.label}: gantry tilt (slices sheared by {angle:.2f} degrees off the slice normal); "
                         f"correct the tilt (e.g. dcm2niix, or the scanner's reformat) first")
    row_spacing, col_spacing = float(spacings[0, 0]), float(spacings[0, 1])
    affine = np.eye(4)
    affine[:3, 0] = row * col_spacing  # i: along a row, one column to the next
    affine[:3, 1] = col * row_spacing  # j: down a column, one row to the next
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 3] = positions[0]
    return SliceGeometry(order, affine)


@quiet_pydicom
def load_series(series: SeriesRef) -> Volume:
    """Read, sort, check and stack ``series`` into a :class:`Volume` (Modality LUT applied)."""
    pydicom = require_pydicom()
    if series.modality not in IMAGE_MODALITIES:
        raise InputError(f"{series.label}: modality {series.modality or '(none)'} is not an image series "
                         f"({', '.join(IMAGE_MODALITIES)} are)")
    datasets = []
    for path in series.files:
        try:
            ds = pydicom.dcmread(str(path), defer_size="64 KB")  # pixel data read when decoded
        except Exception as err:
            raise InputError(f"{series.label}: {path.name} is not a readable DICOM file ({type(err).__name__})") from None
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise InputError(f"{series.label}: {path.name} is a multi-frame image ({frames} frames); only "
                             f"single-frame series (one file per slice) are supported")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(f"{series.label}: {path.name} is a colour image; a greyscale series is needed")
        datasets.append(ds)
    geometry = slice_geometry(datasets, series)
    sorted_ds = [datasets[i] for i in geometry.order]
    rows, cols = int(sorted_ds[0].Rows), int(sorted_ds[0].Columns)
    array = np.empty((cols, rows, len(sorted_ds)), dtype=np.float32)
    for k, (i, ds) in enumerate(zip(geometry.order, sorted_ds)):
        array[:, :, k] = decode_pixels(ds, series.files[i], series).T
        del ds.PixelData  # keep the headers, not the pixel data (highdicom needs only the headers)
    units = "HU" if series.modality == "CT" else str(sorted_ds[0].get("Units", "") or "")
    return Volume(array, LPS_TO_RAS @ geometry.affine_lps, series, sorted_ds, units)
