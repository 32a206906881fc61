"""Safe NIfTI reading and writing: every problem is an :class:`InputError` naming the file.

Public functions:

* :func:`read_header` -- shape, affine and spacing of a NIfTI file without loading its voxels.
* :func:`read_nifti` -- voxels (``float32`` by default) and affine, checked to be finite.
* :func:`check_same_grid` -- shapes/affines of several files agree (a case's channels and label).
* :func:`file_sha256` -- the SHA-256 of a file's bytes.
* :func:`read_json_object` -- a JSON object from a file, or an :class:`InputError` naming it.
* :func:`write_nifti` -- atomic write: a temporary name in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import InputError

#: affines of a case's files may differ by this much (mm) and still count as the same grid
AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Header:
    """Geometry of a NIfTI file."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, ...]


def _load(path: str | os.PathLike) -> nib.Nifti1Image:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(p))
    except Exception as err:  # nibabel raises many types for a bad file
        raise InputError(f"{p}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{p}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def read_header(path: str | os.PathLike) -> Header:
    """Shape, affine and voxel spacing of ``path`` (header only; raises :class:`InputError`)."""
    img = _load(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: invalid affine (not finite or singular)")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Header(Path(path), shape, affine, spacing)


def read_nifti(path: str | os.PathLike, dtype: np.dtype | type = np.float32,
               check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine of a 3-D NIfTI file.

    Raises :class:`InputError` naming ``path`` when the file is missing, unreadable or truncated,
    not 3-D, or (with ``check_finite``) contains NaN or infinite values.
    """
    img = _load(path)
    if len(img.shape) != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {tuple(img.shape)}")
    try:
        data = np.asarray(img.dataobj, dtype=dtype)
    except Exception as err:
        raise InputError(f"{path}: cannot read the voxel data, the file may be truncated or corrupt "
                         f"({type(err).__name__}: {err})") from None
    if check_finite and np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(f"{path}: {int(bad.sum())} voxels are NaN or infinite")
    return data, np.asarray(img.affine, dtype=np.float64)


def check_same_grid(headers: list[Header], tolerance: float = AFFINE_TOLERANCE) -> list[str]:
    """Problems (one line each, naming the file) where ``headers[1:]`` differ from ``headers[0]``."""
    problems: list[str] = []
    if not headers:
        return problems
    ref = headers[0]
    for h in headers[1:]:
        if h.shape != ref.shape:
            problems.append(f"{h.path}: shape {h.shape} differs from {ref.path.name} {ref.shape}")
        elif not np.allclose(h.affine, ref.affine, atol=tolerance, rtol=0):
            diff = float(np.abs(h.affine - ref.affine).max())
            problems.append(f"{h.path}: affine differs from {ref.path.name} (max difference {diff:.4g})")
    return problems


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (read in 1 MB blocks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in ``path``; an :class:`InputError` naming the file when it is unreadable or not an object."""
    import json

    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable {what} ({err})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: not a {what} (expected a JSON object)")
    return meta


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray,
                dtype: np.dtype | type | None = None) -> Path:
    """Write ``data`` with ``affine`` to ``path`` atomically (temporary file + rename); returns the path.

    A crash never leaves a half-written file under ``path``. The suffix (``.nii`` or ``.nii.gz``)
    decides compression.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data if dtype is None else data.astype(dtype, copy=False))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm", "sec")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix) as tmp:
        nib.save(img, tmp)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary name beside ``path``; on success it is renamed to ``path``, on failure removed.

    The temporary name ends with ``.tmp`` + ``suffix`` (libraries that pick a format from the
    extension, such as nibabel and matplotlib, still see the right one). A crash or an
    interruption never leaves a half-written file under ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Write a matplotlib figure to ``path`` (PNG) atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, Path(path).suffix) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
