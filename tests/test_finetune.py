"""``veloxseg train --init-from``: the loading report, the lower starting loss, the record of the source, --freeze."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from veloxseg.checkpoint import load_checkpoint
from veloxseg.cli import main
from veloxseg.data.demo import write_demo_dataset
from veloxseg.errors import InputError
from veloxseg.io import write_nifti
from veloxseg.training import ModelTrainer, TrainConfig

SMALL = dict(patch_size=[32, 32, 32], batch_size=1, val_fraction=0, threads=1, progress=False, lr=2e-3,
             warmup_epochs=1)


def relabel_with_body(folder):
    """Give a demo dataset a different label set: lesion 1 and a new class, body 2 (CT > -500 HU)."""
    for lab in sorted((folder / "labelsTr").glob("*.nii.gz")):
        ct = nib.load(str(folder / "imagesTr" / f"{lab.name[:-7]}_0000.nii.gz"))
        lesion = np.asarray(nib.load(str(lab)).dataobj) > 0
        body = np.asarray(ct.dataobj) > -500
        write_nifti(lab, np.where(lesion, 1, np.where(body, 2, 0)).astype(np.uint8), ct.affine)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "lesion": 1, "body": 2}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A VeloxSeg trained briefly on demo data (2 classes), and a second demo dataset with 3 classes."""
    root = tmp_path_factory.mktemp("finetune")
    source = write_demo_dataset(root / "A", cases=3, seed=0)
    target = relabel_with_body(write_demo_dataset(root / "B", cases=3, seed=1))
    ModelTrainer(TrainConfig(dataset=str(source), output=str(root / "src"), epochs=3, iterations=6,
                             **SMALL)).run_training()
    return root / "src", target


def first_epoch(target, out, **kw):
    trainer = ModelTrainer(TrainConfig(dataset=str(target), output=str(out), epochs=1, iterations=4, seed=3,
                                       **{**SMALL, **kw}))
    trainer.run_training()
    return trainer, trainer.history[0]


def test_init_from_starts_lower_than_scratch_and_reports_the_head_as_skipped(pretrained, tmp_path):
    src, target = pretrained
    last = src / "checkpoint_last.pt"
    tuned, row = first_epoch(target, tmp_path / "tuned", init_from=str(last))
    _, scratch = first_epoch(target, tmp_path / "scratch")
    # the same seed draws the same crops; the transferred encoder, decoder and teachers start lower
    assert row["train_loss"] < scratch["train_loss"]
    assert row["rc_loss"] < scratch["rc_loss"]

    report = json.loads((tmp_path / "tuned" / "init_from.json").read_text())
    skipped = {s["name"] for s in report["skipped_shape_mismatch"]}
    assert {"head.conv.weight", "head.conv.bias"} <= skipped  # 2 classes -> 3: the head is re-initialised
    assert all(n.startswith(("head.", "ds_heads.")) for n in skipped)
    assert any(n.startswith("teachers.") for n in report["loaded"]) and report["newly_initialised"] == []
    assert report["sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    log = (tmp_path / "tuned" / "training_log.txt").read_text()
    assert "skipped (shape mismatch)" in log and "head.conv.weight (128, 16, 3, 3, 3) -> (192, 16, 3, 3, 3)" in log
    assert tuned.network.state_dict()["head.conv.weight"].shape[0] == 192


def test_deployed_source_leaves_teachers_fresh_and_cli_records_the_source(pretrained, tmp_path, capsys):
    src, target = pretrained
    best = src / "checkpoint_best.pt"
    out = tmp_path / "run"
    assert main(["train", str(target), "--output", str(out), "--epochs", "1", "--iterations", "2",
                 "--patch-size", "32", "32", "32", "--batch-size", "1", "--threads", "1", "--no-progress",
                 "--val-fraction", "0.34", "--init-from", str(best), "--freeze", "encoder"]) == 0
    printed = capsys.readouterr().out
    assert "newly initialised (not in the source): ds_heads.0" in printed and "teachers.0.*" in printed
    assert "deployed checkpoint" in printed and "--freeze encoder" in printed
    sha = hashlib.sha256(best.read_bytes()).hexdigest()
    info = json.loads((out / "run_info.json").read_text())
    assert info["init_from"]["path"] == str(best.resolve()) and info["init_from"]["sha256"] == sha
    assert info["init_from"]["frozen"] == "encoder" and "head.conv.weight" in info["init_from"]["skipped_shape_mismatch"]
    config = json.loads((out / "config.json").read_text())
    assert config["init_from"] == str(best.resolve()) and config["init_from_sha256"] == sha
    # --freeze encoder: the encoder is the source's after training, the decoder moved
    source_sd = load_checkpoint(best)["state_dict"]
    trained = load_checkpoint(out / "checkpoint_last.pt")["state_dict"]
    enc = [k for k in trained if k.startswith(("transformer.", "conv_stream."))]
    assert enc and all(torch.equal(trained[k], source_sd[k]) for k in enc)
    assert any(not torch.equal(trained[k], source_sd[k]) for k in trained if k.startswith("decoder."))


def test_init_from_problems_are_clear(pretrained, tmp_path, capsys):
    src, target = pretrained
    assert main(["train", str(target), "--output", str(tmp_path / "a"), "--init-from",
                 str(tmp_path / "nope.pt")]) == 1
    assert "nope.pt: checkpoint not found" in capsys.readouterr().err
    assert main(["train", str(target), "--output", str(tmp_path / "b"), "--freeze", "encoder"]) == 1
    assert "--freeze needs --init-from" in capsys.readouterr().err
    with pytest.raises(InputError, match="no tensor of this checkpoint"):
        first_epoch(target, tmp_path / "c", init_from=str(src / "checkpoint_best.pt"), model="unet")
