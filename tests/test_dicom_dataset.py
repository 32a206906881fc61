"""``veloxseg dataset-from-dicom``: studies to an nnU-Net raw dataset with labels from DICOM-SEG or NIfTI,
a study -> case CSV, no patient identifiers in names, and bad studies stopped or skipped."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from veloxseg.cli import main  # noqa: E402
from veloxseg.data.dataset import load_dataset  # noqa: E402
from veloxseg.dicom import find_studies, load_channels, match_channels  # noqa: E402
from veloxseg.dicom.synthetic import write_pet_ct_study  # noqa: E402
from veloxseg.io import write_nifti  # noqa: E402

AFFINE = np.diag([-3.0, -3.0, 4.0, 1.0])
AFFINE[:3, 3] = [40.0, 35.0, -20.0]
SHAPE = (24, 20, 10)


def study_arrays(seed):
    rng = np.random.default_rng(seed)
    ct = rng.integers(-200, 200, size=SHAPE).astype(np.float64)
    pet = rng.uniform(0.5, 2.0, size=SHAPE)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[5:9, 6:10, 3:6] = 1
    label[15:18, 12:14, 6:8] = 2
    pet[label > 0] = 6.0
    return ct, pet, label


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    for i, name in enumerate(["Doe^Jane_2024", "Roe^Rich_2023", "unlabelled"]):
        ct, pet, label = study_arrays(i)
        write_pet_ct_study(root / name, ct, AFFINE, pet, AFFINE, label=label if i < 2 else None,
                           label_names={"background": 0, "tumour": 1, "node": 2}, patient_id=f"MRN{i:05d}")
    return root


def test_studies_become_a_dataset_with_seg_labels_and_a_mapping(tmp_path, studies, capsys):
    out = tmp_path / "Dataset910_Dicom"
    assert main(["dataset-from-dicom", str(studies), str(out)]) == 0
    assert "keep it private" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT", "1": "PET"} and meta["numTraining"] == 2
    assert meta["labels"] == {"background": 0, "tumour": 1, "node": 2} and meta["pet_units"] == "SUVbw"
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["dataset.json", "imagesTr/case_000_0000.nii.gz", "imagesTr/case_000_0001.nii.gz",
                     "imagesTr/case_001_0000.nii.gz", "imagesTr/case_001_0001.nii.gz", "imagesTs/case_002_0000.nii.gz",
                     "imagesTs/case_002_0001.nii.gz", "labelsTr/case_000.nii.gz", "labelsTr/case_001.nii.gz",
                     "study_to_case.csv"]
    rows = list(csv.DictReader(open(out / "study_to_case.csv")))
    assert [(r["case"], r["split"], r["study_folder"]) for r in rows] == [
        ("case_000", "Tr", "Doe^Jane_2024"), ("case_001", "Tr", "Roe^Rich_2023"), ("case_002", "Ts", "unlabelled")]
    assert "MRN" not in (out / "study_to_case.csv").read_text()
    # images: exactly what predict converts; labels: the SEG's segments on the CT grid
    ct, pet, label = study_arrays(1)
    (study,) = [s for s in find_studies(studies) if s.name == "Roe_Rich_2023"]
    vols = load_channels(match_channels(study.series, ["CT", "PET"], study.folder), ["CT", "PET"]).volumes
    for c in range(2):
        img = nib.load(str(out / "imagesTr" / f"case_001_000{c}.nii.gz"))
        assert np.array_equal(np.asarray(img.dataobj), vols[c].array) and np.allclose(img.affine, AFFINE)
    assert np.array_equal(np.asarray(nib.load(str(out / "imagesTr" / "case_001_0000.nii.gz")).dataobj), ct)
    assert np.allclose(np.asarray(nib.load(str(out / "imagesTr" / "case_001_0001.nii.gz")).dataobj), pet, rtol=1e-3)
    assert np.array_equal(np.asarray(nib.load(str(out / "labelsTr" / "case_001.nii.gz")).dataobj), label)
    assert len(load_dataset(out).cases) == 2  # training reads it


def test_labels_from_a_folder_of_nifti(tmp_path, studies):
    labels = tmp_path / "labels"
    _, _, label = study_arrays(2)
    write_nifti(labels / "unlabelled.nii.gz", (label > 0).astype(np.uint8), AFFINE)
    out = tmp_path / "ds"
    assert main(["dataset-from-dicom", str(studies), str(out), "--labels", str(labels), "--label-names", "tumour",
                 "node", "--channels", "PET", "CT", "--prefix", "pt"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["channel_names"] == {"0": "PET", "1": "CT"}
    assert np.array_equal(np.asarray(nib.load(str(out / "labelsTr" / "pt_002.nii.gz")).dataobj), label > 0)


def test_bad_study_stops_or_is_skipped(tmp_path, studies, capsys):
    import shutil

    shutil.copytree(studies / "Roe^Rich_2023", tmp_path / "in" / "good")
    shutil.copytree(studies / "Doe^Jane_2024", tmp_path / "in" / "bad")
    for p in sorted((tmp_path / "in" / "bad" / "PET").iterdir())[4:5]:
        p.unlink()  # a missing PET slice
    assert main(["dataset-from-dicom", str(tmp_path / "in"), str(tmp_path / "out1")]) == 1
    err = capsys.readouterr().err
    assert "missing slice" in err and err.count("\n") == 1 and not (tmp_path / "out1" / "dataset.json").exists()
    assert main(["dataset-from-dicom", str(tmp_path / "in"), str(tmp_path / "out2"), "--skip-invalid"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out2" / "study_to_case.csv")))
    assert [r["split"] for r in rows] == ["skipped", "Tr"] and "missing slice" in rows[0]["labels"]
    # an existing dataset is never overwritten
    assert main(["dataset-from-dicom", str(tmp_path / "in"), str(tmp_path / "out2"), "--skip-invalid"]) == 1
    assert "already holds a dataset.json" in capsys.readouterr().err
