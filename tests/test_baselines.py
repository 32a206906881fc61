import pytest
import torch

from veloxseg.baselines import BASELINES, baseline_loss, build_baseline, nnunet_plan


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_builds_forwards_and_trains(name):
    # SwinUNETR's bottleneck of a 32^3 input is 1 voxel, which instance norm refuses in train mode
    size = (32, 32, 64) if name == "swinunetr" else (32, 32, 32)
    model = build_baseline(name, 2, 3, size)
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 3, *size)
    y = torch.randint(0, 3, (1, 1, *size))
    loss = baseline_loss(name)(model.train()(x), y)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_nnunet_plan_like_nnunet():
    kernels, strides, filters = nnunet_plan((96, 96, 96))
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4 and filters == [32, 64, 128, 256, 320]
    assert len(kernels) == len(strides)
    _, strides, filters = nnunet_plan((128, 128, 64))
    assert strides[-1] == [2, 2, 1] and filters[-1] == 320


def test_unknown_baseline():
    with pytest.raises(ValueError, match="unknown baseline 'vnet'; choose one of unet, unetr"):
        build_baseline("vnet", 1, 2, 32)
