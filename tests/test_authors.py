"""Checkpoints of the authors' code (../shared/reference/authors_checkpoint): imported with
``veloxseg import-weights``, they reproduce every value the authors' code computed, with the fast CPU
paths on and off, and through the ONNX and TorchScript exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from veloxseg.checkpoint import build_model
from veloxseg.cli import main
from veloxseg.errors import InputError
from veloxseg.networks.layers import fast_paths

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "authors_checkpoint"
PRESETS = ("autopet", "hecktor", "brats")
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared authors' checkpoints not present")


def _load(path: Path):
    return torch.load(str(path), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each preset's checkpoint imported once through the exact command, read back with weights only."""
    folder = tmp_path_factory.mktemp("imported")
    out = {}
    for name in PRESETS:
        path = folder / f"{name}.pt"
        assert main(["import-weights", str(REFERENCE / f"{name}_authors_format.pth"), "--preset", name,
                     "-o", str(path)]) == 0
        out[name] = path
    return out


def _check(got: torch.Tensor, expected: dict, what: str, atol: float = 1e-4) -> None:
    assert list(got.shape) == list(expected["shape"]), what
    values = got.detach().reshape(-1)[expected["index"]].double()
    err = (values - expected["value"].double()).abs().max().item()
    assert err <= atol, f"{what}: max |difference| {err:.2e} at the sampled voxels"


def _no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Every dropout at p=0, as the reference was computed (attention dropout included)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "attn_drop"):
            module.attn_drop = 0.0
    return model


def test_imported_checkpoint_is_plain_data_with_the_authors_choices(imported):
    ckpt = _load(imported["autopet"])  # weights_only=True: plain containers and tensors only
    assert ckpt["model_kwargs"]["attention_residual"] == "double"
    assert ckpt["model_kwargs"]["layer_norm_eps"] == 1e-6
    assert ckpt["model_kwargs"]["ds_align_corners"] is True and ckpt["model_kwargs"]["init"] == "he"
    assert ckpt["channel_names"] == ["CT", "PET"] == ckpt["plan"]["channel_names"]  # their order, CT first
    assert ckpt["plan"]["patch_size"] == [96, 96, 96] and ckpt["plan"]["spacing"] == [2.03642, 2.03642, 3.0]
    assert [n["scheme"] for n in ckpt["plan"]["normalization"]] == ["ct", "zscore"]
    assert ckpt["plan"]["crop_foreground"] is False
    assert ckpt["imported_from"]["epoch"] == 300
    brats = _load(imported["brats"])
    assert brats["model_kwargs"]["in_channels"] == [4] and len(brats["labels"]) == 4
    assert _load(imported["hecktor"])["plan"]["patch_size"] == [128, 128, 64]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "straightforward"])
@pytest.mark.parametrize("name", PRESETS)
def test_imported_network_reproduces_the_authors_outputs(imported, name, fast):
    ckpt = _load(imported[name])
    expected = _load(REFERENCE / f"{name}_expected.pt")
    x = _load(REFERENCE / f"{name}_input.pt")
    with fast_paths(fast), torch.no_grad():
        _check(build_model(ckpt, deploy=True)(x), expected["eval_logits"], "eval logits")
        out = _no_dropout(build_model(ckpt, deploy=False)).train()(x)
    assert len(out.logits) == len(expected["train_logits"]) == 4
    for i, (got, want) in enumerate(zip(out.logits, expected["train_logits"])):
        _check(got, want, f"train logits {i}")
    _check(out.reconstruction, expected["train_reconstruction"], "reconstruction")
    _check(out.gram_student, expected["train_gram_student"], "student Gram matrix")
    assert len(out.gram_teachers) == len(expected["train_gram_teachers"])
    for i, (got, want) in enumerate(zip(out.gram_teachers, expected["train_gram_teachers"])):
        _check(got, want, f"teacher {i} Gram matrix")


@pytest.mark.parametrize("name, fmt", [("autopet", "onnx"), ("brats", "torchscript")])
def test_exports_of_an_imported_checkpoint_reproduce_the_authors_logits(imported, tmp_path, name, fmt):
    from veloxseg.export import _run_exported

    path = tmp_path / ("model.onnx" if fmt == "onnx" else "model.ts")
    assert main(["export", "-m", str(imported[name]), "--format", fmt, "-o", str(path)]) == 0
    x = _load(REFERENCE / f"{name}_input.pt")
    got = torch.from_numpy(_run_exported(path, fmt, x.numpy()))
    _check(got, _load(REFERENCE / f"{name}_expected.pt")["eval_logits"], f"{fmt} logits", atol=1e-3)


def test_legacy_choices_do_not_reproduce_them(imported):
    """The fixture can tell the forms apart: the same weights under the old choices miss the reference."""
    from veloxseg.networks.veloxseg import LEGACY_KWARGS

    ckpt = _load(imported["brats"])
    ckpt["model_kwargs"] = {**ckpt["model_kwargs"], **LEGACY_KWARGS}
    expected = _load(REFERENCE / "brats_expected.pt")["eval_logits"]
    with torch.no_grad():
        got = build_model(ckpt, deploy=True)(_load(REFERENCE / "brats_input.pt"))
    with pytest.raises(AssertionError):
        _check(got, expected, "eval logits")


def test_bare_state_dict_imports_and_bad_keys_are_listed(tmp_path):
    from veloxseg.authors import import_weights

    state = _load(REFERENCE / "hecktor_authors_format.pth")["model"]
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    assert import_weights(bare, "hecktor")["model_kwargs"]["img_size"] == [128, 128, 64]
    broken = dict(state)
    del broken["decoder.out_conv1.0.weight"]
    broken["decoder.extra.weight"] = torch.zeros(1)
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(InputError) as err:
        import_weights(tmp_path / "broken.pth", "hecktor")
    assert "decoder.extra.weight" in str(err.value) and "head.conv.weight" in str(err.value)
    with pytest.raises(InputError, match="does not match"):  # another configuration's weights
        import_weights(bare, "autopet")


def test_import_weights_refuses_to_overwrite_and_takes_their_config(tmp_path, capsys):
    out = tmp_path / "x.pt"
    out.write_bytes(b"keep")
    source = str(REFERENCE / "brats_authors_format.pth")
    assert main(["import-weights", source, "--preset", "brats", "-o", str(out)]) == 1
    assert out.read_bytes() == b"keep" and "--overwrite" in capsys.readouterr().err
    config = tmp_path / "models_config_brats2021.json"
    config.write_text(json.dumps({"UNet": {}, "VeloxSeg": json.loads((REFERENCE / "configs.json").read_text())
                                  ["brats"]["config"]}))
    assert main(["import-weights", source, "--preset", "brats", "-o", str(out), "--config", str(config),
                 "--overwrite"]) == 0
    assert _load(out)["model_kwargs"]["in_channels"] == [4]
    config.write_text(json.dumps({"VeloxSeg": {"input_size": [96, 96, 96], "in_ch": [4], "depths": [2, 2, 2, 2]}}))
    assert main(["import-weights", source, "--preset", "brats", "-o", str(out), "--config", str(config),
                 "--overwrite"]) == 1
    assert "depths" in capsys.readouterr().err


def test_predict_refuses_a_pet_ct_import_without_ct_statistics(imported, tmp_path, capsys):
    from veloxseg.inference.engines import load_model

    with pytest.raises(InputError, match="CT normalisation statistics"):
        load_model(imported["autopet"])
    stats = tmp_path / "with_stats.pt"
    assert main(["import-weights", str(REFERENCE / "autopet_authors_format.pth"), "--preset", "autopet", "-o",
                 str(stats), "--ct-statistics", "30", "40", "-100", "200"]) == 0
    ct = _load(stats)["plan"]["normalization"][0]
    assert ct == {"scheme": "ct", "mean": 30.0, "std": 40.0, "lower": -100.0, "upper": 200.0}
    assert load_model(stats).channel_names == ["CT", "PET"]
