"""The network really learns: a few steps on one synthetic volume with a bright sphere."""

import torch
from monai.metrics import DiceHelper

from veloxseg import VeloxSeg, VeloxSegLoss


def sphere_volume(size: int = 64, radius: float = 12.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coords = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = torch.tensor([size * 0.45, size * 0.55, size * 0.5]).view(3, 1, 1, 1)
    label = ((coords - centre).pow(2).sum(0) < radius**2).long()
    pet = 3.0 * label + 0.3 * torch.randn(size, size, size, generator=g)
    ct = 1.0 * label + 0.5 * torch.randn(size, size, size, generator=g)
    return torch.stack([pet, ct])[None], label[None, None]


def test_tiny_training_run_learns_a_sphere():
    torch.manual_seed(0)
    x, y = sphere_volume()
    model = VeloxSeg(in_channels=[1, 1], out_channels=2, img_size=64)
    loss_fn = VeloxSegLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seg_losses = []
    model.train()
    for _ in range(30):
        opt.zero_grad()
        parts = loss_fn(model(x), y, x)
        parts.total.backward()
        opt.step()
        seg_losses.append(parts.segmentation.item())
    assert sum(seg_losses[-5:]) / 5 < 0.5 * sum(seg_losses[:5]) / 5
    with torch.no_grad():
        pred = model.for_inference()(x).argmax(1, keepdim=True)
    dice = DiceHelper(include_background=False, reduction="mean", get_not_nans=False)(pred, y)
    print("sphere dice", float(dice))
    assert float(dice) > 0.8, float(dice)
