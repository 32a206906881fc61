"""``train --modality-dropout``: never every channel group dropped, teacher terms for what is present, the plan
records it; ``predict`` with a channel file absent works with such a model and fails clearly without."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from veloxseg.checkpoint import load_checkpoint, save_checkpoint
from veloxseg.cli import main
from veloxseg.data.demo import write_demo_dataset
from veloxseg.inference import Predictor
from veloxseg.losses import VeloxSegLoss
from veloxseg.networks import VeloxSeg
from veloxseg.training import ModelTrainer, TrainConfig
from veloxseg.training.modality import blocks_present, channel_groups, draw_keep, drop_channels


@pytest.mark.parametrize("in_channels", [[1, 1], [2], [1, 1, 1], [2, 1]])
@pytest.mark.parametrize("p", [0.3, 0.9])
def test_dropout_never_drops_every_group(in_channels, p):
    groups = channel_groups(in_channels)
    assert groups == [[c] for c in range(sum(in_channels))]  # MRI sequences of one block are dropped one by one
    g = torch.Generator().manual_seed(0)
    keep = draw_keep(20000, groups, p, generator=g)
    assert keep.shape == (20000, sum(in_channels))
    assert keep.any(1).all()  # never all of them
    n = len(groups)
    # each group is dropped with probability p, except that an all-dropped draw keeps one group at random
    expected = p - p**n / n
    np.testing.assert_allclose((~keep).float().mean(0).numpy(), expected, atol=0.015)
    assert (~keep).any()


def test_drop_channels_and_blocks_present():
    keep = torch.tensor([[True, False, True], [False, False, True]])
    x = torch.ones(2, 3, 4, 4, 4)
    y = drop_channels(x, keep)
    assert y[0, 1].abs().sum() == 0 and y[1, :2].abs().sum() == 0 and (y[0, 0] == 1).all() and (y[1, 2] == 1).all()
    # an MRI block of 2 channels is present while one of its sequences is
    assert blocks_present(keep, [2, 1]).tolist() == [[True, True], [False, True]]


def test_teacher_terms_count_only_what_is_present():
    torch.manual_seed(0)
    net = VeloxSeg(in_channels=[1, 1], out_channels=2, img_size=[32, 32, 32]).train()
    x = torch.randn(2, 2, 32, 32, 32)
    y = torch.randint(0, 2, (2, 1, 32, 32, 32))
    out = net(x)
    loss = VeloxSegLoss()
    full = loss(out, y, x)
    every = torch.ones(2, 2, dtype=torch.bool)
    with loss.presence(every, every):
        same = loss(out, y, x)
    torch.testing.assert_close(same.reconstruction, full.reconstruction)
    torch.testing.assert_close(same.sdkt, full.sdkt)
    keep = torch.tensor([[True, False], [True, True]])  # sample 0 lacks the second modality
    with loss.presence(keep, keep):
        part = loss(out, y, x)
    se = (out.reconstruction - x).square()
    torch.testing.assert_close(part.reconstruction, (se[0, 0].sum() + se[1].sum()) / (3 * se[0, 0].numel()))
    pairs = [(b, m) for b in range(2) for m in range(2) if keep[b, m]]
    gram = torch.stack([(out.gram_teachers[m][b] - out.gram_student[b]).square().mean() for b, m in pairs]).mean()
    torch.testing.assert_close(part.sdkt, gram)


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory):
    """A VeloxSeg trained briefly with --modality-dropout 0.8 on demo data; the inputs its network saw."""
    root = tmp_path_factory.mktemp("dropout")
    data = write_demo_dataset(root / "data", cases=3, seed=4, test_cases=1)
    trainer = ModelTrainer(TrainConfig(dataset=str(data), output=str(root / "run"), epochs=1, iterations=4,
                                       patch_size=[32, 32, 32], batch_size=1, val_fraction=0, threads=1,
                                       progress=False, warmup_epochs=1, modality_dropout=0.8))
    trainer.initialize()
    seen = []
    trainer.network.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().abs().flatten(2).amax(2)) if m.training else None)
    trainer.run_training()
    return data, root / "run", torch.cat(seen)


def test_training_zeroes_channels_and_records_the_dropout(dropout_run):
    _, run, seen = dropout_run
    present = seen > 0  # (samples, channels): a dropped channel is exactly zero
    assert present.any(1).all() and not present.all()
    best = load_checkpoint(run / "checkpoint_best.pt")
    assert best["plan"]["modality_dropout"] == 0.8 and best["plan"]["modality_groups"] == [[0], [1]]
    assert json.loads((run / "plan.json").read_text())["modality_dropout"] == 0.8
    assert json.loads((run / "run_info.json").read_text())["modality_dropout"] == 0.8


@pytest.mark.parametrize("absent", [1, 0])  # PET missing (CT-only follow-up), CT missing
def test_predict_with_a_channel_missing_runs_with_it_zeroed(dropout_run, tmp_path, absent, capsys, caplog):
    data, run, _ = dropout_run
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(data / "imagesTs" / f"demo_003_000{1 - absent}.nii.gz", folder / f"fu_000{1 - absent}.nii.gz")
    ckpt = run / "checkpoint_best.pt"
    predictor = Predictor.from_checkpoint(ckpt, engine="eager")
    inputs = []
    predictor.model.engine.module.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    from veloxseg.inference import cases_from_folder, predict_cases

    cases = cases_from_folder(folder, predictor.model.channel_names, allow_missing=True)
    assert cases[0].missing == (absent,) and len(cases[0].channels) == 1
    summary = predict_cases(predictor, cases, tmp_path / "out", progress=False)
    assert summary.predicted == ["fu"] and not summary.failed
    x = torch.cat(inputs)
    assert x[:, absent].abs().max() == 0 and x[:, 1 - absent].abs().max() > 0  # zeroed after normalisation
    name = ["CT", "PET"][absent]
    assert f"channel {absent} ({name}) missing: predicted with it zeroed" in caplog.text
    side = json.loads((tmp_path / "out" / "fu.json").read_text())
    assert side["case"] == "fu" and side["missing_channels"] == [{"index": absent, "name": name}]
    # the command line does the same and says so on the console
    caplog.clear()
    assert main(["predict", "-m", str(ckpt), "-i", str(folder), "-o", str(tmp_path / "cli"), "--engine", "eager"]) == 0
    assert f"({name}) missing" in caplog.text + capsys.readouterr().err
    assert (tmp_path / "cli" / "fu.nii.gz").is_file() and (tmp_path / "cli" / "fu.json").is_file()


def test_predict_with_a_channel_missing_fails_clearly_without_dropout_training(dropout_run, tmp_path, capsys):
    data, run, _ = dropout_run
    ckpt = load_checkpoint(run / "checkpoint_best.pt")
    plan = dict(ckpt["plan"])
    plan.pop("modality_dropout")
    plan.pop("modality_groups")
    ckpt.pop("tensor_sha256")
    save_checkpoint(tmp_path / "plain.pt", {**ckpt, "plan": plan})
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(data / "imagesTs" / "demo_003_0000.nii.gz", folder / "fu_0000.nii.gz")
    assert main(["predict", "-m", str(tmp_path / "plain.pt"), "-i", str(folder), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "fu_0001.nii.gz: channel file missing for case fu (channel 1, PET)" in err
    assert "not trained to segment with a channel missing" in err and "--modality-dropout" in err
    assert not (tmp_path / "out").exists()
