"""Predict whole cases with a checkpoint's plan: preprocess, sliding window, map back to the file's grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def predict_case(model: nn.Module, plan: Mapping[str, Any], image_paths: Sequence[str],
                 device: torch.device | str = "cpu", overlap: float = 0.25,
                 sw_batch_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Label map (uint8, the grid of ``image_paths[0]``) and its affine for one case.

    Runs :func:`veloxseg.data.preprocessing.inference_transforms`, Gaussian-weighted sliding-window
    inference with the plan's patch size, argmax, and ``Invertd`` back to the original grid.
    """
    from monai.inferers import sliding_window_inference
    from monai.transforms import Invertd

    from ..data.preprocessing import inference_transforms

    transform = inference_transforms(plan)
    data = transform({"image": [str(p) for p in image_paths]})
    x = data["image"]
    logits = sliding_window_inference(torch.as_tensor(x)[None].to(device).float(), list(plan["patch_size"]),
                                      sw_batch_size, model, overlap=overlap, mode="gaussian")
    pred = logits[0].argmax(0, keepdim=True).to(torch.float32).cpu()
    from monai.data import MetaTensor

    data["pred"] = MetaTensor(pred, meta=dict(x.meta))
    inverted = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=True)(data)
    out = inverted["pred"]
    return np.asarray(out[0].cpu().numpy().round(), dtype=np.uint8), np.asarray(out.affine, dtype=np.float64)
