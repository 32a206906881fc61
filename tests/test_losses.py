import pytest
import torch
from monai.losses import DiceCELoss

from veloxseg.losses import DeepSupervisionDiceCE
from veloxseg.networks.layers import fast_paths


@pytest.mark.parametrize("classes,include_background", [(2, False), (4, False), (3, True)])
def test_fast_dice_ce_matches_monai(classes, include_background):
    torch.manual_seed(0)
    logits = [torch.randn(2, classes, 12, 10, 8, requires_grad=True) for _ in range(3)]
    target = torch.randint(0, classes, (2, 1, 12, 10, 8))
    target[1] = 0  # an empty foreground in one sample
    weights = [0.5, 0.3, 0.2]
    monai = DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background)
    expected = sum(w * monai(lg, target) for w, lg in zip(weights, logits))
    expected_grads = torch.autograd.grad(expected, logits)
    loss = DeepSupervisionDiceCE(include_background)(logits, target, weights)
    grads = torch.autograd.grad(loss, logits)
    assert torch.allclose(loss, expected, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, atol=1e-6)
    with fast_paths(False):
        assert torch.allclose(DeepSupervisionDiceCE(include_background)(logits, target, weights), expected)


def test_fast_dropout_keeps_expected_value_and_rate():
    from veloxseg.networks.layers import dropout

    x = torch.ones(200_000)
    y = dropout(x, 0.1, training=True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert torch.equal(dropout(x, 0.1, training=False), x)
