"""The standard 3-D segmentation baselines, from MONAI, as the paper's comparisons configure them.

:func:`build_baseline` builds one by name; :func:`baseline_loss` is the loss each is trained with.

Configurations (the VeloxSeg paper does not list its baselines' hyper-parameters, so each follows
its own paper or MONAI's reference recipe):

* ``unet`` -- MONAI ``UNet``, channels (16, 32, 64, 128, 256), strides 2, two residual units per
  level (MONAI's 3-D segmentation tutorials).
* ``unetr`` -- ``UNETR`` as in its paper: ViT-B/16 (hidden 768, MLP 3072, 12 heads), feature size 16,
  instance norm, residual conv blocks.
* ``swinunetr`` -- ``SwinUNETR`` as in its paper's BTCV/BraTS models: feature size 48, depths
  (2, 2, 2, 2), heads (3, 6, 12, 24), window 7.
* ``segresnet`` -- ``SegResNet`` as in MONAI's BraTS recipe: 16 initial filters, blocks down
  (1, 2, 2, 4), up (1, 1, 1), no VAE branch.
* ``dynunet`` -- ``DynUNet`` configured like nnU-Net's 3D full-resolution U-Net (the plain
  architecture of nnU-Net v2): 3x3x3 kernels, two conv-InstanceNorm-LeakyReLU per stage, filters
  32 doubling to a cap of 320, stride-2 downsampling while every axis of the feature map stays
  >= 4 voxels, transposed-conv upsampling, deep supervision on every decoder output but the
  coarsest (nnU-Net v2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.losses import DiceCELoss
from torch import nn

BASELINES: tuple[str, ...] = ("unet", "unetr", "swinunetr", "segresnet", "dynunet")


def _size3(img_size: Sequence[int] | int) -> tuple[int, int, int]:
    if isinstance(img_size, int):
        return (img_size,) * 3
    return tuple(int(s) for s in img_size)  # type: ignore[return-value]


def nnunet_plan(img_size: Sequence[int] | int, min_feature: int = 4, base: int = 32, cap: int = 320,
                max_stages: int = 6) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """nnU-Net-style topology for a patch: per-stage kernels, strides and filters.

    Each axis is halved at a stage while its feature size stays divisible by 2 and at least
    ``2 * min_feature``; stages continue while some axis can still be halved (at most ``max_stages``).
    """
    size = list(_size3(img_size))
    kernels, strides = [[3, 3, 3]], [[1, 1, 1]]
    while len(strides) < max_stages:
        step = [2 if s % 2 == 0 and s // 2 >= min_feature else 1 for s in size]
        if step == [1, 1, 1]:
            break
        size = [s // t for s, t in zip(size, step)]
        strides.append(step)
        kernels.append([3, 3, 3])
    filters = [min(base * 2**i, cap) for i in range(len(strides))]
    return kernels, strides, filters


def build_baseline(name: str, in_channels: int, out_channels: int, img_size: Sequence[int] | int,
                   deep_supervision: bool = True) -> nn.Module:
    """A baseline network by name (see the module docstring for the configurations).

    ``deep_supervision`` only affects ``dynunet`` (nnU-Net trains with it; in eval mode the
    network returns the full-resolution logits either way).
    """
    from monai.networks.nets import UNETR, DynUNet, SegResNet, SwinUNETR, UNet

    key = name.lower()
    size = _size3(img_size)
    if key == "unet":
        return UNet(3, in_channels, out_channels, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                    num_res_units=2, norm="INSTANCE")
    if key == "unetr":
        return UNETR(in_channels, out_channels, img_size=size, feature_size=16, hidden_size=768, mlp_dim=3072,
                     num_heads=12, proj_type="conv", norm_name="instance", res_block=True, dropout_rate=0.0)
    if key == "swinunetr":
        return SwinUNETR(in_channels, out_channels, feature_size=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
                         window_size=7, spatial_dims=3)
    if key == "segresnet":
        return SegResNet(3, init_filters=16, in_channels=in_channels, out_channels=out_channels,
                         blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
    if key == "dynunet":
        kernels, strides, filters = nnunet_plan(size)
        return DynUNet(3, in_channels, out_channels, kernel_size=kernels, strides=strides,
                       upsample_kernel_size=strides[1:], filters=filters, norm_name=("INSTANCE", {"affine": True}),
                       act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
                       deep_supervision=deep_supervision, deep_supr_num=max(1, len(strides) - 2), res_block=False)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


def baseline_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of a baseline: ``loss(train-mode output, integer labels (B, 1, D, H, W))``.

    Dice+CE (softmax, background excluded from Dice) for all; ``dynunet`` adds nnU-Net's deep
    supervision (weights ``1/2**i``, normalised, on the outputs DynUNet stacks on axis 1).
    """
    key = name.lower()
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    if key != "dynunet":
        return lambda output, target: dice_ce(output, target)

    def deep_supervised(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() == target.dim():  # deep supervision off, or eval mode
            return dice_ce(output, target)
        heads = torch.unbind(output, dim=1)
        weights = [0.5**i for i in range(len(heads))]
        norm = sum(weights)
        return sum(w / norm * dice_ce(h, target) for w, h in zip(weights, heads))  # type: ignore[return-value]

    return deep_supervised



class BaselineNet(nn.Module):
    """A baseline wrapped for the trainer and checkpoints: ``hparams`` and ``for_inference`` like VeloxSeg.

    ``hparams`` are this class's constructor arguments (stored as a checkpoint's ``model_kwargs``);
    the wrapped MONAI network is ``self.net`` (so its weights are ``net.*`` in the state dict).
    """

    def __init__(self, name: str, in_channels: int, out_channels: int, img_size: Sequence[int] | int,
                 deep_supervision: bool = True) -> None:
        super().__init__()
        self.hparams: dict[str, object] = {"name": name.lower(), "in_channels": int(in_channels),
                                           "out_channels": int(out_channels), "img_size": list(_size3(img_size)),
                                           "deep_supervision": bool(deep_supervision)}
        self.net = build_baseline(name, in_channels, out_channels, img_size, deep_supervision=deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def for_inference(self) -> BaselineNet:
        """A copy in eval mode (in eval mode every baseline returns the full-resolution logits only)."""
        import copy

        return copy.deepcopy(self).eval()


class BaselineLoss(nn.Module):
    """:func:`baseline_loss` with the trainer's loss interface: ``(output, target, image) -> parts``.

    Returns :class:`~veloxseg.losses.VeloxSegLossParts` with the reconstruction and SDKT parts zero
    (baselines have neither).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name.lower()
        self.fn = baseline_loss(name)

    def forward(self, output: torch.Tensor, target: torch.Tensor, image: torch.Tensor | None = None):  # noqa: ANN201
        from .losses import VeloxSegLossParts

        total = self.fn(output, target)
        zero = total.detach().new_zeros(())
        return VeloxSegLossParts(total, total.detach(), zero, zero)
