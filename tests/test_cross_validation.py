"""Cross-validation end to end on demo data: ``train --fold all`` (shared nnU-Net splits, resume per fold,
``--splits``) and fold ensembles in ``predict`` (the mean of the folds' probabilities, labels its argmax)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from veloxseg.cli import main
from veloxseg.data.demo import write_demo_dataset
from veloxseg.inference import EnsemblePredictor, Predictor
from veloxseg.io import write_nifti

TINY = ["--epochs", "1", "--iterations", "2", "--patch-size", "32", "32", "32", "--batch-size", "1",
        "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    """4 demo cases trained as 2 folds (1 epoch each), and one held-out case cropped small."""
    root = tmp_path_factory.mktemp("cv")
    data = write_demo_dataset(root / "data", cases=4, seed=2, test_cases=1)
    assert main(["train", str(data), "--output", str(root / "run"), "--fold", "all", "--num-folds", "2", *TINY]) == 0
    images = root / "test"
    for c in (0, 1):
        img = nib.load(str(data / "imagesTs" / f"demo_004_000{c}.nii.gz"))
        write_nifti(images / f"small_000{c}.nii.gz", np.asarray(img.dataobj)[24:72, 16:64, 8:40], img.affine)
    return data, root / "run", images


def case_array(images):
    imgs = [nib.load(str(images / f"small_000{c}.nii.gz")) for c in (0, 1)]
    return np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs]), imgs[0].affine


def test_fold_all_trains_every_fold_from_one_shared_nnunet_split(cv, capsys):
    data, run, _ = cv
    splits = json.loads((run / "splits.json").read_text())
    assert isinstance(splits, list) and len(splits) == 2 and all(set(s) == {"train", "val"} for s in splits)
    vals = [n for s in splits for n in s["val"]]
    assert sorted(vals) == [f"demo_{i:03d}" for i in range(4)]  # every case validated exactly once
    for k in (0, 1):
        assert json.loads((run / f"fold_{k}" / "splits.json").read_text()) == splits[k]
        info = json.loads((run / f"fold_{k}" / "run_info.json").read_text())
        assert info["fold"] == k and info["num_folds"] == 2
        assert (run / f"fold_{k}" / "checkpoint_best.pt").is_file()
    summary = json.loads((run / "folds.json").read_text())
    assert [f["status"] for f in summary["folds"]] == ["trained", "trained"]
    # a second start without --resume or --overwrite is refused
    assert main(["train", str(data), "--output", str(run), "--fold", "all", "--num-folds", "2", *TINY]) == 1
    assert "already holds a cross-validation run" in capsys.readouterr().err


def test_fold_all_resume_skips_finished_folds_and_resumes_interrupted_ones(cv, tmp_path, capsys):
    data, run, _ = cv
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "fold_1" / "run_info.json").unlink()  # fold 1 interrupted after its first epoch
    before = (copy / "fold_0" / "checkpoint_last.pt").read_bytes()
    assert main(["train", str(data), "--output", str(copy), "--fold", "all", "--resume", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "fold 0: skipped (finished earlier)" in out and "fold 1: resumed, 2 epochs" in out
    assert (copy / "fold_0" / "checkpoint_last.pt").read_bytes() == before
    rows = (copy / "fold_1" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2"]


def test_nnunet_splits_file_carries_over(cv, tmp_path, capsys):
    data, _, _ = cv
    custom = [{"train": ["demo_000", "demo_001", "demo_002"], "val": ["demo_003"]},
              {"train": ["demo_001", "demo_002", "demo_003"], "val": ["demo_000"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(custom))
    assert main(["train", str(data), "--output", str(tmp_path / "f1"), "--fold", "1", "--splits",
                 str(tmp_path / "splits_final.json"), *TINY]) == 0
    assert json.loads((tmp_path / "f1" / "splits.json").read_text()) == custom[1]
    bad = [{"train": ["demo_000", "nobody"], "val": ["demo_003"]}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["train", str(data), "--output", str(tmp_path / "f2"), "--fold", "all", "--splits",
                 str(tmp_path / "bad.json"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and "nobody" in err


@pytest.mark.parametrize("tta", [False, True])
def test_ensemble_probabilities_are_the_mean_of_the_folds(cv, tta):
    _, run, images = cv
    image, affine = case_array(images)
    if tta:
        image = image[:, :32, :32, :24]
    folds = [Predictor.from_checkpoint(run / f"fold_{k}" / "checkpoint_best.pt", engine="eager", tta=tta)
             for k in (0, 1)]
    ensemble = Predictor.from_checkpoint(run, engine="eager", tta=tta)  # the run folder: both folds
    assert isinstance(ensemble, EnsemblePredictor) and len(ensemble.members) == 2
    assert len(ensemble.groups()) == 1  # equal plans: one preprocessing pass per case
    mean = ensemble.probabilities(image, affine)
    single = [EnsemblePredictor([f]).probabilities(image, affine) for f in folds]
    np.testing.assert_allclose(mean, (single[0] + single[1]) / 2, atol=1e-5)
    # each fold's probabilities are what the single-model predictor gives (it stores float16)
    alone = folds[0].predict_case_array(image, affine, keep_probabilities=True)
    np.testing.assert_allclose(single[0], alone.probabilities.astype(np.float32), atol=2e-3)
    # without sharing the preprocessing (each fold its own pass and inverse): the same numbers
    separate = EnsemblePredictor(folds, share_preprocessing=False)
    np.testing.assert_allclose(separate.probabilities(image, affine), mean, atol=1e-5)
    result = ensemble.predict_case_array(image, affine, keep_probabilities=True)
    np.testing.assert_array_equal(result.labels, mean.argmax(0))
    assert not np.array_equal(single[0], single[1])  # two different models, so the mean is a real test


def test_predict_cli_ensembles_a_run_folder_files_or_some_folds(cv, tmp_path, capsys):
    _, run, images = cv
    ckpts = [str(run / f"fold_{k}" / "checkpoint_best.pt") for k in (0, 1)]
    assert main(["predict", "-m", str(run), "-i", str(images), "-o", str(tmp_path / "ens"), "--engine", "eager",
                 "--save-probabilities"]) == 0
    assert "ensemble of 2 models (fold_0/checkpoint_best.pt, fold_1/checkpoint_best.pt)" in capsys.readouterr().out
    labels = np.asarray(nib.load(str(tmp_path / "ens" / "small.nii.gz")).dataobj)
    with np.load(tmp_path / "ens" / "small.npz") as z:
        probs = z["probabilities"].astype(np.float32)
    image, affine = case_array(images)
    expected = Predictor.from_checkpoint([*ckpts], engine="eager").probabilities(image, affine)
    np.testing.assert_allclose(probs, expected, atol=1e-3)
    np.testing.assert_array_equal(labels, expected.argmax(0))

    assert main(["predict", "-m", *ckpts, "-i", str(images), "-o", str(tmp_path / "files"), "--engine", "eager"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "files" / "small.nii.gz")).dataobj), labels)

    assert main(["predict", "-m", str(run), "--folds", "1", "-i", str(images), "-o", str(tmp_path / "one"),
                 "--engine", "eager"]) == 0
    fold1 = Predictor.from_checkpoint(ckpts[1], engine="eager").predict_case_array(image, affine).labels
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "one" / "small.nii.gz")).dataobj), fold1)

    capsys.readouterr()
    assert main(["predict", "-m", str(run), "--folds", "0", "3", "-i", str(images), "-o", str(tmp_path / "x")]) == 1
    assert "fold_3/checkpoint_best.pt: not found" in capsys.readouterr().err
    assert main(["predict", "-m", ckpts[0], "--folds", "0", "-i", str(images), "-o", str(tmp_path / "y")]) == 1
    assert "--folds picks folds of a run folder" in capsys.readouterr().err


def test_fold_all_with_a_time_budget_takes_the_budget_recipe_like_a_single_run(tmp_path, monkeypatch):
    """``--fold all --time-budget M`` trains every fold with the recipe ``--fold K --time-budget M`` would use."""
    from veloxseg.cli import train as train_cli
    from veloxseg.training import folds

    seen = {}

    def capture(config, **kwargs):
        seen["config"] = config
        return []

    monkeypatch.setattr(folds, "train_folds", capture)
    args = ["train", str(tmp_path / "data"), "--output", str(tmp_path / "cv"), "--time-budget", "3", "--lr", "1e-3"]
    assert main([*args, "--fold", "all"]) == 0
    cv_config = seen["config"]
    single = train_cli.build_config(train_cli_args([*args, "--fold", "0"]))
    assert cv_config.iterations == single.iterations == 50 and cv_config.lr == single.lr == 1e-3  # the flag wins
    assert cv_config.budget_recipe == single.budget_recipe and "lr" not in cv_config.budget_recipe
    assert cv_config.val_every == single.val_every


def train_cli_args(argv):
    import argparse

    from veloxseg.cli import train as train_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    train_cli.register(sub)
    return parser.parse_args(argv)
