"""``veloxseg evaluate``: Dice / HD95 values, nnU-Net's empty-class conventions, bad input."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from veloxseg.cli import main
from veloxseg.errors import InputError
from veloxseg.evaluation import evaluate_folders, score_case

AFFINE = np.diag([2.0, 1.0, 1.5, 1.0])


def _save(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine), str(path))


def _cube(shape=(16, 16, 16), lo=(4, 4, 4), size=4, label=1):
    a = np.zeros(shape, np.uint8)
    a[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = label
    return a


def test_dice_and_hd95_in_mm_use_the_spacing():
    ref = _cube()
    pred = _cube(lo=(5, 4, 4))  # shifted one voxel along axis 0 (2 mm)
    (s,) = score_case(pred, ref, [1], spacing=(2.0, 1.0, 1.5))
    assert s.dice == pytest.approx(2 * 48 / 128)
    assert s.hd95_mm == pytest.approx(2.0)
    (s1,) = score_case(pred, ref, [1], spacing=(1.0, 1.0, 1.0))
    assert s1.hd95_mm == pytest.approx(1.0)
    (same,) = score_case(ref, ref, [1], spacing=(2.0, 1.0, 1.5))
    assert same.dice == 1.0 and same.hd95_mm == 0.0


def test_empty_class_conventions():
    empty = np.zeros((8, 8, 8), np.uint8)
    full = _cube((8, 8, 8), (2, 2, 2), 3)
    (both,) = score_case(empty, empty, [1], (1, 1, 1))
    assert math.isnan(both.dice) and math.isnan(both.hd95_mm)
    (fp,) = score_case(full, empty, [1], (1, 1, 1))  # prediction where the reference is empty
    assert fp.dice == 0.0 and math.isnan(fp.hd95_mm)
    (fn,) = score_case(empty, full, [1], (1, 1, 1))  # missed object
    assert fn.dice == 0.0 and math.isnan(fn.hd95_mm)


def test_cli_writes_csv_json_and_summary_skips_undefined(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    _save(ref / "a.nii.gz", _cube())
    _save(pred / "a.nii.gz", _cube())
    _save(ref / "b.nii.gz", np.zeros((16, 16, 16)))  # empty in both: Dice undefined
    _save(pred / "b.nii.gz", np.zeros((16, 16, 16)))
    _save(ref / "c.nii.gz", _cube())
    _save(pred / "c.nii.gz", _cube(lo=(5, 4, 4)))
    _save(ref / "unpredicted.nii.gz", _cube())
    out_json = tmp_path / "eval.json"
    args = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--labels", "1", "--json", str(out_json), "--quiet"]
    assert main(args) == 1  # a reference without a prediction is an error by default, naming it
    err = capsys.readouterr().err
    assert "unpredicted" in err and "--allow-missing" in err and len(err.strip().splitlines()) == 1
    assert not out_json.exists()
    assert main([*args, "--allow-missing"]) == 0  # ... or counted as an empty prediction (Dice 0)
    rows = list(csv.DictReader(open(pred / "evaluation.csv")))
    assert [r["case"] for r in rows] == ["a", "b", "c", "unpredicted"]
    assert rows[1]["dice"] == "nan" and float(rows[3]["dice"]) == 0.0
    info = json.loads(out_json.read_text())
    dice = info["summary"]["per_label"]["1"]["dice"]
    assert dice["n"] == 3 and dice["mean"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert info["references_without_prediction"] == ["unpredicted"]
    assert "4 case(s) scored" in capsys.readouterr().out
    assert main([*args, "--allow-missing"]) == 0  # its own reports are replaced on a second run


def test_reports_never_replace_a_users_file(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    _save(ref / "a.nii.gz", _cube())
    _save(pred / "a.nii.gz", _cube())
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "own results"}')
    (pred / "evaluation.csv").write_text("my,own,table\n1,2,3\n")
    args = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "evaluation.csv" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert (pred / "evaluation.csv").read_text() == "my,own,table\n1,2,3\n"
    assert main([*args, "--csv", str(tmp_path / "scores.csv"), "--json", str(notes)]) == 1
    assert notes.read_text() == '{"my": "own results"}' and not (tmp_path / "scores.csv").exists()
    assert main([*args, "--overwrite", "--json", str(notes)]) == 0
    assert json.loads(notes.read_text())["summary"]["cases"] == 1
    assert (pred / "evaluation.csv").read_text().startswith("case,label,dice")


def test_labels_default_to_those_found(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    two = _cube() + _cube(lo=(10, 10, 10), label=2)
    _save(ref / "a.nii.gz", two)
    _save(pred / "a.nii.gz", two)
    result = evaluate_folders(pred, ref)
    assert [s.label for s in result.scores] == [1, 2]


def test_prediction_without_reference_is_an_error(tmp_path, capsys):
    _save(tmp_path / "ref" / "a.nii.gz", _cube())
    _save(tmp_path / "pred" / "a.nii.gz", _cube())
    _save(tmp_path / "pred" / "zz.nii.gz", _cube())
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "zz.nii.gz" in err and "no reference" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pred" / "evaluation.csv").exists()


@pytest.mark.parametrize("what", ["shape", "affine"])
def test_prediction_on_another_grid_is_an_error(tmp_path, what):
    _save(tmp_path / "ref" / "a.nii.gz", _cube())
    if what == "shape":
        _save(tmp_path / "pred" / "a.nii.gz", _cube(shape=(16, 16, 15)))
    else:
        _save(tmp_path / "pred" / "a.nii.gz", _cube(), affine=np.diag([1.0, 1.0, 1.5, 1.0]))
    with pytest.raises(InputError, match=rf"a\.nii\.gz: {what}"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1])


def test_unreadable_prediction_is_an_error(tmp_path):
    _save(tmp_path / "ref" / "a.nii.gz", _cube())
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"pred/a\.nii\.gz: not a readable NIfTI"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1])


def test_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(tmp_path)]) == 1
    assert "nope: folder does not exist" in capsys.readouterr().err


def test_autopet_fp_fn_volumes_and_lesion_detection():
    spacing = (2.0, 1.0, 1.5)  # 3 mm^3 = 0.003 mL per voxel
    ref = _cube((20, 20, 20), (2, 2, 2), 3)  # lesion A (27 voxels), found
    ref |= _cube((20, 20, 20), (12, 12, 12), 2)  # lesion B (8 voxels), missed entirely
    ref |= _cube((20, 20, 20), (2, 12, 2), 4)  # lesion C (64 voxels), one voxel predicted
    pred = _cube((20, 20, 20), (2, 2, 2), 3)  # A
    pred[2, 12, 2] = 1  # one voxel of C
    pred |= _cube((20, 20, 20), (15, 2, 15), 2)  # a false positive lesion (8 voxels)
    (s,) = score_case(pred, ref, [1], spacing)
    assert s.fp_volume_ml == pytest.approx(8 * 0.003) and s.fn_volume_ml == pytest.approx(8 * 0.003)
    assert (s.lesions_tp, s.lesions_fp, s.lesions_fn) == (2, 1, 1)  # any voxel counts at overlap 0
    (strict,) = score_case(pred, ref, [1], spacing, lesion_overlap=0.5)
    assert (strict.lesions_tp, strict.lesions_fp, strict.lesions_fn) == (1, 1, 2)  # C: 1/64 is not > 0.5
    assert strict.fp_volume_ml == s.fp_volume_ml  # FP/FN volumes do not depend on the threshold


def test_cli_reports_lesion_metrics_and_the_hd95_convention(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    _save(ref / "a.nii.gz", _cube() | _cube(lo=(10, 10, 10), size=3))
    _save(pred / "a.nii.gz", _cube())
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--json", str(tmp_path / "e.json"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "FN vol mL" in out and "lesion overlap > 0" in out
    info = json.loads((tmp_path / "e.json").read_text())
    lesions = info["summary"]["per_label"]["1"]["lesions"]
    assert lesions == {"tp": 1, "fp": 0, "fn": 1, "sensitivity": 0.5, "precision": 1.0, "f1": pytest.approx(2 / 3)}
    assert info["summary"]["per_label"]["1"]["fn_volume_ml"]["mean"] == pytest.approx(27 * 3.0 / 1000)
    row = next(csv.DictReader(open(pred / "evaluation.csv")))
    assert row["lesions_fn"] == "1" and float(row["fp_volume_ml"]) == 0.0
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "larger of the two directed 95th percentiles" in " ".join(capsys.readouterr().out.split())


def test_cases_restricts_the_references(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    _save(ref / "a.nii.gz", _cube())
    _save(pred / "a.nii.gz", _cube())
    _save(ref / "other.nii.gz", _cube())  # a case of the dataset that this run did not predict
    with pytest.raises(InputError, match="other"):
        evaluate_folders(pred, ref, [1])
    result = evaluate_folders(pred, ref, [1], cases=["a"])
    assert [s.case for s in result.scores] == ["a"] and result.unmatched_references == []


def test_only_our_own_reports_count_as_ours_and_a_huge_file_is_not_read(tmp_path, monkeypatch):
    from veloxseg import evaluation

    ours = tmp_path / "evaluation.json"
    ours.write_text(json.dumps({"summary": {}, "cases": {}, "references_without_prediction": []}))
    assert evaluation.written_by_evaluate(ours)
    (tmp_path / "other.json").write_text(json.dumps({"summary": {}}))
    assert not evaluation.written_by_evaluate(tmp_path / "other.json")
    monkeypatch.setattr(evaluation, "REPORT_MAX_BYTES", 16)  # our own report, but larger than any report could be
    assert not evaluation.written_by_evaluate(ours)
