"""The fast CPU kernels (oneDNN convs, GroupNorm-based instance norm) compute what PyTorch's defaults do."""

import pytest
import torch

from veloxseg import VeloxSeg, VeloxSegLoss
from veloxseg.networks.layers import fast_paths


@pytest.mark.parametrize("size", [64, 96])  # at 96^3 the level-0 5x5x5 JLC convs run as depthwise convs
def test_eval_logits_equal_straightforward_path(size):
    model = VeloxSeg(in_channels=[1, 1], img_size=(size,) * 3).for_inference()
    x = torch.randn(1, 2, size, size, size)
    with torch.no_grad():
        fast = model(x)
        with fast_paths(False):
            slow = model(x)
    assert torch.allclose(fast, slow, atol=1e-4)


def test_train_loss_and_gradients_equal_straightforward_path():
    torch.manual_seed(0)
    model = VeloxSeg(in_channels=[1, 1], img_size=(64, 64, 32), attn_drop=0.0, proj_drop=0.0, dropout=0.0).train()
    x = torch.randn(2, 2, 64, 64, 32)
    y = (x[:, :1] > 1).long()
    loss_fn = VeloxSegLoss()

    def run():
        model.zero_grad()
        loss = loss_fn(model(x), y, x).total
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_loss, fast_grads = run()
    with fast_paths(False):
        slow_loss, slow_grads = run()
    assert torch.allclose(fast_loss, slow_loss, atol=1e-5)
    for name, grad in fast_grads.items():
        assert torch.allclose(grad, slow_grads[name], atol=1e-4, rtol=1e-3), name


def test_instance_norm_single_voxel_is_zero_on_both_paths():
    from veloxseg.networks.layers import InstanceNorm3d

    x = torch.randn(2, 4, 1, 1, 1)
    assert torch.equal(InstanceNorm3d(4)(x), torch.zeros_like(x))
    with fast_paths(False):
        assert torch.equal(InstanceNorm3d(4)(x), torch.zeros_like(x))


def test_layer_norm_fast_path_matches_layer_norm():
    from veloxseg.networks.layers import LayerNorm3d

    norm = LayerNorm3d(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        x = torch.randn(2, 16, 16, 16, 24) * 3 + 1
        fast = norm(x)
        with fast_paths(False):
            slow = norm(x)
    assert torch.allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize("shape,size,align_corners", [((2, 2, 6, 6, 6), (96, 96, 96), False),
                                                      ((2, 3, 5, 7, 3), (17, 9, 30), False),
                                                      ((8, 4, 3, 3, 3), (12, 12, 12), True)])
def test_separable_upsampling_matches_interpolate(shape, size, align_corners):
    from veloxseg.networks.layers import upsample_trilinear

    x = torch.randn(shape, requires_grad=True)
    fast = upsample_trilinear(x, size, align_corners)
    slow = torch.nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=align_corners)
    grad = torch.randn_like(slow)
    (fast_grad,), (slow_grad,) = torch.autograd.grad(fast, x, grad), torch.autograd.grad(slow, x, grad)
    assert fast.shape == slow.shape and torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast_grad, slow_grad, rtol=1e-4, atol=1e-3)


def test_training_step_with_dropout_is_reproducible_from_the_seed():
    model = VeloxSeg(in_channels=[1, 1], img_size=(64, 64, 32)).train()
    x = torch.randn(1, 2, 64, 64, 32)
    y = (x[:, :1] > 1).long()

    def run():
        torch.manual_seed(3)
        model.zero_grad()
        loss = VeloxSegLoss()(model(x), y, x).total
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (loss_a, grads_a), (loss_b, grads_b) = run(), run()
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("factor", [2, 3, 4])  # runs of 8 bytes (float64), 12 (value by value), 16 (complex128)
def test_pixel_shuffle_head_in_depth_slabs_matches_whole_conv(factor):
    from veloxseg.networks.decoder import PixelShuffleHead

    head = PixelShuffleHead(8, 3, factor).eval()
    x = torch.randn(2, 8, 7, 5, 6)
    r = factor
    with torch.no_grad():
        whole = torch.nn.functional.conv3d(x, head.conv.weight, head.conv.bias, padding=1)
        expected = whole.view(2, 3, r, r, r, 7, 5, 6).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(2, 3, 7 * r, 5 * r, 6 * r)
        slab3 = 3 * 5 * 6 * 3 * r**3 * 4  # bytes of a 3-slice slab of the conv output
        for slab_bytes in (1, slab3, 1 << 30):  # one slice, 3 slices (7 = 3 + 3 + 1), all at once
            assert torch.equal(head._forward_slabs(x, slab_bytes), head._forward_slabs(x, slab_bytes))
            assert torch.allclose(head._forward_slabs(x, slab_bytes), expected, atol=1e-5)
        assert torch.allclose(head(x), expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace / freeze
def test_pixel_shuffle_into_wide_elements_equals_value_by_value_also_in_a_graph():
    from veloxseg.networks import decoder

    x = torch.randn(1, 2 * 64, 3, 5, 6).contiguous(memory_format=torch.channels_last_3d)

    def shuffled(op) -> torch.Tensor:
        out = torch.full((1, 2, 5, 4, 5, 4, 6, 4), -7.0)  # a value x cannot hold
        op(out[:, :, 1:4], x)  # a slab of a bigger output, as the head writes it
        return out

    by_value = shuffled(decoder._shuffle_into)
    assert torch.equal(shuffled(torch.ops.veloxseg.pixel_shuffle_into_), by_value)
    assert torch.equal(shuffled(lambda o, y: torch.ops.veloxseg.pixel_shuffle_into_(o, y.contiguous())), by_value)
    misaligned = torch.empty(1 + by_value.numel())[1:].view(by_value.shape)  # runs not on 16-byte boundaries
    misaligned.fill_(-7.0)
    torch.ops.veloxseg.pixel_shuffle_into_(misaligned[:, :, 1:4], x)
    assert torch.equal(misaligned, by_value)
    assert (by_value[:, :, 1:4] != -7.0).all()
    assert (by_value[:, :, 0] == -7.0).all() and (by_value[:, :, 4] == -7.0).all()

    class Slab(torch.nn.Module):
        def forward(self, y: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(1, 2, 3, 4, 5, 4, 6, 4)
            torch.ops.veloxseg.pixel_shuffle_into_(out, y * 1.0)
            return out

    graph = torch.jit.freeze(torch.jit.trace(Slab().eval(), (x,)))
    assert torch.equal(graph(x), by_value[:, :, 1:4])


def test_an_eager_forward_does_not_load_the_compiler_stack():
    """The deployed network's eager forward (a single volume in `predict`) imports no sympy or dynamo (~100 MB)."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from veloxseg import VeloxSeg\n"
            "m = VeloxSeg(in_channels=[1, 1], img_size=(64, 64, 64)).for_inference()\n"
            "with torch.inference_mode():\n"
            "    m(torch.randn(1, 2, 64, 64, 64))\n"
            "print(sorted(n for n in ('sympy', 'torch._dynamo') if n in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("size", [24, 12])  # oneDNN's layout kept between the convs (> 1728 voxels) / plain ops
def test_conv_gelu_conv_equals_the_ffn_it_replaces(size):
    from veloxseg.networks.layers import Conv3d, conv_gelu_conv

    fc1, fc2 = Conv3d(16, 48, 1), Conv3d(48, 16, 1)
    x = torch.randn(1, 16, size, size, size)
    with torch.no_grad(), torch.profiler.profile() as prof:
        got = conv_gelu_conv(x, fc1, fc2)
    expected = torch.nn.functional.conv3d(torch.nn.functional.gelu(torch.nn.functional.conv3d(x, fc1.weight, fc1.bias)),
                                          fc2.weight, fc2.bias)
    assert got.layout == torch.strided and got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    assert any(e.key == "aten::to_mkldnn" for e in prof.key_averages()) == (size == 24)
    with torch.no_grad(), fast_paths(False):
        assert torch.allclose(conv_gelu_conv(x, fc1, fc2), expected, atol=1e-5)


@pytest.mark.parametrize("batch,channels,groups,size,bias", [(1, (16, 16), 4, 24, True), (2, (64, 128), 1, 6, True),
                                                             (1, (256, 128), 2, 3, True), (2, (32, 8), 4, 12, False)])
def test_pointwise_conv_as_gemm_matches_conv3d(batch, channels, groups, size, bias):
    from veloxseg.networks.layers import Conv3d, conv1x1_gemm

    conv = Conv3d(channels[0], channels[1], 1, groups=groups, bias=bias)
    x = torch.randn(batch, channels[0], size, size, size)
    expected = torch.nn.functional.conv3d(x, conv.weight, conv.bias, groups=groups)
    with torch.no_grad():
        direct = conv1x1_gemm(x, conv.weight, conv.bias, groups)
        through_module = conv(x)  # the fast path takes the GEMM for small maps and narrow groups
    assert direct.shape == expected.shape and direct.is_contiguous()
    assert torch.allclose(direct, expected, atol=1e-5)
    assert torch.allclose(through_module, expected, atol=1e-5)


def test_upsampling_in_training_after_inference_mode_in_the_same_process():
    from veloxseg.networks.layers import upsample_trilinear

    with torch.inference_mode():  # caches the interpolation matrices of this shape (as `predict` does)
        upsample_trilinear(torch.randn(1, 2, 5, 5, 5), (11, 11, 11), True)
    x = torch.randn(1, 2, 5, 5, 5, requires_grad=True)
    upsample_trilinear(x, (11, 11, 11), True).sum().backward()  # no "inference tensors cannot be saved"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("batch,channels,width,kernel,size", [(1, 16, 4, 5, (24, 24, 24)), (2, 32, 4, 5, (17, 18, 19)),
                                                              (1, 12, 3, 5, (20, 18, 16)), (1, 8, 2, 7, (16, 16, 20))])
def test_grouped_conv_as_depthwise_matches_conv3d(batch, channels, width, kernel, size):
    from veloxseg.networks.layers import Conv3d, _depthwise_split, grouped_conv_as_depthwise

    conv = Conv3d(channels, channels, kernel, padding=kernel // 2, groups=channels // width)
    x = torch.randn(batch, channels, *size)
    expected = torch.nn.functional.conv3d(x, conv.weight, conv.bias, padding=kernel // 2, groups=conv.groups)
    with torch.no_grad():
        direct = grouped_conv_as_depthwise(x, conv.weight, conv.bias, conv.padding, conv.groups)
        assert _depthwise_split(x, conv.weight, conv.stride, conv.dilation, conv.groups)
        through_module = conv(x)
    assert direct.shape == expected.shape and direct.is_contiguous()
    assert torch.allclose(direct, expected, atol=1e-5)
    assert torch.equal(through_module, direct)


def test_depthwise_split_only_where_it_is_faster():
    from veloxseg.networks.layers import _depthwise_split

    x, small = torch.randn(1, 16, 24, 24, 24), torch.randn(1, 32, 12, 12, 12)
    one, grouped5 = (1, 1, 1), torch.randn(16, 4, 5, 5, 5)
    with torch.no_grad():
        assert _depthwise_split(x, grouped5, one, one, 4)
        assert not _depthwise_split(x, torch.randn(16, 4, 3, 3, 3), one, one, 4)  # 3x3x3: grouped kernel as fast
        assert not _depthwise_split(small, torch.randn(32, 4, 5, 5, 5), one, one, 8)  # small map
        assert not _depthwise_split(x, torch.randn(16, 8, 5, 5, 5), one, one, 2)  # 8 channels per group
        assert not _depthwise_split(x, grouped5, (2, 2, 2), one, 4)  # strided
    assert not _depthwise_split(x, grouped5, one, one, 4)  # with gradients (training): oneDNN's grouped conv


def test_jlc_block_shares_rotated_copies_between_its_3x3x3_and_5x5x5_convs():
    from veloxseg.networks.jlc import JLCBlock

    torch.manual_seed(0)
    block = JLCBlock(16, 4).eval()  # kernels 1, 3, 5 in groups of 4 channels
    x = torch.randn(1, 16, 24, 24, 24)
    with torch.no_grad():
        local = block._local_convs(x)
        fast = block(x)
        small = block._local_convs(torch.randn(1, 16, 12, 12, 12))
        with fast_paths(False):
            slow = block(x)
    assert [h is None for h in local] == [True, False, False]  # the 1x1 branch stays a matrix product
    assert all(h is None for h in small)  # level 1 and deeper: oneDNN's grouped kernel
    for branch, h in zip(block.branches[1:], local[1:]):
        conv = branch[0]
        expected = torch.nn.functional.conv3d(x, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
        assert torch.allclose(h, expected, atol=1e-5)
    assert torch.allclose(fast, slow, atol=1e-4)


def test_eval_under_bf16_autocast_runs_and_keeps_the_labels():
    """Validation during ``train --precision bf16`` runs the eval-mode network under autocast: the fast kernels (which
    write into buffers of one dtype) step aside there instead of failing with a dtype error."""
    torch.manual_seed(0)
    net = VeloxSeg(in_channels=[1, 1], out_channels=2, img_size=(64, 64, 32)).eval()
    x = torch.randn(1, 2, 64, 64, 32)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
    assert torch.isfinite(out.float()).all()
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.99
