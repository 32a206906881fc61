import pytest
import torch

from veloxseg import VeloxSeg, VeloxSegLoss, VeloxSegOutput
from veloxseg.networks import gram_matrix, resolve_windows
from veloxseg.summary import count_parameters, preset_summary

# Reference figures (ARCHITECTURE.md). The reference counts its 3 deep-supervision heads
# (454 parameters for 2 classes, 908 for 4) in the inference figure; we strip them on deployment.
REFERENCE = {
    "autopet": (1_669_639, 3.503e9, [1, 2, 96, 96, 96]),
    "hecktor": (1_670_281, 4.182e9, [1, 2, 128, 128, 64]),
    "brats": (1_470_301, 5.125e9, [1, 4, 96, 96, 96]),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_preset_params_and_flops(name):
    params, flops, shape = REFERENCE[name]
    info = preset_summary(name)
    assert info["input_shape"] == shape
    assert info["output_shape"] == [1, VeloxSeg.from_preset(name).out_channels, *shape[2:]]
    assert abs(info["params_inference"] / params - 1) < 0.01
    assert abs(info["flops"] / flops - 1) < 0.03
    assert info["params_training"] > info["params_inference"] + 300_000  # the teachers


def test_train_mode_outputs_and_every_parameter_gets_a_gradient():
    model = VeloxSeg.from_preset("autopet").train()
    x = torch.randn(1, 2, 96, 96, 96)
    y = (torch.rand(1, 1, 96, 96, 96) > 0.9).long()
    out = model(x)
    assert isinstance(out, VeloxSegOutput)
    assert len(out.logits) == 4
    for logits in out.logits:
        assert logits.shape == (1, 2, 96, 96, 96)
    assert out.reconstruction.shape == (1, 2, 96, 96, 96)
    assert out.gram_student.shape == (1, 16, 16)
    assert len(out.gram_teachers) == 2 and all(g.shape == (1, 16, 16) for g in out.gram_teachers)
    loss = VeloxSegLoss()(out, y, x)
    assert loss.reconstruction > 0 and loss.sdkt > 0
    loss.total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert missing == []


def test_gram_matrix_symmetric_and_matches_direct_computation():
    x = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64)
    g = gram_matrix(x)
    direct = torch.stack([torch.einsum("cn,dn->cd", s.reshape(5, -1), s.reshape(5, -1)) for s in x]) / (5 * 72)
    assert torch.allclose(g, g.transpose(1, 2))
    assert torch.allclose(g, direct)


def test_loss_weights_and_parts():
    model = VeloxSeg(in_channels=[1, 1], img_size=(64, 32, 32)).train()
    x = torch.randn(1, 2, 64, 32, 32)
    y = torch.zeros(1, 1, 64, 32, 32, dtype=torch.long)
    y[..., 10:20, 10:20, 10:20] = 1
    out = model(x)
    plain = VeloxSegLoss(lambda_rc=0.0, lambda_sdkt=0.0)(out, y, x)
    full = VeloxSegLoss(lambda_rc=0.5, lambda_sdkt=2.0)(out, y, x)
    assert torch.allclose(full.total, plain.total + 0.5 * full.reconstruction + 2.0 * full.sdkt, atol=1e-6)


def test_for_inference_strips_teachers_and_keeps_logits():
    model = VeloxSeg(in_channels=[1, 1], img_size=(64, 64, 32))
    deployed = model.for_inference()
    assert not deployed.training
    keys = deployed.state_dict().keys()
    assert not any(k.startswith(("teachers", "ds_heads")) for k in keys)
    assert count_parameters(deployed) < count_parameters(model)
    x = torch.randn(1, 2, 64, 64, 32)
    with torch.no_grad():
        ref = model.eval()(x)
        got = deployed(x)
    assert isinstance(got, torch.Tensor) and got.shape == (1, 2, 64, 64, 32)
    assert torch.allclose(ref, got, atol=1e-6)


@pytest.mark.parametrize("size", [(32, 32, 32), (64, 96, 32), (128, 64, 64)])
def test_any_size_divisible_by_32(size):
    model = VeloxSeg(in_channels=[4], out_channels=3, img_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, *size)).shape == (1, 3, *size)


def test_derived_windows_keep_reference_where_they_divide():
    assert resolve_windows((96, 96, 96), 4) == [(3, 3, 3), (6, 6, 6), (3, 3, 3), (3, 3, 3)]
    # 64^3: feature maps 16, 8, 4, 2 -> largest divisor below 3, 6, 3, 3
    assert resolve_windows((64, 64, 64), 4) == [(2, 2, 2), (4, 4, 4), (2, 2, 2), (2, 2, 2)]
    assert resolve_windows((96, 64, 96), 4)[1] == (6, 4, 6)


def test_bad_window_names_level_size_and_window():
    with pytest.raises(ValueError, match=r"level 1: window \(5, 5, 5\) does not divide the feature map \(12, 12, 12\)"):
        VeloxSeg(img_size=96, window_sizes=[3, 5, 3, 3])


def test_bad_input_size_and_channels_give_clear_errors():
    with pytest.raises(ValueError, match="divisible by 32"):
        VeloxSeg(img_size=(96, 96, 80))
    model = VeloxSeg(in_channels=[1, 1], img_size=64).eval()
    with pytest.raises(ValueError, match="expects 2 input channels"):
        model(torch.randn(1, 3, 64, 64, 64))
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 2, 64, 64, 48))
    with pytest.raises(ValueError, match="level 0: window"):
        VeloxSeg(in_channels=[1, 1], img_size=96).eval()(torch.randn(1, 2, 64, 64, 64))


def test_smallest_size_trains():
    out = VeloxSeg(img_size=32).train()(torch.randn(1, 2, 32, 32, 32))
    assert out.logits[0].shape == (1, 2, 32, 32, 32)


def test_spatial_dims_must_be_3():
    with pytest.raises(ValueError, match="spatial_dims must be 3"):
        VeloxSeg(spatial_dims=2)


def test_traced_deployed_module_reproduces_eager():
    model = VeloxSeg(in_channels=[1, 1], img_size=64).for_inference()
    x = torch.randn(1, 2, 64, 64, 64)
    traced = torch.jit.trace(model, x, check_trace=False)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-4)


def test_preset_with_other_size_derives_windows():
    model = VeloxSeg.from_preset("autopet", img_size=(64, 64, 64))
    assert model.hparams["window_sizes"] == [[2, 2, 2], [4, 4, 4], [2, 2, 2], [2, 2, 2]]
