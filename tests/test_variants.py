import json

import pytest
import torch

from veloxseg import VeloxSeg, VeloxSegOutput
from veloxseg.cli import main
from veloxseg.summary import count_parameters
from veloxseg.variants import VARIANTS, build_variant, get_variant, variant_loss

SMALL = dict(img_size=(32, 32, 32), window_sizes=None)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_builds_and_runs(name):
    model = build_variant(name, **SMALL)
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        assert model.for_inference()(x).shape == (1, 2, 32, 32, 32)
    out = model.train()(x)
    assert isinstance(out, VeloxSegOutput) and out.logits[0].shape == (1, 2, 32, 32, 32)
    assert (out.reconstruction is not None) == bool(model.hparams["texture_teachers"])
    y = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    assert torch.isfinite(variant_loss(name)(out, y, x).total)


def test_list_variants_cli(capsys):
    assert main(["summary", "--list-variants"]) == 0
    assert capsys.readouterr().out.split("\n") == [*VARIANTS, ""]


def test_variant_summary_cli(capsys):
    assert main(["summary", "--variant", "conv-only", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == "conv-only" and info["multiply_adds"] == info["flops"] // 2
    assert info["params_inference"] == count_parameters(build_variant("conv-only").for_inference())
    assert main(["summary", "--variant", "nope"]) == 1
    assert "unknown variant 'nope'; choose one of conv-only" in capsys.readouterr().err


def test_rows_change_what_they_say():
    conv_only = build_variant("conv-only", **SMALL)
    assert conv_only.transformer is None and conv_only.conv_stream.mixers is None
    assert not any(n.startswith("head.conv") for n, _ in conv_only.named_parameters())
    full = build_variant("full", **SMALL)
    assert set(full.state_dict()) == set(VeloxSeg.from_preset("autopet", **SMALL).state_dict())
    unified = build_variant("unified-upsampling", **SMALL)
    assert unified.teachers is None and count_parameters(unified.for_inference()) == count_parameters(
        full.for_inference())
    assert variant_loss("teachers-no-gram").lambda_sdkt == 0 and variant_loss("full").lambda_sdkt == 2.0
    assert build_variant("groups-8-16-16-32", **SMALL).hparams["group_widths"] == [8, 16, 16, 32]
    assert get_variant("full").paper == (1.66, 1.79, 62.51)


def test_bad_flags():
    with pytest.raises(ValueError, match="texture_teachers need the transformer stream"):
        VeloxSeg(use_transformer=False, **SMALL)
    with pytest.raises(ValueError, match="unknown upsampling 'bilinear'; choose one of pixel_shuffle, transposed"):
        VeloxSeg(upsampling="bilinear", **SMALL)
