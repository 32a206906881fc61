"""Training: outputs of a short run, exact --resume, and a 2-process torchrun (gloo) run."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_data import make_tiny_dataset
from veloxseg.checkpoint import build_model, load_checkpoint
from veloxseg.cli import main
from veloxseg.training import TrainConfig, Trainer

SMALL = dict(patch_size=[32, 32, 32], batch_size=1, val_fraction=0.25, val_every=1, threads=1,
             progress=False, lr=1e-3, warmup_epochs=1)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Tiny", n_cases=4)


def config(dataset: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(dataset=str(dataset), output=str(out), epochs=3, **{**SMALL, **kw})


def test_short_run_writes_checkpoints_csv_curves_and_resumes_exactly(tiny_dataset, tmp_path):
    # uninterrupted: 3 epochs
    full = Trainer(config(tiny_dataset, tmp_path / "full"))
    summary = full.run_training()
    out = tmp_path / "full"
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "metrics.csv", "curves.png", "plan.json",
                 "splits.json", "config.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(r["val_dice"] != "" and 0 <= float(r["val_dice"]) <= 1 for r in rows)
    assert summary["epochs"] == 3 and summary["best_epoch"] in (1, 2, 3)

    best = load_checkpoint(out / "checkpoint_best.pt")
    assert best["model_kwargs"]["texture_teachers"] is False and "training_state" not in best
    assert not any(k.startswith("teachers.") for k in best["state_dict"])
    assert best["labels"] == {"background": 0, "lesion": 1} and best["channel_names"] == ["CT", "PET"]
    assert best["plan"]["patch_size"] == [32, 32, 32] and best["plan"]["normalization"][0]["scheme"] == "ct"
    assert set(best["versions"]) == {"veloxseg", "torch", "monai"}
    model = build_model(best)
    assert not model.training and model.teachers is None
    assert model(torch.zeros(1, 2, 32, 32, 32)).shape == (1, 2, 32, 32, 32)

    # interrupted after epoch 1, then resumed from the CLI
    part = Trainer(config(tiny_dataset, tmp_path / "resumed"))
    part.run_training(stop_after=1)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")["training_state"]["epoch"] == 1
    assert main(["train", str(tiny_dataset), "--output", str(tmp_path / "resumed"), "--resume"]) == 0

    a = load_checkpoint(out / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")
    sa, sb = a["training_state"], b["training_state"]
    assert sa["epoch"] == sb["epoch"] == 3
    assert [r["epoch"] for r in sb["history"]] == [1, 2, 3]
    assert [r["lr"] for r in sa["history"]] == [r["lr"] for r in sb["history"]]
    assert sa["optimizer"]["param_groups"][0]["lr"] == sb["optimizer"]["param_groups"][0]["lr"]
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == 3
    opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        assert float(opt_a[k]["step"]) == float(opt_b[k]["step"])
        torch.testing.assert_close(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"], rtol=1e-4, atol=1e-8)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-5)
    for ra, rb in zip(sa["history"], sb["history"]):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)


def test_resume_without_a_run_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    assert main(["train", str(tiny_dataset), "--output", str(tmp_path / "none"), "--resume"]) == 1
    assert "config.json: not found" in capsys.readouterr().err


def test_train_reports_dataset_problems(tmp_path, capsys):
    root = make_tiny_dataset(tmp_path / "ds", n_cases=2)
    (root / "imagesTr" / "case1_0000.nii.gz").unlink()
    assert main(["train", str(root), "--output", str(tmp_path / "run"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "case1_0000.nii.gz: file not found" in err
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_torchrun_two_processes_gloo(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "veloxseg", "train", str(tiny_dataset), "--output", str(out), "--epochs", "2",
           "--patch-size", "32", "32", "32", "--batch-size", "1", "--val-fraction", "0.5", "--val-every", "1",
           "--iterations", "2",
           "--threads", "1", "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    last = load_checkpoint(out / "checkpoint_last.pt")
    assert last["training_state"]["world_size"] == 2 and last["training_state"]["epoch"] == 2
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2 and rows[-1]["val_dice"] != ""  # one table, written once (rank 0)
    model = build_model(load_checkpoint(out / "checkpoint_best.pt"))
    assert model(torch.zeros(1, 2, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_demo_end_to_end_smoke(tmp_path, capsys):
    """The README's first command, shrunk: generate, train briefly, predict held-out cases, score."""
    import json

    import numpy as np

    from veloxseg.io import read_nifti

    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--minutes", "1.1", "--cases", "2", "--test-cases", "1",
                 "--threads", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "held-out lesion Dice" in printed
    result = json.loads((out / "demo_result.json").read_text())
    assert list(result["per_case"]) == ["demo_002"] and 0.0 <= result["mean_dice"] <= 1.0
    pred, affine = read_nifti(out / "predictions" / "demo_002.nii.gz", dtype=np.uint8)
    ref, ref_affine = read_nifti(out / "Dataset900_DemoPETCT" / "labelsTs" / "demo_002.nii.gz", dtype=np.uint8)
    assert pred.shape == ref.shape and np.allclose(affine, ref_affine)
    assert set(np.unique(pred)) <= {0, 1}
    assert (out / "run" / "checkpoint_best.pt").is_file()


def test_bf16_training_on_a_cpu_runs_with_float32_weights_and_a_finite_loss(tiny_dataset, tmp_path):
    """Training and its sliding-window validation under bf16 autocast (the eval-mode fast kernels, which write into
    float32 buffers, step aside under autocast: they once failed there with a dtype error)."""
    trainer = Trainer(TrainConfig(dataset=str(tiny_dataset), output=str(tmp_path / "bf16"), epochs=1,
                                 **{**SMALL, "precision": "bf16", "val_every": 1}))
    assert trainer.cpu_bf16 and trainer.autocast().fast_dtype == torch.bfloat16
    trainer.run_training()
    rows = list(csv.DictReader(open(tmp_path / "bf16" / "metrics.csv")))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    assert 0.0 <= float(rows[0]["val_dice"]) <= 1.0  # validated under autocast
    assert all(p.dtype == torch.float32 for p in trainer.network.parameters())  # master weights stay fp32
    with pytest.raises(Exception, match="--precision must be fp32 or bf16"):
        Trainer(config(tiny_dataset, tmp_path / "bad", precision="fp16"))
