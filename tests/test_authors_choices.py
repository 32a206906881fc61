"""The four choices where veloxseg once differed from the authors' code: defaults, legacy checkpoints, forms."""

import math

import pytest
import torch

from veloxseg import VeloxSeg
from veloxseg.checkpoint import build_model
from veloxseg.networks.pwa import PWABlock, window_pairs
from veloxseg.networks.veloxseg import LEGACY_KWARGS

SMALL = dict(in_channels=[1, 1], img_size=(32, 32, 32), window_sizes=[2, 2, 2, 1])
AUTHORS = {"attention_residual": "double", "layer_norm_eps": 1e-6, "ds_align_corners": True, "init": "he"}


def test_new_networks_follow_the_authors_and_record_the_choices():
    model = VeloxSeg(**SMALL)
    assert {k: model.hparams[k] for k in AUTHORS} == AUTHORS
    assert set(LEGACY_KWARGS) == set(AUTHORS)
    assert all(LEGACY_KWARGS[k] != v for k, v in AUTHORS.items())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)


@pytest.mark.parametrize("bad", [{"attention_residual": "triple"}, {"init": "xavier"}, {"layer_norm_eps": 0.0}])
def test_unknown_choices_are_refused(bad):
    with pytest.raises(ValueError):
        VeloxSeg(**SMALL, **bad)


def test_he_init_zero_biases_and_width():
    model = VeloxSeg(**SMALL)
    conv = model.conv_stream.downs[1][0]  # 16 -> 32, 3x3x3: fan-in 432
    assert torch.count_nonzero(conv.bias) == 0
    expected = math.sqrt(2.0 / (1 + 0.01**2) / (16 * 27))
    assert abs(conv.weight.std().item() / expected - 1) < 0.05
    up = model.decoder.ups[0][0]  # transposed convs too, as nnU-Net's InitWeights_He
    assert torch.count_nonzero(up.bias) == 0
    default = VeloxSeg(**SMALL, init="pytorch").conv_stream.downs[1][0]
    assert torch.count_nonzero(default.bias) > 0 and default.weight.std() < 0.6 * conv.weight.std()


def test_double_residual_adds_the_input_once_more():
    pairs = window_pairs((4, 4, 4), (2, 2, 2))
    single = PWABlock(8, 2, pairs, 1, 4, residual="single").eval()
    double = PWABlock(8, 2, pairs, 1, 4, residual="double").eval()
    double.load_state_dict(single.state_dict())
    for ffn in (*single.ffn, *double.ffn):  # FFN output zero: the block is the attention residual alone
        torch.nn.init.zeros_(ffn[4].weight)
        torch.nn.init.zeros_(ffn[4].bias)
    xs = [torch.randn(1, 8, 4, 4, 4) for _ in range(2)]
    with torch.no_grad():
        for a, b, x in zip(single(xs), double(xs), xs):
            torch.testing.assert_close(b - a, x, atol=1e-5, rtol=0)


def _payload(model: VeloxSeg, drop: bool) -> dict:
    kwargs = dict(model.hparams)
    if drop:
        for key in LEGACY_KWARGS:
            kwargs.pop(key)
    return {"model_name": "veloxseg", "model_kwargs": kwargs, "state_dict": model.state_dict()}


def test_checkpoint_without_the_choices_builds_what_it_was_trained_as():
    torch.manual_seed(0)
    legacy = VeloxSeg(**SMALL, **LEGACY_KWARGS).train()
    rebuilt = build_model(_payload(legacy, drop=True), deploy=False).train()
    assert {k: rebuilt.hparams[k] for k in LEGACY_KWARGS} == LEGACY_KWARGS
    for m in (legacy, rebuilt):  # compare train-mode outputs (deep supervision included) without dropout
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
            if hasattr(mod, "attn_drop"):
                mod.attn_drop = 0.0
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        expected, got = legacy(x), rebuilt(x)
    for a, b in zip(expected.logits, got.logits):
        torch.testing.assert_close(a, b)
    # the same weights under the authors' choices compute something else: the choices matter
    authors = build_model(_payload(legacy, drop=False) | {"model_kwargs": {**legacy.hparams, **AUTHORS}},
                          deploy=True)
    with torch.no_grad():
        assert (authors(x) - expected.logits[0]).abs().max() > 1e-3


def test_resuming_a_run_older_than_the_choices_keeps_its_network(tmp_path):
    from test_data import make_tiny_dataset
    from veloxseg.training import TrainConfig, Trainer

    dataset = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=2)
    cfg = dict(dataset=str(dataset), output=str(tmp_path / "run"), patch_size=[32, 32, 32], batch_size=1,
               threads=1, progress=False, val_fraction=0.0, warmup_epochs=0)
    Trainer(TrainConfig(**cfg, epochs=1)).run_training()
    last = tmp_path / "run" / "checkpoint_last.pt"
    ckpt = torch.load(last, weights_only=False)
    for key in LEGACY_KWARGS:  # as a version before the choices wrote it
        ckpt["model_kwargs"].pop(key)
    torch.save(ckpt, last)
    resumed = Trainer(TrainConfig(**cfg, epochs=2), resume=True)
    resumed.run_training()
    assert {k: resumed.network.hparams[k] for k in LEGACY_KWARGS} == LEGACY_KWARGS
