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


def test_fast_dropout_backward_regenerates_the_forward_mask():
    from veloxseg.networks.layers import dropout

    x = torch.randn(3, 5, 7, 11).requires_grad_()
    torch.manual_seed(1)
    y = dropout(x, 0.3, training=True)
    grad = torch.randn_like(y)
    y.backward(grad)
    scale = torch.where(y != 0, torch.full_like(y, 1 / 0.7), torch.zeros_like(y))
    assert torch.allclose(x.grad, grad * scale)
    assert 0.5 < (y != 0).float().mean() < 0.9
    torch.manual_seed(1)
    assert torch.equal(dropout(x, 0.3, training=True), y)  # reproducible from the global seed


def test_dropout_matmul_equals_dropout_then_matmul_with_the_same_mask():
    from veloxseg.networks.layers import _keep_mask, dropout_matmul

    a = torch.rand(4, 2, 30, 30, requires_grad=True)
    b = torch.randn(4, 2, 30, 5, requires_grad=True)
    state = torch.get_rng_state()
    out = dropout_matmul(a, b, 0.1, training=True)
    torch.set_rng_state(state)  # the seed the function drew
    mask = _keep_mask(a, 0.1, int(torch.empty((), dtype=torch.int64).random_().item()))
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    expected = torch.matmul(a2 * mask, b2)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(a.grad, a2.grad, atol=1e-6) and torch.allclose(b.grad, b2.grad, atol=1e-6)
    assert (mask == 0).any() and torch.allclose(dropout_matmul(a, b, 0.1, training=False), a @ b, atol=1e-6)
