"""Resampling one volume onto another's grid through their affines (PET onto CT)."""

from __future__ import annotations

import numpy as np

#: world positions of two grids may differ by this much (mm) and count as the same grid
SAME_GRID_TOLERANCE_MM = 1e-3


def same_grid(shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray) -> bool:
    """True when two grids have the same shape and their affines agree within a micrometre."""
    return tuple(shape_a) == tuple(shape_b) and bool(np.allclose(affine_a, affine_b, atol=SAME_GRID_TOLERANCE_MM,
                                                                 rtol=0))


def resample_to_grid(array: np.ndarray, affine: np.ndarray, target_shape: tuple[int, int, int],
                     target_affine: np.ndarray, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """``array`` (voxel-to-world ``affine``) sampled at every voxel centre of the target grid.

    Linear interpolation by default (``order=1``, scipy's spline order); target voxels outside the
    source volume get ``fill`` (0: no activity outside the PET field of view). Returns ``float32``.
    """
    from scipy.ndimage import affine_transform

    if same_grid(array.shape, affine, target_shape, target_affine):
        return np.asarray(array, dtype=np.float32)
    # target voxel -> world -> source voxel
    mapping = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    out = affine_transform(np.asarray(array, dtype=np.float32), mapping[:3, :3], offset=mapping[:3, 3],
                           output_shape=tuple(int(s) for s in target_shape), order=order, mode="constant",
                           cval=float(fill))
    return out.astype(np.float32, copy=False)
