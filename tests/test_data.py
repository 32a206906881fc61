"""Datasets: validation names every bad file, statistics match numpy, preprocessing inverts, demo data."""

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from veloxseg.checkpoint import load_checkpoint, save_checkpoint
from veloxseg.data.dataset import load_dataset, validate_dataset
from veloxseg.data.plan import choose_patch_size, compute_fingerprint, make_plan, target_spacing
from veloxseg.data.preprocessing import inference_transforms, normalize_array
from veloxseg.data.split import split_cases
from veloxseg.errors import InputError
from veloxseg.io import read_nifti, write_nifti

HECKTOR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "Dataset501_HecktorMini"
AFFINE = np.diag([-2.0, -2.0, 3.0, 1.0])


def tiny_case(seed: int, shape=(40, 36, 32)):
    """CT (HU) with a body and a lesion, PET (SUV), label: small enough for fast tests."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    c = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    body = (((idx[0] - c[0]) / 17) ** 2 + ((idx[1] - c[1]) / 14) ** 2) <= 1
    centre = c + rng.uniform(-5, 5, size=(3, 1, 1, 1)).astype(np.float32)
    lesion = ((idx - centre) ** 2).sum(0) <= rng.uniform(3.5, 5.5) ** 2
    ct = np.where(body, 40.0, -1000.0) + np.where(lesion, 30.0, 0.0) + rng.normal(0, 15, shape)
    pet = np.where(body, 1.0, 0.05) + np.where(lesion, 6.0, 0.0) + rng.normal(0, 0.1, shape)
    return ct.astype(np.float32), np.clip(pet, 0, None).astype(np.float32), lesion.astype(np.uint8)


def make_tiny_dataset(root: Path, n_cases: int = 4, shape=(40, 36, 32)) -> Path:
    """An nnU-Net v2 raw dataset of ``n_cases`` tiny PET/CT cases."""
    for i in range(n_cases):
        ct, pet, lab = tiny_case(i, shape)
        write_nifti(root / "imagesTr" / f"case{i}_0000.nii.gz", ct, AFFINE)
        write_nifti(root / "imagesTr" / f"case{i}_0001.nii.gz", pet, AFFINE)
        write_nifti(root / "labelsTr" / f"case{i}.nii.gz", lab, AFFINE)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return root


def test_validation_reports_every_problem_naming_the_file(tmp_path):
    root = make_tiny_dataset(tmp_path / "ds", n_cases=7)
    img, lab = root / "imagesTr", root / "labelsTr"
    (img / "case0_0001.nii.gz").unlink()                                      # a channel file missing
    ct, pet, label = tiny_case(1, (40, 36, 30))
    write_nifti(img / "case1_0001.nii.gz", pet, AFFINE)                        # shape differs from channel 0
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    write_nifti(lab / "case2.nii.gz", tiny_case(2)[2], shifted)               # affine differs
    bad_values = tiny_case(3)[2]
    bad_values[0, 0, 0] = 7
    write_nifti(lab / "case3.nii.gz", bad_values, AFFINE)                     # label value not in labels
    (img / "case4_0000.nii.gz").write_bytes(b"this is not a NIfTI file")      # unreadable
    nan_ct = tiny_case(5)[0]
    nan_ct[3, 3, 3] = np.nan
    write_nifti(img / "case5_0000.nii.gz", nan_ct, AFFINE)                    # NaN voxels
    with pytest.raises(InputError) as info:
        validate_dataset(root)
    msg = str(info.value)
    lines = msg.splitlines()[1:]
    expected = {
        "case0_0001.nii.gz": "file not found",
        "case1_0001.nii.gz": "shape",
        "case2.nii.gz": "affine differs",
        "case3.nii.gz": "label values 7",
        "case4_0000.nii.gz": "not a readable NIfTI",
        "case5_0000.nii.gz": "NaN",
    }
    for name, problem in expected.items():
        assert any(name in line and problem in line for line in lines), (name, problem, msg)
    assert "case6" not in msg  # the good case is not reported
    assert msg.startswith(f"dataset {root} has 6 problems")


def test_validation_no_cases_and_missing_json(tmp_path):
    root = make_tiny_dataset(tmp_path / "ds", n_cases=1)
    for f in (root / "labelsTr").iterdir():
        f.unlink()
    with pytest.raises(InputError, match="no cases"):
        validate_dataset(root)
    (root / "dataset.json").unlink()
    with pytest.raises(InputError, match="dataset.json: file not found"):
        load_dataset(root)


@pytest.mark.skipif(not HECKTOR.is_dir(), reason="shared HecktorMini data not present")
def test_real_hecktor_dataset_validates():
    ds = validate_dataset(HECKTOR)
    assert [len(c.images) for c in ds.cases] == [2] * 6
    assert ds.channel_names == ["CT", "PET"] and ds.num_classes == 2


def test_ct_statistics_and_normalisation_match_numpy(tmp_path):
    root = make_tiny_dataset(tmp_path / "ds", n_cases=3)
    ds = validate_dataset(root)
    fp = compute_fingerprint(ds)
    cts = [read_nifti(c.images[0])[0] for c in ds.cases]
    labels = [read_nifti(c.label)[0] > 0 for c in ds.cases]
    fg = np.concatenate([ct[lab] for ct, lab in zip(cts, labels)]).astype(np.float64)
    st = fp["ct_statistics"]["0"]
    assert st["count"] == fg.size
    np.testing.assert_allclose([st["mean"], st["std"], st["lower"], st["upper"]],
                               [fg.mean(), fg.std(), np.percentile(fg, 0.5), np.percentile(fg, 99.5)], rtol=1e-6)
    plan = make_plan(ds, fp)
    assert plan["normalization"][1] == {"scheme": "zscore"}  # PET: per-image z-score
    ct, pet = cts[0], read_nifti(ds.cases[0].images[1])[0]
    out = normalize_array(np.stack([ct, pet]), plan["normalization"]).numpy()
    expected_ct = (np.clip(ct, st["lower"], st["upper"]) - st["mean"]) / st["std"]
    np.testing.assert_allclose(out[0], expected_ct, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[1], (pet - pet.mean()) / pet.std(), rtol=1e-4, atol=1e-4)


def test_plan_spacing_and_patch_rules():
    # nnU-Net: a strongly anisotropic axis gets the 10th percentile of its spacings
    spacings = [[0.8, 0.8, 5.0], [0.8, 0.8, 4.0], [0.8, 0.8, 5.0], [0.8, 0.8, 3.0]]
    shapes = [[512, 512, 40]] * 4
    assert target_spacing(spacings, shapes) == pytest.approx([0.8, 0.8, np.percentile([5, 4, 5, 3], 10)])
    assert target_spacing([[1, 1, 1.5], [1, 1, 2.5]], [[100, 100, 80]] * 2) == [1.0, 1.0, 2.0]  # median
    patch = choose_patch_size([150, 140, 60])
    assert all(p % 32 == 0 for p in patch) and np.prod(patch) <= 96**3


def test_preprocessing_inverts_to_the_original_grid(tmp_path):
    root = make_tiny_dataset(tmp_path / "ds", n_cases=2)
    ds = validate_dataset(root)
    plan = make_plan(ds, compute_fingerprint(ds), spacing=[3.0, 3.0, 2.0], patch_size=[32, 32, 32])
    from monai.transforms import Invertd

    t = inference_transforms(plan)
    d = t({"image": [str(p) for p in ds.cases[0].images]})
    x = d["image"]
    assert x.shape[0] == 2 and x.shape[1] < 40  # cropped to the body and resampled
    d["pred"] = (x[1:2] > 2).float()  # the hot lesion, in the preprocessed grid
    inv = Invertd(keys="pred", transform=t, orig_keys="image", nearest_interp=True)(d)["pred"]
    label = read_nifti(ds.cases[0].label)[0]
    assert tuple(inv.shape[1:]) == label.shape
    np.testing.assert_allclose(np.asarray(inv.affine), AFFINE, atol=1e-4)
    got = inv[0].numpy() > 0.5
    dice = 2 * (got & (label > 0)).sum() / (got.sum() + (label > 0).sum())
    assert dice > 0.7, dice  # lands on the lesion in the original orientation


def test_split_fold_and_fraction():
    names = [f"c{i}" for i in range(10)]
    vals = [split_cases(names, fold=k)[1] for k in range(5)]
    assert sorted(sum(vals, [])) == sorted(names) and all(len(v) == 2 for v in vals)
    train, val = split_cases(names, val_fraction=0.2)
    assert len(val) == 2 and not set(train) & set(val)
    assert split_cases(names, fold=-1) == (sorted(names), [])


def test_io_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        read_nifti(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_nifti(bad)
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 1, 1] = np.inf
    write_nifti(tmp_path / "inf.nii.gz", arr, np.eye(4))
    with pytest.raises(InputError, match="inf.nii.gz: 1 voxels are NaN or infinite"):
        read_nifti(tmp_path / "inf.nii.gz")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    data, affine = read_nifti(tmp_path / "inf.nii.gz", check_finite=False)
    assert data.shape == (4, 4, 4) and np.allclose(affine, np.eye(4))


def test_checkpoint_load_errors(tmp_path):
    with pytest.raises(InputError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt: not a veloxseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "partial.pt", {"model_name": "veloxseg"})
    with pytest.raises(InputError, match="partial.pt: checkpoint lacks"):
        load_checkpoint(tmp_path / "partial.pt")


def test_demo_data_same_seed_same_bytes(tmp_path):
    from veloxseg.cli import main

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert main(["demo-data", str(tmp_path / "a"), "--cases", "1", "--seed", "3"]) == 0
    assert main(["demo-data", str(tmp_path / "b"), "--cases", "1", "--seed", "3"]) == 0
    a = digest(tmp_path / "a")
    assert a == digest(tmp_path / "b") and len(a) == 4
    ds = validate_dataset(tmp_path / "a")
    ct = nib.load(ds.cases[0].images[0])
    pet = read_nifti(ds.cases[0].images[1])[0]
    label = read_nifti(ds.cases[0].label)[0] > 0
    assert ct.get_data_dtype() == np.int16 and ct.header.get_zooms() == (4.0, 4.0, 6.0)
    hu = np.asarray(ct.dataobj)
    assert hu.min() <= -1000 and hu.max() >= 900  # air and bone
    assert label.sum() > 20 and pet[label].mean() > 2.5 * np.median(pet[hu > -500])  # lesions are hot
    assert pet[~label].max() > np.percentile(pet[label], 25)  # hot physiological uptake that is not a lesion


def test_resampling_runs_in_float32_so_its_inverse_does_too():
    """Spacing in float64 made predict's map back to the input grid need ~2x the memory (benchmarks/predict_memory.py:
    4.35 GB against 2.40 GB peak for a 2x480x480x320 case)."""
    from monai.data import MetaTensor

    from veloxseg.data.preprocessing import inference_transforms

    plan = {"channel_names": ["CT"], "spacing": [2.0, 2.0, 2.0], "patch_size": [16, 16, 16],
            "normalization": [{"scheme": "none"}], "crop_foreground": False}
    chain = inference_transforms(plan).transforms
    chain = [t for t in chain if type(t).__name__ not in ("LoadImaged", "EnsureChannelFirstd")]
    from monai.transforms import Compose

    out = Compose(chain)({"image": MetaTensor(torch.rand(1, 10, 12, 8), affine=torch.eye(4))})["image"]
    resample = [op for op in out.applied_operations if op["class"] == "SpatialResample"]
    assert resample and resample[0]["extra_info"]["dtype"] == "float32"
