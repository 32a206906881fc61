"""``veloxseg predict`` from DICOM: a study folder or series folders give the labels the equivalent
NIfTI gives, DICOM-SEG that highdicom and pydicom read back onto the CT, and lesion statistics."""

from __future__ import annotations

import datetime as dt
import json
import tempfile

import nibabel as nib
import numpy as np
import pytest

from veloxseg.inference.manifest import MANIFEST_NAME  # predict's record of what it wrote
import torch
from torch import nn

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from veloxseg.checkpoint import register_model, save_checkpoint  # noqa: E402
from veloxseg.cli import main  # noqa: E402
from veloxseg.dicom import find_series, load_series  # noqa: E402
from veloxseg.dicom.seg import read_segmentation_labels  # noqa: E402
from veloxseg.dicom.synthetic import PetDose, write_pet_ct_study  # noqa: E402
from veloxseg.io import write_nifti  # noqa: E402
from veloxseg.networks import VeloxSeg  # noqa: E402

# axis-aligned grids with exactly representable spacings and origins: DICOM's decimal strings and
# NIfTI's float32 affine hold them exactly, so both paths see bit-identical geometry
CT_AFFINE = np.diag([-2.0, -2.0, 3.0, 1.0])
CT_AFFINE[:3, 3] = [32.0, 40.0, -30.0]
CT_SHAPE = (32, 32, 24)
PET_AFFINE = np.diag([-4.0, -4.0, 4.0, 1.0])
PET_AFFINE[:3, 3] = [34.0, 42.0, -32.0]
PET_SHAPE = (18, 18, 20)
LESION_CENTRE = np.array([5.0, 10.0, 4.0])  # RAS mm
LESION_RADIUS = 12.0
# one half-life between injection and scan and weight/dose a power of two: SUV = Bq/mL / 1024 exactly
EXACT_DOSE = PetDose(weight_kg=64.0, dose_bq=131_072_000.0, half_life_s=6600.0,
                     injection=dt.datetime(2024, 1, 15, 9, 0), series_start=dt.datetime(2024, 1, 15, 10, 50))


class PetOracle(nn.Module):
    """Label 1 exactly where channel ``channel`` exceeds ``threshold`` (no normalisation in the plan)."""

    def __init__(self, channel: int = 0, threshold: float = 3.0) -> None:
        super().__init__()
        self.channel, self.threshold = channel, threshold
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = (x[:, self.channel:self.channel + 1] - self.threshold) * self.scale
        return torch.cat([-c, c], dim=1)


register_model("test-pet-oracle", lambda kwargs: PetOracle(**kwargs))


def world(shape, affine):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    return grid @ affine[:3, :3].T + affine[:3, 3]


def ball(shape, affine):
    return np.linalg.norm(world(shape, affine) - LESION_CENTRE, axis=-1) <= LESION_RADIUS


def phantom_ct(shape=CT_SHAPE, affine=CT_AFFINE):
    rng = np.random.default_rng(3)
    r = np.linalg.norm(world(shape, affine)[..., :2], axis=-1)
    ct = np.where(r < 28.0, 40.0, -1000.0) + rng.integers(-20, 20, size=shape)
    return np.where(ball(shape, affine), 60.0, ct)


def exact_pet(shape=CT_SHAPE, affine=CT_AFFINE):
    """SUV n / 4 / 1024 (n integer < 2**15): Bq/mL n / 4 stored exactly as n with RescaleSlope 0.25."""
    rng = np.random.default_rng(4)
    n = rng.integers(0, 8000, size=shape) + np.where(ball(shape, affine), 20000, 0)
    return n / 4.0 / 1024.0  # background SUV < 2, lesion > 4.8


@pytest.fixture(scope="module")
def veloxseg_ckpt(tmp_path_factory):
    """A small VeloxSeg (random weights) with the autopet channel order, CT normalisation and cropping."""
    torch.manual_seed(0)
    model = VeloxSeg(in_channels=[1, 1], out_channels=2, img_size=(32, 32, 32))
    plan = {"channel_names": ["PET", "CT"], "spacing": [2.0, 2.0, 3.0], "patch_size": [32, 32, 32],
            "normalization": [{"scheme": "zscore"},
                              {"scheme": "ct", "lower": -1000.0, "upper": 200.0, "mean": 0.0, "std": 300.0}],
            "crop_foreground": True, "ct_body_threshold": -500.0}
    path = tmp_path_factory.mktemp("ckpt") / "veloxseg.pt"
    save_checkpoint(path, {"model_name": "veloxseg", "model_kwargs": model.hparams, "state_dict": model.state_dict(),
                           "labels": {"background": 0, "lesion": 1}, "channel_names": ["PET", "CT"], "plan": plan})
    return str(path)


@pytest.fixture(scope="module")
def oracle_ckpt(tmp_path_factory):
    plan = {"channel_names": ["PET", "CT"], "spacing": [2.0, 2.0, 3.0], "patch_size": [32, 32, 32],
            "normalization": [{"scheme": "none"}] * 2, "crop_foreground": False}
    path = tmp_path_factory.mktemp("ckpt") / "oracle.pt"
    save_checkpoint(path, {"model_name": "test-pet-oracle", "model_kwargs": {"channel": 0, "threshold": 3.0},
                           "state_dict": PetOracle().state_dict(), "labels": {"background": 0, "tumour": 1},
                           "channel_names": ["PET", "CT"], "plan": plan})
    return str(path)


@pytest.fixture(scope="module")
def exact_study(tmp_path_factory):
    """PET and CT on one grid with exactly representable values, and the same case as NIfTI."""
    root = tmp_path_factory.mktemp("exact")
    ct, pet = phantom_ct(), exact_pet()
    write_pet_ct_study(root / "patient_a", ct, CT_AFFINE, pet, CT_AFFINE, EXACT_DOSE, pet_slope=0.25)
    write_nifti(root / "nifti" / "patient_a_0000.nii.gz", pet.astype(np.float32), CT_AFFINE)  # PET first (autopet)
    write_nifti(root / "nifti" / "patient_a_0001.nii.gz", ct.astype(np.float32), CT_AFFINE)
    return root


@pytest.fixture(scope="module")
def ball_study(tmp_path_factory):
    """PET on a coarser grid than CT (the usual case), a lesion of SUV 8 in a background of 1."""
    root = tmp_path_factory.mktemp("ball")
    pet = np.where(ball(PET_SHAPE, PET_AFFINE), 8.0, 1.0)
    write_pet_ct_study(root / "study", phantom_ct(), CT_AFFINE, pet, PET_AFFINE)
    return root / "study"


@pytest.fixture(scope="module")
def nifti_labels(tmp_path_factory, exact_study, veloxseg_ckpt):
    """The small VeloxSeg's prediction of the NIfTI case (once per module)."""
    out = tmp_path_factory.mktemp("from_nifti")
    assert main(["predict", "-m", veloxseg_ckpt, "-i", str(exact_study / "nifti"), "-o", str(out), "--quiet"]) == 0
    return labels_of(out / "patient_a.nii.gz")


def labels_of(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_dicom_study_converts_to_exactly_the_equivalent_nifti_voxels(exact_study):
    from veloxseg.dicom import find_studies, load_channels, match_channels

    (study,) = find_studies(exact_study / "patient_a")
    pet, ct = load_channels(match_channels(study.series, ["PET", "CT"], study.folder), ["PET", "CT"]).volumes
    for vol, c in ((pet, 0), (ct, 1)):
        img = nib.load(str(exact_study / "nifti" / f"patient_a_000{c}.nii.gz"))
        assert np.array_equal(vol.array, np.asarray(img.dataobj)) and np.array_equal(vol.affine, img.affine)


def test_study_folder_gives_the_labels_of_the_equivalent_nifti(tmp_path, exact_study, veloxseg_ckpt, nifti_labels):
    out_dicom = tmp_path / "from_dicom"
    assert main(["predict", "-m", veloxseg_ckpt, "-i", str(exact_study / "patient_a"), "-o", str(out_dicom),
                 "--quiet"]) == 0
    from_dicom, affine_dicom = labels_of(out_dicom / "patient_a.nii.gz")
    from_nifti, affine_nifti = nifti_labels
    assert from_dicom.shape == CT_SHAPE
    assert 0 < from_dicom.sum() < from_dicom.size  # the random network predicts both classes: a real comparison
    assert np.array_equal(from_dicom, from_nifti)
    assert np.array_equal(affine_dicom, affine_nifti) and np.allclose(affine_dicom, CT_AFFINE)


def test_series_folders_in_channel_order(tmp_path, exact_study, veloxseg_ckpt, nifti_labels, capsys):
    study = exact_study / "patient_a"
    assert main(["predict", "-m", veloxseg_ckpt, "-i", str(study / "PET"), str(study / "CT"), "-o",
                 str(tmp_path / "out"), "--quiet"]) == 0
    assert np.array_equal(labels_of(tmp_path / "out" / "patient_a.nii.gz")[0], nifti_labels[0])
    # the wrong order is a one-line error naming the series
    capsys.readouterr()
    assert main(["predict", "-m", veloxseg_ckpt, "-i", str(study / "CT"), str(study / "PET"), "-o",
                 str(tmp_path / "bad"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "channel PET needs a PT series, this one is CT" in err
    assert not (tmp_path / "bad").exists()


def test_dicom_seg_and_stats_land_on_the_lesion(tmp_path, ball_study, oracle_ckpt):
    import highdicom as hd
    import pydicom

    out = tmp_path / "out"
    assert main(["predict", "-m", oracle_ckpt, "-i", str(ball_study), "-o", str(out), "--output-type", "both",
                 "--stats", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME) == ["study.nii.gz", "study_seg.dcm", "study_stats.json"]
    labels, affine = labels_of(out / "study.nii.gz")
    assert labels.shape == CT_SHAPE and np.allclose(affine, CT_AFFINE)
    truth = ball(CT_SHAPE, CT_AFFINE)
    dice = 2 * (truth & (labels == 1)).sum() / (truth.sum() + (labels == 1).sum())
    assert dice > 0.85  # PET on a 4 mm grid resampled onto CT's 2x2x3 mm: the lesion is where it should be
    # DICOM-SEG: highdicom and pydicom read it back, on the CT's slices, named after the checkpoint's labels
    ct = load_series([s for s in find_series(ball_study / "CT")][0])
    assert np.array_equal(read_segmentation_labels(out / "study_seg.dcm", ct.headers), labels)
    seg = hd.seg.segread(str(out / "study_seg.dcm"))
    assert seg.get_segment_description(1).segment_label == "tumour"
    ds = pydicom.dcmread(out / "study_seg.dcm")
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.series.uid
    assert ds.StudyInstanceUID == ct.headers[0].StudyInstanceUID
    assert len(ds.SegmentSequence) == 1 and ds.SegmentSequence[0].RecommendedDisplayCIELabValue
    # statistics: volume, one lesion, SUV values of a lesion of SUV 8
    stats = json.loads((out / "study_stats.json").read_text())
    lesion = stats["labels"]["tumour"]
    voxel_ml = 2.0 * 2.0 * 3.0 / 1000.0
    assert lesion["components"] == 1 and lesion["volume_ml"] == pytest.approx(labels.sum() * voxel_ml)
    assert lesion["volume_ml"] == pytest.approx(4 / 3 * np.pi * LESION_RADIUS ** 3 / 1000, rel=0.25)
    assert 7.0 < lesion["suv_max"] <= 8.0 + 1e-4 and 3.0 < lesion["suv_mean"] <= lesion["suv_max"]
    assert stats["total"]["tmtv_ml"] == pytest.approx(lesion["volume_ml"])
    assert stats["total"]["tlg"] == pytest.approx(lesion["suv_mean"] * lesion["volume_ml"])
    assert "SUVbw" in stats["pet"]["values"] and stats["pet"]["channel"] == "PET"
    assert np.allclose(lesion["lesions"][0]["centroid_ras_mm"], LESION_CENTRE, atol=2.0)


def test_dicom_seg_only_writes_no_nifti_and_continue_skips(tmp_path, ball_study, oracle_ckpt, capsys):
    out = tmp_path / "out"
    args = ["predict", "-m", oracle_ckpt, "-i", str(ball_study), "-o", str(out), "--output-type", "dicom-seg"]
    assert main(args + ["--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME) == ["study_seg.dcm"]
    before = (out / "study_seg.dcm").stat().st_mtime_ns
    assert main(args + ["--continue"]) == 0
    assert "skipped 1 case(s) whose DICOM-SEG exists" in capsys.readouterr().out
    assert (out / "study_seg.dcm").stat().st_mtime_ns == before


def test_temporary_folder_is_removed_after_success_and_failure(tmp_path, ball_study, oracle_ckpt, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(["predict", "-m", oracle_ckpt, "-i", str(ball_study), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert list(scratch.iterdir()) == []
    assert main(["predict", "-m", oracle_ckpt, "-i", str(ball_study / "CT"), "-o", str(tmp_path / "bad"),
                 "--quiet"]) == 1  # a CT alone: no PET series for the PET channel
    assert list(scratch.iterdir()) == []


def test_dicom_seg_of_nifti_input_is_a_clear_error(tmp_path, exact_study, oracle_ckpt, capsys):
    assert main(["predict", "-m", oracle_ckpt, "-i", str(exact_study / "nifti"), "-o", str(tmp_path / "out"),
                 "--output-type", "dicom-seg", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "needs DICOM input" in err and err.count("\n") == 1


def test_stats_of_nifti_input_say_what_the_pet_values_are(tmp_path, exact_study, oracle_ckpt):
    out = tmp_path / "out"
    assert main(["predict", "-m", oracle_ckpt, "-i", str(exact_study / "nifti"), "-o", str(out), "--stats",
                 "--quiet"]) == 0
    stats = json.loads((out / "patient_a_stats.json").read_text())
    assert "does not check their units" in stats["pet"]["values"]
    labels = labels_of(out / "patient_a.nii.gz")[0]
    pet = nib.load(str(exact_study / "nifti" / "patient_a_0000.nii.gz")).get_fdata()
    lesion = stats["labels"]["tumour"]
    assert lesion["suv_max"] == pytest.approx(float(pet[labels == 1].max()), rel=1e-6)
    assert lesion["suv_mean"] == pytest.approx(float(pet[labels == 1].mean()), rel=1e-5)


def test_folder_of_two_studies_gives_two_cases(tmp_path, oracle_ckpt):
    pet = np.where(ball(PET_SHAPE, PET_AFFINE), 8.0, 1.0)
    for name in ("visit1", "visit2"):
        write_pet_ct_study(tmp_path / "studies" / name / "dicom", phantom_ct(), CT_AFFINE, pet, PET_AFFINE)
    assert main(["predict", "-m", oracle_ckpt, "-i", str(tmp_path / "studies"), "-o", str(tmp_path / "out"),
                 "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != MANIFEST_NAME) == ["visit1_dicom.nii.gz", "visit2_dicom.nii.gz"]
