"""RTSTRUCT output: pixel-edge contours that fill back exactly to the mask, an RT Structure Set on the
source CT's slices that rasterises back to the predicted label map, and predict's file rules for it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
from matplotlib.path import Path as Polygon  # noqa: E402

from test_dicom_predict import CT_SHAPE, ball_study, exact_study, labels_of, oracle_ckpt  # noqa: E402,F401
from veloxseg.cli import main  # noqa: E402
from veloxseg.dicom import find_series, load_series  # noqa: E402
from veloxseg.dicom.contours import mask_contours, polygon_area  # noqa: E402
from veloxseg.dicom.rtstruct import RTSTRUCT_SOP_CLASS, write_rtstruct  # noqa: E402
from veloxseg.dicom.synthetic import SeriesSpec, new_study_uids, write_series  # noqa: E402
from veloxseg.inference.manifest import MANIFEST_NAME  # noqa: E402

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


def test_predict_rtstruct_references_the_ct_and_fills_back_to_the_label_map(tmp_path, ball_study, oracle_ckpt):
    import pydicom

    out = tmp_path / "out"
    assert main(["predict", "-m", oracle_ckpt, "-i", str(ball_study), "-o", str(out), "--output-type", "all",
                 "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME) == [
        "study.nii.gz", "study_rtstruct.dcm", "study_seg.dcm"]
    assert "study_rtstruct.dcm" in (out / MANIFEST_NAME).read_text()
    labels, _ = labels_of(out / "study.nii.gz")
    assert labels.any() and labels.shape == CT_SHAPE
    ct = load_series(find_series(ball_study / "CT")[0])
    ds = pydicom.dcmread(out / "study_rtstruct.dcm")
    assert ds.SOPClassUID == RTSTRUCT_SOP_CLASS
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == ct.headers[0].FrameOfReferenceUID
    (series,) = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct.series.uid
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == [h.SOPInstanceUID for h in ct.headers]
    seg = pydicom.dcmread(out / "study_seg.dcm")
    for key in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        assert ds[key].value == seg[key].value == ct.headers[0][key].value  # copied as for the DICOM-SEG
    assert [r.ROIName for r in ds.StructureSetROISequence] == [s.SegmentLabel for s in seg.SegmentSequence]
    assert np.array_equal(rasterise(ds, ct.headers, ct.affine, CT_SHAPE)["tumour"], labels == 1)


def test_rtstruct_only_keeps_no_nifti_and_continue_skips(tmp_path, ball_study, oracle_ckpt, capsys, caplog):
    out = tmp_path / "out"
    args = ["predict", "-m", oracle_ckpt, "-i", str(ball_study), "-o", str(out), "--output-type", "rtstruct"]
    with caplog.at_level("DEBUG"):
        assert main(args) == 0
    printed = capsys.readouterr()
    shown = printed.out + printed.err + caplog.text
    assert "wrote 1 file(s) for --output-type rtstruct" in shown
    assert "PHANTOM-0001" not in shown and "Phantom" not in shown  # no patient ID or name in the console or logs
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME) == ["study_rtstruct.dcm"]
    before = (out / "study_rtstruct.dcm").stat().st_mtime_ns
    assert main(args + ["--continue"]) == 0
    assert "skipped 1 case(s) whose RTSTRUCT exists" in capsys.readouterr().out
    assert (out / "study_rtstruct.dcm").stat().st_mtime_ns == before


def test_an_rtstruct_predict_did_not_write_is_not_replaced(tmp_path, ball_study, oracle_ckpt, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "study_rtstruct.dcm"
    mine.write_bytes(b"a structure set a planner edited")
    args = ["predict", "-m", oracle_ckpt, "-i", str(ball_study), "-o", str(out), "--output-type", "rtstruct",
            "--quiet"]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "study_rtstruct.dcm: exists and was not written by veloxseg predict" in err and err.count("\n") == 1
    assert mine.read_bytes() == b"a structure set a planner edited"
    assert main(args + ["--overwrite"]) == 0 and mine.read_bytes()[128:132] == b"DICM"
    assert main(args) == 0  # now predict's own file: replaced without --overwrite


def test_rtstruct_of_nifti_input_is_a_clear_error(tmp_path, exact_study, oracle_ckpt, capsys):
    assert main(["predict", "-m", oracle_ckpt, "-i", str(exact_study / "nifti"), "-o", str(tmp_path / "out"),
                 "--output-type", "rtstruct", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "needs DICOM input (an RTSTRUCT references the source series)" in err and err.count("\n") == 1


def test_rtstruct_without_highdicom_says_what_to_install_before_predicting(tmp_path, ball_study, oracle_ckpt,
                                                                           capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "highdicom" else real(name, *a))
    capsys.readouterr()
    assert main(["predict", "-m", oracle_ckpt, "-i", str(ball_study), "-o", str(tmp_path / "out"), "--output-type",
                 "rtstruct", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--output-type rtstruct needs highdicom" in err and "pip install 'veloxseg[dicom]'" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
