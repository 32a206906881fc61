"""The VeloxSeg loss: deep-supervised Dice+CE, reconstruction MSE and the SDKT Gram term."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from .networks.layers import fast_paths_enabled
from .networks.veloxseg import VeloxSegOutput


class _DiceCE(torch.autograd.Function):
    """``weight * (Dice + CE)`` of one output with a hand-written backward.

    It keeps one full-size tensor for the backward (the softmax), where autograd through the
    individual ops keeps three (log-softmax, softmax and a product), and its backward is five
    passes over the output instead of a dozen.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor, onehot: torch.Tensor,  # type: ignore[override]
                ground: torch.Tensor, first: int, weight: float, smooth_nr: float, smooth_dr: float) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=1)
        ce = -logp.gather(1, index.unsqueeze(1)).mean()  # = nll_loss(logp, index); 2.5x faster on a CPU
        prob = logp.exp_()  # the softmax, in place
        dims = tuple(range(2, prob.dim()))
        fg = prob[:, first:]
        num = 2.0 * (fg * onehot).sum(dims) + smooth_nr
        denom = ground + fg.sum(dims) + smooth_dr
        ctx.save_for_backward(prob, onehot, num, denom)
        ctx.first, ctx.weight = first, weight
        return weight * ((1.0 - num / denom).mean() + ce)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        prob, onehot, num, denom = ctx.saved_tensors
        first, scale = ctx.first, float(grad) * ctx.weight
        spatial = (1,) * (prob.dim() - 2)
        # d(mean Dice)/d prob_fg = a + b * onehot; zero for the background when it is excluded
        a = (scale / num.numel() * num / denom.square()).view(*num.shape, *spatial)
        b = (-2.0 * scale / num.numel() / denom).view(*num.shape, *spatial)
        g = torch.empty_like(prob)
        g[:, :first].zero_()
        g[:, first:].copy_(onehot).mul_(b).add_(a)
        # softmax backward of the Dice part, plus the CE gradient (prob - onehot_all) / N, in place
        ce = scale * prob.shape[1] / prob.numel()
        g.sub_((g[:, first:] * prob[:, first:]).sum(1, keepdim=True)).add_(ce).mul_(prob)
        g[:, first:].sub_(onehot, alpha=ce)
        if first:  # the background's one-hot is 1 - sum of the others
            g[:, 0].add_(onehot.sum(1), alpha=ce).sub_(ce)
        return g, None, None, None, None, None, None, None


class DeepSupervisionDiceCE(nn.Module):
    """Weighted sum of MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` over several outputs.

    On the fast path the same numbers are computed by one autograd function per output with the
    one-hot target built once for all outputs (less memory and time than autograd through
    MONAI's ops); ``tests/test_losses.py`` checks value and gradients against MONAI to 1e-5.
    """

    def __init__(self, include_background: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        self.include_background = include_background
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr
        self.monai = DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background,
                                smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    def forward(self, logits: Sequence[torch.Tensor], target: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
        """``sum_j weights[j] * (Dice + CE)(logits[j], target)`` for integer labels ``target`` ``(B, 1, ...)``."""
        if not fast_paths_enabled():
            return sum(w * self.monai(lg, target) for w, lg in zip(weights, logits))  # type: ignore[return-value]
        classes = logits[0].shape[1]
        index = target[:, 0].long()
        first = 0 if self.include_background or classes == 1 else 1
        labels = torch.arange(first, classes, device=index.device).view(1, -1, *(1,) * (index.dim() - 1))
        onehot = (index.unsqueeze(1) == labels).float()  # (B, classes - first, ...), no int64 one-hot
        ground = onehot.sum(tuple(range(2, onehot.dim())))
        total = logits[0].new_zeros((), dtype=torch.float32)
        for w, lg in zip(weights, logits):
            total = total + _DiceCE.apply(lg.float(), index, onehot, ground, first, float(w),
                                          self.smooth_nr, self.smooth_dr)
        return total


class VeloxSegLossParts(NamedTuple):
    """The total loss and its parts (detached parts are for logging)."""

    total: torch.Tensor
    segmentation: torch.Tensor
    reconstruction: torch.Tensor
    sdkt: torch.Tensor


class VeloxSegLoss(nn.Module):
    """``sum_j w_j (Dice+CE)(pred_j, y) + lambda_rc * MSE(recon, x) + lambda_sdkt * mean_m MSE(GM_m, GM_seg)``.

    Dice ignores the background and uses softmax (MONAI ``DiceCELoss``). Deep-supervision weights
    default to all ones and are normalised. Pass ``lambda_sdkt=0`` for the "teacher without Gram"
    control, ``lambda_rc=0`` to drop the reconstruction term.
    """

    def __init__(self, lambda_rc: float = 0.5, lambda_sdkt: float = 2.0,
                 ds_weights: Sequence[float] | None = None, include_background: bool = False) -> None:
        super().__init__()
        self.lambda_rc = lambda_rc
        self.lambda_sdkt = lambda_sdkt
        self.ds_weights = list(ds_weights) if ds_weights is not None else None
        self.dice_ce = DeepSupervisionDiceCE(include_background)
        self._present: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextlib.contextmanager
    def presence(self, channels: torch.Tensor, blocks: torch.Tensor) -> Iterator[None]:
        """Within the block, the teachers' terms count only what is present (modality dropout).

        ``channels`` ``(B, C)`` and ``blocks`` ``(B, M)`` bool: the reconstruction MSE is averaged over
        the present channels of each sample, the Gram term over the (sample, teacher) pairs whose
        block is present. With everything present both equal the unmasked terms.
        """
        self._present = (channels, blocks)
        try:
            yield
        finally:
            self._present = None

    def forward(self, output: VeloxSegOutput | torch.Tensor, target: torch.Tensor,
                image: torch.Tensor | None = None) -> VeloxSegLossParts:
        """Loss of a network ``output`` against integer labels ``target`` ``(B, 1, D, H, W)``.

        ``image`` is the network input, the reconstruction target; it is needed when the output
        carries a reconstruction.
        """
        if isinstance(output, torch.Tensor):
            output = VeloxSegOutput([output], None, None, [])
        weights = self.ds_weights or [1.0] * len(output.logits)
        if len(weights) < len(output.logits):
            raise ValueError(f"{len(output.logits)} outputs but only {len(weights)} deep-supervision weights")
        weights = weights[: len(output.logits)]
        norm = sum(weights)
        seg = self.dice_ce(output.logits, target, [w / norm for w in weights])
        zero = seg.new_zeros(())
        rc = zero
        if output.reconstruction is not None:
            if image is None:
                raise ValueError("the output has a reconstruction: pass the input image as the reconstruction target")
            if self._present is None:
                rc = F.mse_loss(output.reconstruction, image)
            else:
                rc = _masked_mse(output.reconstruction.float(), image.float(), self._present[0])
        sdkt = zero
        if output.gram_student is not None and output.gram_teachers:
            if self._present is None:
                sdkt = torch.stack([F.mse_loss(g, output.gram_student) for g in output.gram_teachers]).mean()
            else:
                per = torch.stack([(g.float() - output.gram_student.float()).square().flatten(1).mean(1)
                                   for g in output.gram_teachers], dim=1)  # (B, M)
                w = self._present[1].to(per.device, per.dtype)
                sdkt = (per * w).sum() / w.sum().clamp_min(1.0)
        total = seg + self.lambda_rc * rc + self.lambda_sdkt * sdkt
        return VeloxSegLossParts(total, seg.detach(), rc.detach(), sdkt.detach())


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the channels ``keep`` ``(B, C)`` marks present."""
    w = keep.to(pred.device, pred.dtype).view(*keep.shape, *(1,) * (pred.dim() - 2))
    voxels = pred[0, 0].numel()
    return ((pred - target).square() * w).sum() / (w.sum() * voxels).clamp_min(1.0)
