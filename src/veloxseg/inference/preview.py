"""``--preview``: a PNG per case with three orthogonal slices through the largest predicted component."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..io import save_figure


def largest_component_center(labels: np.ndarray) -> tuple[tuple[int, int, int], bool]:
    """Centre (voxel indices) of the largest connected foreground component; the volume centre if none."""
    from scipy import ndimage

    fg = labels > 0
    if not fg.any():
        return tuple(s // 2 for s in labels.shape), False  # type: ignore[return-value]
    comp, n = ndimage.label(fg)
    sizes = np.bincount(comp.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    idx = np.argwhere(comp == biggest)
    centre = idx[np.argmin(((idx - idx.mean(0)) ** 2).sum(1))]  # a voxel of the component nearest its centroid
    return tuple(int(c) for c in centre), True  # type: ignore[return-value]


def _to_ras(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    ras_zooms = np.empty(3)
    for src, (dst, _) in enumerate(ornt):
        ras_zooms[int(dst)] = zooms[src]
    return nib.orientations.apply_orientation(arr, transform), ras_zooms


def write_preview(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                  channel_names: Sequence[str], title: str = "") -> Path:
    """Write a PNG: one row per channel, columns sagittal / coronal / axial, labels overlaid in colour.

    Slices go through the largest predicted component (the volume centre when nothing is predicted);
    arrays are shown in RAS orientation with the voxel spacing as aspect ratio. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    path = Path(path)
    centre, found = largest_component_center(labels)
    lab_ras, zooms = _to_ras(labels, affine)
    point = np.zeros(labels.shape, dtype=bool)
    point[centre] = True
    c = tuple(int(v[0]) for v in np.nonzero(_to_ras(point, affine)[0]))
    n_ch = image.shape[0]
    fig, axes = plt.subplots(n_ch, 3, figsize=(9, 3 * n_ch), squeeze=False)
    colours = ListedColormap([(0, 0, 0, 0), (1, 0.1, 0.1, 0.45), (0.1, 0.8, 0.1, 0.45), (0.2, 0.4, 1, 0.45),
                              (1, 0.8, 0, 0.45), (0.8, 0, 0.8, 0.45), (0, 0.8, 0.8, 0.45)])
    max_label = max(int(labels.max()), 1)
    views = [("sagittal", 0, (zooms[2], zooms[1])), ("coronal", 1, (zooms[2], zooms[0])),
             ("axial", 2, (zooms[1], zooms[0]))]
    for row in range(n_ch):
        img_ras, _ = _to_ras(image[row], affine)
        lo, hi = np.percentile(img_ras, [0.5, 99.5])
        for col, (name, axis, (sy, sx)) in enumerate(views):
            im = np.take(img_ras, c[axis], axis=axis).T
            lb = np.take(lab_ras, c[axis], axis=axis).T.astype(float)
            lb[lb > 0] = (lb[lb > 0] - 1) % (len(colours.colors) - 1) + 1
            ax = axes[row][col]
            ax.imshow(im, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower", aspect=sy / sx,
                      interpolation="nearest")
            ax.imshow(np.ma.masked_equal(lb, 0), cmap=colours, vmin=0, vmax=len(colours.colors) - 1,
                      origin="lower", aspect=sy / sx, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{name} {c[axis]}")
            if col == 0:
                ax.set_ylabel(channel_names[row] if row < len(channel_names) else f"channel {row}")
    note = "largest component" if found else "nothing predicted: volume centre"
    fig.suptitle(f"{title}  ({note}; labels 1..{max_label})".strip())
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    return path
