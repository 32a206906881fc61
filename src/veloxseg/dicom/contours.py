"""Pixel-edge contours of a 2-D mask: closed polygons whose vertices lie on pixel corners.

Each polygon follows the boundary between mask and background pixels along the pixel edges, so
filling the polygons of a slice with the even-odd rule, testing pixel centres, gives back exactly the
mask (a pixel centre is never on an edge), and the polygons' areas add up to the mask's area.
Outer boundaries and hole boundaries are separate polygons (holes run the other way round); a
pixel is inside when it is inside an odd number of the polygons. Pixels touching only at a corner
belong to separate polygons that share that corner (the polygons never cross).

Why not scikit-image's ``measure.find_contours`` (marching squares): its iso-lines pass between
pixel centres, so a filled contour is not the mask (a single pixel becomes a diamond of half its
area), and it adds a dependency; tracing the pixel edges is a few lines of numpy and is exact.
"""

from __future__ import annotations

import numpy as np

# edge directions as (dx, dy) in corner coordinates (x = column, y = row, rows growing downwards)
_STEPS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])


def boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The directed boundary edges of ``mask`` (``(rows, columns)``): start corners ``(n, 2)`` as
    ``(x, y)`` and directions (indices into ``(+x, +y, -x, -y)``), the mask always on the same side."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    inside = m[1:-1, 1:-1]
    starts, dirs = [], []
    # (neighbour outside, start corner offset (dx, dy) from the pixel's top-left corner, direction)
    for outside, offset, d in ((~m[:-2, 1:-1], (1, 0), 2),   # top edge, heading -x
                               (~m[2:, 1:-1], (0, 1), 0),    # bottom edge, heading +x
                               (~m[1:-1, :-2], (0, 0), 1),   # left edge, heading +y
                               (~m[1:-1, 2:], (1, 1), 3)):   # right edge, heading -y
        rows, cols = np.nonzero(inside & outside)
        starts.append(np.stack([cols + offset[0], rows + offset[1]], axis=1))
        dirs.append(np.full(rows.size, d))
    return np.concatenate(starts), np.concatenate(dirs)


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed pixel-edge polygons of ``mask`` (``(rows, columns)``), each ``(n, 2)`` float array of
    vertices ``(column, row)`` in pixel-index units (corners at ``index +- 0.5``), without repeating the
    first vertex and without collinear vertices. Empty list for an empty mask."""
    starts, dirs = boundary_edges(mask)
    if dirs.size == 0:
        return []
    width = int(np.asarray(mask).shape[1]) + 1
    start_key = starts[:, 1] * width + starts[:, 0]
    ends = starts + _STEPS[dirs]
    end_key = ends[:, 1] * width + ends[:, 0]
    # at most two edges leave a corner (two pixels touching only there); order edges by start corner
    order = np.argsort(start_key, kind="stable")
    sorted_keys = start_key[order]
    first = np.searchsorted(sorted_keys, end_key, side="left")
    count = np.searchsorted(sorted_keys, end_key, side="right") - first
    nxt = order[first]
    pinch = np.nonzero(count == 2)[0]
    if pinch.size:
        # leave the corner towards the edge's own pixel (at -y of an edge heading +x, and so on round),
        # so each 4-connected piece keeps its own polygon
        toward = (dirs[pinch] + 3) % 4
        second = order[first[pinch] + 1]
        nxt[pinch] = np.where(dirs[order[first[pinch]]] == toward, order[first[pinch]], second)
    seen = np.zeros(dirs.size, dtype=bool)
    corner = (dirs != dirs[_previous(nxt)])  # edges that start a new side of the polygon
    polygons = []
    for e0 in range(dirs.size):
        if seen[e0]:
            continue
        loop = [e0]
        seen[e0] = True
        e = int(nxt[e0])
        while e != e0:
            seen[e] = True
            loop.append(e)
            e = int(nxt[e])
        idx = np.asarray(loop)
        vertices = starts[idx[corner[idx]]].astype(np.float64) - 0.5
        polygons.append(vertices)
    return polygons


def _previous(nxt: np.ndarray) -> np.ndarray:
    prev = np.empty_like(nxt)
    prev[nxt] = np.arange(nxt.size)
    return prev


def polygon_area(vertices: np.ndarray) -> float:
    """Signed area (shoelace) of a closed polygon ``(n, 2)``: outer boundaries and holes of
    :func:`mask_contours` have opposite signs, so the areas of a mask's polygons add up to minus its pixel count."""
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
