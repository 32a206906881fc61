"""``veloxseg train --model/--variant``: every baseline and a variant train, save, load and predict
through the same commands as VeloxSeg."""

import json

import pytest
import torch

from test_data import make_tiny_dataset
from veloxseg.baselines import BASELINES
from veloxseg.checkpoint import MODEL_BUILDERS, build_model, load_checkpoint
from veloxseg.cli import main
from veloxseg.training import MODELS, ModelTrainer, TrainConfig

COMMON = ["--epochs", "1", "--batch-size", "1", "--val-every", "1", "--threads", "1", "--no-progress",
          "--device", "cpu", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Tiny", n_cases=3)


def patch_for(model: str) -> list[str]:
    # SwinUNETR's bottleneck of a 32^3 patch is one voxel, which instance norm refuses in train mode
    return ["32", "32", "64"] if model == "swinunetr" else ["32", "32", "32"]


def train_predict_evaluate(dataset, tmp_path, extra):
    run = tmp_path / "run"
    args = ["train", str(dataset), "--output", str(run), "--num-folds", "3", "--fold", "0", *COMMON, *extra]
    assert main(args) == 0
    info = json.loads((run / "run_info.json").read_text())
    val = json.loads((run / "splits.json").read_text())["val"]
    assert len(val) == 1
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        out = tmp_path / f"pred_{name[:-3]}"
        assert main(["predict", "-m", str(run / name), "-i", str(dataset / "imagesTr"), "-o", str(out),
                     "--quiet", "--threads", "1"]) == 0
        assert (out / f"{val[0]}.nii.gz").is_file()
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--pred", str(tmp_path / "pred_checkpoint_best"), "--ref", str(dataset / "labelsTr"),
                 "--json", str(report), "--quiet"]) == 0
    scores = json.loads(report.read_text())["cases"]
    assert len(scores) == 3 and all(0.0 <= s["dice"] <= 1.0 for s in scores if s["dice"] is not None)
    return run, info


@pytest.mark.parametrize("model", BASELINES)
def test_baseline_trains_saves_loads_and_predicts(model, tiny_dataset, tmp_path):
    run, info = train_predict_evaluate(tiny_dataset, tmp_path, ["--model", model, "--patch-size", *patch_for(model)])
    best = load_checkpoint(run / "checkpoint_best.pt")
    assert best["model_name"] == model and best["model_kwargs"]["name"] == model
    assert best["model_kwargs"]["in_channels"] == 2 and best["model_kwargs"]["out_channels"] == 2
    assert "training_state" not in best and "variant" not in best
    net = build_model(best)
    assert not net.training
    size = [int(s) for s in patch_for(model)]
    with torch.no_grad():
        assert net(torch.zeros(1, 2, *size)).shape == (1, 2, *size)
    last = load_checkpoint(run / "checkpoint_last.pt")
    assert last["model_name"] == model and last["training_state"]["config"]["model"] == model
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "val_dice" in rows[0]
    assert info["model"] == model and info["variant"] is None and info["epochs_reached"] == 1
    assert info["parameters"] == sum(p.numel() for p in net.parameters())
    hw = info["hardware"]
    assert hw["torch_threads"] == 1 and hw["torch"] == torch.__version__ and hw["cpu_model"]
    assert hw["logical_cores"] >= 1


def test_variant_trains_with_its_loss_and_predicts(tiny_dataset, tmp_path):
    run, info = train_predict_evaluate(tiny_dataset, tmp_path,
                                       ["--variant", "jl-groups", "--patch-size", "32", "32", "32",
                                        "--time-budget", "30", "--iterations", "2"])
    best = load_checkpoint(run / "checkpoint_best.pt")
    assert best["model_name"] == "veloxseg" and best["variant"] == "jl-groups"
    kw = best["model_kwargs"]
    assert kw["use_transformer"] is False and list(kw["group_widths"]) == [4, 8, 8, 16]
    assert info["variant"] == "jl-groups" and info["time_budget_minutes"] == 30
    assert info["epochs_reached"] == 1 and info["stopped_by_time_budget"] is False


def test_variant_loss_arguments_win(tiny_dataset, tmp_path):
    trainer = ModelTrainer(TrainConfig(dataset=str(tiny_dataset), output=str(tmp_path / "r"),
                                       variant="teachers-no-gram", patch_size=[32, 32, 32], threads=1))
    assert trainer.build_loss().lambda_sdkt == 0.0
    plain = ModelTrainer(TrainConfig(dataset=str(tiny_dataset), output=str(tmp_path / "s"), patch_size=[32, 32, 32]))
    assert plain.build_loss().lambda_sdkt == 2.0 and plain.model_name == "veloxseg"


def test_bad_model_switches_are_one_line_errors(tiny_dataset, tmp_path, capsys):
    assert main(["train", str(tiny_dataset), "--output", str(tmp_path / "a"), "--model", "unet",
                 "--variant", "conv-only"]) == 1
    assert "--variant applies to --model veloxseg only" in capsys.readouterr().err
    assert main(["train", str(tiny_dataset), "--output", str(tmp_path / "b"), "--variant", "nope"]) == 1
    assert "unknown variant 'nope'; choose one of conv-only" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_every_model_has_a_checkpoint_builder():
    assert set(MODELS) <= set(MODEL_BUILDERS)
