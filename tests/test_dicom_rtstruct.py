"""RTSTRUCT output: pixel-edge contours that fill back exactly to the mask, an RT Structure Set on the
source CT's slices that rasterises back to the predicted label map, and predict's file rules for it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
from matplotlib.path import Path as Polygon  # noqa: E402

from veloxseg.dicom import find_series, load_series  # noqa: E402
from veloxseg.dicom.contours import mask_contours, polygon_area  # noqa: E402
from veloxseg.dicom.rtstruct import RTSTRUCT_SOP_CLASS, write_rtstruct  # noqa: E402
from veloxseg.dicom.synthetic import SeriesSpec, new_study_uids, write_series  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def even_odd_fill(polygons, shape):
    """Pixels (rows, columns) whose centre lies inside an odd number of ``polygons`` ((n, 2) as (column, row))."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1)
    inside = np.zeros(centres.shape[0], dtype=bool)
    for polygon in polygons:
        inside ^= Polygon(polygon).contains_points(centres)
    return inside.reshape(shape)


def test_pixel_edge_contours_fill_back_to_exactly_the_mask():
    ring = np.zeros((7, 7), dtype=bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False  # a hole
    ring[6, 6] = True  # touches the ring only at a corner
    contours = mask_contours(ring)
    assert len(contours) == 3  # outer boundary, hole, the corner pixel: separate polygons
    assert sorted(round(abs(polygon_area(c))) for c in contours) == [1, 1, 25]
    assert np.array_equal(even_odd_fill(contours, ring.shape), ring)
    rng = np.random.default_rng(0)
    for _ in range(100):  # noise: holes, pinches, the image border
        mask = rng.random(tuple(rng.integers(1, 16, size=2))) < rng.random()
        contours = mask_contours(mask)
        assert np.array_equal(even_odd_fill(contours, mask.shape), mask)
        assert all(np.all((c + 0.5) % 1 == 0) for c in contours)  # vertices on pixel corners
        assert sum(polygon_area(c) for c in contours) == pytest.approx(-mask.sum())
    assert mask_contours(np.zeros((4, 4), dtype=bool)) == []


def rasterise(ds, headers, affine, shape):
    """The RTSTRUCT ``ds`` filled back onto the grid of ``headers``/``affine``: {ROI name: mask (columns, rows,
    slices)}, each contour checked to lie on the slice it references. Independent of the writer's geometry:
    patient mm go to voxels through the series' RAS affine (:func:`load_series`)."""
    to_voxel = np.linalg.inv(affine) @ LPS_TO_RAS
    slice_of = {str(h.SOPInstanceUID): k for k, h in enumerate(headers)}
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            voxels = (np.c_[points, np.ones(len(points))] @ to_voxel.T)[:, :3]
            (image,) = contour.ContourImageSequence
            k = slice_of[str(image.ReferencedSOPInstanceUID)]
            assert np.allclose(voxels[:, 2], k, atol=1e-6)  # planar, on the slice it references
            corners = voxels[:, :2] + 0.5
            assert np.allclose(corners, np.round(corners), atol=1e-6)  # vertices on pixel corners
            mask[:, :, k] ^= even_odd_fill([voxels[:, :2]], (shape[1], shape[0])).T  # (column, row) polygon
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out


def test_rtstruct_of_an_oblique_anisotropic_series_fills_back_exactly(tmp_path):
    import pydicom

    # rotated 30 degrees in-plane, 0.75 mm columns x 1.25 mm rows x 2.5 mm slices: catches a swapped
    # PixelSpacing or orientation
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.75, 1.25, 2.5])
    affine[:3, 3] = [-20.0, 15.0, -40.0]
    shape = (20, 14, 5)  # columns, rows, slices
    study, frame = new_study_uids()
    write_series(tmp_path / "CT", np.zeros(shape), affine, SeriesSpec("CT", study, frame, "oblique", intercept=-1024.0))
    ct = load_series(find_series(tmp_path / "CT")[0])
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:12, 3:10, 1:4] = 1
    labels[5:8, 5:7, 2] = 0  # a hole on slice 2
    labels[12, 10, 1] = 1  # touches label 1 only at a corner
    labels[14:20, 0:4, 0:5] = 2  # at the image border, every slice
    names = {"background": 0, "tumour": 1, "node": 2, "metastasis": 3}  # 3 is never predicted
    path = write_rtstruct(tmp_path / "case_rtstruct.dcm", labels, ct.headers, names)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RTSTRUCT_SOP_CLASS and ds.Modality == "RTSTRUCT"
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["tumour", "node", "metastasis"]
    assert "ContourSequence" not in ds.ROIContourSequence[2]
    assert [list(r.ROIDisplayColor) for r in ds.ROIContourSequence[:2]] == [[230, 40, 40], [40, 200, 60]]
    filled = rasterise(ds, ct.headers, ct.affine, shape)
    for name, value in names.items():
        if value:
            assert np.array_equal(filled[name], labels == value), name
    assert len(ds.ROIContourSequence[0].ContourSequence) == 3 + 2  # slice 2: outer + hole; slice 1: + corner pixel
