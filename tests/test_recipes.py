"""Training recipes: the authors' learning-rate curve, augmentation, clipping and split; default unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from monai.transforms import RandFlipd, RandRotated

from test_data import make_tiny_dataset
from veloxseg.data.preprocessing import training_transforms
from veloxseg.data.split import authors_split
from veloxseg.training import TrainConfig, Trainer
from veloxseg.training.recipes import RECIPES, get_recipe
from veloxseg.training.schedule import AuthorsWarmupCosine, WarmupCosine

PLAN = {"channel_names": ["CT", "PET"], "spacing": [1.0, 1.0, 3.0], "patch_size": [32, 32, 32],
        "normalization": [{"scheme": "zscore"}] * 2}


def authors_lrs(epochs: int = 300, warmup: int = 10, lr: float = 2.5e-4, min_lr: float = 6e-6) -> list[float]:
    """The rate of each epoch as their utils/train_*.py drives PyTorch's schedulers (and the final one)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr, weight_decay=0.01)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (e + 1) / warmup)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - warmup, eta_min=min_lr)
    rates = []
    for epoch in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        (warm if epoch < warmup else cosine).step()  # their select_scheduler / step_scheduler
    return rates + [opt.param_groups[0]["lr"]]


def test_authors_curve_matches_their_chained_schedulers():
    ours = AuthorsWarmupCosine(300, 10, 2.5e-4, 6e-6)
    theirs = authors_lrs()
    assert [ours.lr(e) for e in range(301)] == pytest.approx(theirs, rel=1e-9, abs=1e-15)
    assert ours.lr(0) == pytest.approx(2.5e-5) and ours.lr(9) == pytest.approx(2.5e-4)
    peak = max(range(300), key=ours.lr)
    assert peak == 10 and ours.lr(10) == pytest.approx(2.75e-4)  # the warm-up overshoots to 1.1x
    assert ours.lr(300) == pytest.approx(6e-6, abs=1e-15) and ours.lr(299) == pytest.approx(6e-6, abs=1e-8)
    default = WarmupCosine(300, 10, 2.5e-4, 6e-6)  # veloxseg's: peaks at the base rate, floor at the last epoch
    assert max(default.lr(e) for e in range(300)) == pytest.approx(2.5e-4) and default.lr(299) == pytest.approx(6e-6)


def test_authors_curve_without_warmup_and_after_shortening():
    assert AuthorsWarmupCosine(50, 0, 1e-3, 1e-5).lr(0) == pytest.approx(1e-3)
    sched = AuthorsWarmupCosine(300, 10, 2.5e-4, 6e-6)
    sched.epochs = 110  # the time budget shortens the run: the cosine follows
    assert sched.lr(60) == pytest.approx(6e-6 + (2.75e-4 - 6e-6) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_authors_transforms_rotate_about_the_last_axis_only_and_never_flip():
    _, random = training_transforms(PLAN, flips=get_recipe("authors").flips, rotate_about=2)
    assert not any(isinstance(t, RandFlipd) for t in random.transforms)
    (rotate,) = [t for t in random.transforms if isinstance(t, RandRotated)]
    r = rotate.rand_rotate
    assert r.range_x == (0.0, 0.0) and r.range_y == (0.0, 0.0)
    assert r.range_z == pytest.approx((-math.radians(15), math.radians(15)))
    _, default = training_transforms(PLAN)  # veloxseg's: flips on every axis, rotation about the coarsest
    assert sum(isinstance(t, RandFlipd) for t in default.transforms) == 3
    (rotate,) = [t for t in default.transforms if isinstance(t, RandRotated)]
    assert rotate.rand_rotate.range_z == pytest.approx((-math.radians(15), math.radians(15)))


def test_recipes_by_name():
    assert get_recipe("AUTHORS") is RECIPES["authors"]
    a, d = RECIPES["authors"], RECIPES["default"]
    assert (a.grad_clip, a.amp, a.flips, a.rotation_axis) == (None, False, False, "last")
    assert (d.grad_clip, d.amp, d.flips, d.rotation_axis) == (12.0, True, True, "coarsest")
    with pytest.raises(ValueError, match="default, authors"):
        get_recipe("paper")


def test_authors_split_rule():
    names = [f"case{i:02d}" for i in range(10)][::-1]
    train, val = authors_split(names)
    assert train == [f"case{i:02d}" for i in range(6)] and val == ["case06", "case07"]


def test_training_with_the_authors_recipe(tmp_path, monkeypatch):
    dataset = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=5)

    def no_clipping(*args, **kwargs):
        raise AssertionError("the authors' recipe clips no gradients")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", no_clipping)
    cfg = TrainConfig(dataset=str(dataset), output=str(tmp_path / "run"), epochs=3, warmup_epochs=1,
                      patch_size=[32, 32, 32], batch_size=1, threads=1, progress=False, lr=1e-3, min_lr=1e-5,
                      val_every=3, recipe="authors", split="authors")
    trainer = Trainer(cfg)
    trainer.run_training()
    assert trainer.split == {"train": ["case0", "case1", "case2"], "val": ["case3"]}
    assert not trainer.use_amp
    expected = AuthorsWarmupCosine(3, 1, 1e-3, 1e-5)
    assert [row["lr"] for row in trainer.history] == pytest.approx([expected.lr(e) for e in range(3)])
    assert trainer.history[1]["lr"] == pytest.approx(2e-3)  # (warmup + 1) / warmup with one warm-up epoch


def test_authors_schedule_under_a_time_budget_is_refitted_and_keeps_their_rates():
    from veloxseg.cli import build_parser
    from veloxseg.cli.train import build_config
    from veloxseg.training.schedule import AuthorsWarmupCosine

    s = AuthorsWarmupCosine(300, 10, 2.5e-4, 6e-6)
    s.to_steps(50, 50)  # what a budgeted run does before its first step
    before = s.lr(1000)
    s.refit(1000, 5000)  # the budget re-planned the run: the rate at this step does not jump
    assert s.lr(1000) == pytest.approx(before)
    assert s.lr(4000) < before and s.lr(5000) == pytest.approx(6e-6)
    args = build_parser().parse_args(["train", "D", "-o", "R", "--recipe", "authors", "--time-budget", "2"])
    config = build_config(args)
    assert config.lr == 2.5e-4 and config.iterations == 50  # their rate, the budget's epoch structure


def test_ds_weights_flag_reaches_the_loss_and_weights_the_outputs(tmp_path):
    from veloxseg.cli import build_parser
    from veloxseg.cli.train import build_config
    from veloxseg.losses import VeloxSegLoss
    from veloxseg.networks.veloxseg import VeloxSegOutput
    from veloxseg.training import ModelTrainer

    args = build_parser().parse_args(["train", "DATA", "--output", str(tmp_path / "r"), "--time-budget", "2",
                                      "--ds-weights", "1", "0.5", "0.25", "0.125"])
    config = build_config(args)
    assert config.ds_weights == [1.0, 0.5, 0.25, 0.125]
    assert ModelTrainer(config).build_loss().ds_weights == [1.0, 0.5, 0.25, 0.125]
    assert ModelTrainer(build_config(build_parser().parse_args(
        ["train", "DATA", "--output", str(tmp_path / "s")]))).build_loss().ds_weights is None  # the paper's

    torch.manual_seed(0)
    target = torch.randint(0, 2, (1, 1, 8, 8, 8))
    logits = [torch.randn(1, 2, 8, 8, 8) for _ in range(4)]
    out = VeloxSegOutput(logits, None, None, [])
    only_main = VeloxSegLoss(ds_weights=[1, 0, 0, 0])(out, target).total
    assert torch.allclose(only_main, VeloxSegLoss()(VeloxSegOutput(logits[:1], None, None, []), target).total)
    assert not torch.allclose(only_main, VeloxSegLoss()(out, target).total)


@pytest.mark.parametrize("argv,message", [(["--ds-weights", "0", "1", "1", "1"], "must be above 0"),
                                          (["--model", "unet", "--ds-weights", "1", "1", "1", "1"], "VeloxSeg only")])
def test_ds_weights_refused_where_they_mean_nothing(tmp_path, capsys, argv, message):
    from veloxseg.cli import main

    assert main(["train", str(tmp_path), "--output", str(tmp_path / "r"), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_ds_weights_refused_for_a_baseline_whatever_the_path_in(tmp_path):
    """``--resume`` of a UNet run gives no --model on the command line: the trainer refuses instead of ignoring."""
    from veloxseg.errors import InputError
    from veloxseg.training import ModelTrainer, TrainConfig

    config = TrainConfig(dataset=str(tmp_path), output=str(tmp_path / "r"), model="unet", ds_weights=[1, 1, 1, 1])
    with pytest.raises(InputError, match="VeloxSeg only; this run trains unet"):
        ModelTrainer(config).build_loss()
