"""The VeloxSeg loss: deep-supervised Dice+CE, reconstruction MSE and the SDKT Gram term."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from .networks.layers import fast_paths_enabled
from .networks.veloxseg import VeloxSegOutput


class DeepSupervisionDiceCE(nn.Module):
    """Weighted sum of MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` over several outputs.

    On the fast path the same numbers are computed with the one-hot target built once for all
    outputs and one log-softmax per output (softmax = exp of it), instead of a one-hot, a softmax
    and a log-softmax per output; ``tests/test_losses.py`` checks it against MONAI to 1e-5.
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
        onehot = F.one_hot(index, classes).movedim(-1, 1).to(logits[0].dtype)
        first = 0 if self.include_background or classes == 1 else 1
        onehot = onehot[:, first:]
        dims = tuple(range(2, onehot.dim()))
        ground = onehot.sum(dims)
        total = logits[0].new_zeros(())
        for w, lg in zip(weights, logits):
            logp = F.log_softmax(lg, dim=1)
            ce = F.nll_loss(logp, index)
            prob = logp.exp()[:, first:]
            inter = (prob * onehot).sum(dims)
            dice = 1.0 - (2.0 * inter + self.smooth_nr) / (ground + prob.sum(dims) + self.smooth_dr)
            total = total + w * (dice.mean() + ce)
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
            rc = F.mse_loss(output.reconstruction, image)
        sdkt = zero
        if output.gram_student is not None and output.gram_teachers:
            sdkt = torch.stack([F.mse_loss(g, output.gram_student) for g in output.gram_teachers]).mean()
        total = seg + self.lambda_rc * rc + self.lambda_sdkt * sdkt
        return VeloxSegLossParts(total, seg.detach(), rc.detach(), sdkt.detach())
