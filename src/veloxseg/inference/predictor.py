"""Predict one case: the checkpoint's preprocessing, sliding windows, and back to the input's grid.

Pipeline (the checkpoint alone decides every step):

1. read the channel files (:mod:`veloxseg.io`), checking they exist, are readable NIfTI, share one
   grid and hold finite values;
2. the training preprocessing of :func:`veloxseg.data.preprocessing.inference_transforms`
   (RAS orientation, foreground crop, resampling to the plan's spacing, per-channel normalisation),
   applied to the arrays in memory;
3. MONAI's ``sliding_window_inference`` over patches of the training size with Gaussian blending
   (optionally with flip test-time augmentation inside each window, as nnU-Net does), then softmax;
4. each class's probability mapped back to the input grid with ``Invertd`` (linear interpolation),
   one class at a time with a running argmax, so memory beyond the stitching buffer is two
   input-sized float arrays whatever the number of classes.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import torch

from ..errors import InputError
from ..runtime import tune_allocator
from .cases import Case, case_from_files
from .engines import LoadedModel, load_model

log = logging.getLogger(__name__)

#: above this many windows per case the sliding window shows its own progress bar
WINDOW_PROGRESS_THRESHOLD = 64


@dataclass
class CasePrediction:
    """What predicting one case gives: the label map on the input grid and optional extras."""

    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None = None
    image: np.ndarray | None = None
    reference: nib.Nifti1Image | None = None
    padded: bool = False
    preprocessed_shape: tuple[int, ...] = ()
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def to_nifti(self) -> nib.Nifti1Image:
        """The label map as a uint8 NIfTI image with the input's header geometry (shape, affine, codes)."""
        return label_image(self.labels, self.affine, self.reference)


def label_image(labels: np.ndarray, affine: np.ndarray, reference: nib.Nifti1Image | None = None) -> nib.Nifti1Image:
    """A uint8 label image; with ``reference``, its header's sform/qform and units are kept exactly."""
    labels = np.asarray(labels, dtype=np.uint8)
    if reference is None:
        img = nib.Nifti1Image(labels, np.asarray(affine, dtype=np.float64))
        img.header.set_xyzt_units("mm", "sec")
        return img
    header = nib.Nifti1Header.from_header(reference.header)
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 0
    header.set_intent("none")
    header["descrip"] = b"veloxseg prediction"
    return nib.Nifti1Image(labels, reference.affine, header)


def needed_gb(shape: Sequence[int], classes: int) -> float:
    """A rough memory need of predicting an input of spatial ``shape``: the input, its preprocessed copy,
    the class probabilities and the map back, in float32."""
    voxels = float(np.prod(shape))
    return voxels * 4 * (3 + 2 * classes) / 1024 ** 3


def flip_axes_sets(tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes (of a ``(B, C, D, H, W)`` tensor) to flip: all 8 combinations with TTA, else none."""
    if not tta:
        return [()]
    return [axes for r in range(4) for axes in itertools.combinations((2, 3, 4), r)]


class Predictor:
    """Segment images with a trained VeloxSeg checkpoint (or an exported model).

    Example::

        predictor = Predictor.from_checkpoint("model.pt", device="cpu")
        seg = predictor.predict(["case_0000.nii.gz", "case_0001.nii.gz"])   # nibabel image, input grid
        labels = predictor.predict_array(volume, affine)                      # numpy uint8
    """

    def __init__(self, model: LoadedModel, overlap: float = 0.25, tta: bool = False, sw_batch_size: int = 2,
                 device: str | torch.device = "cpu", window_progress: bool = False) -> None:
        """``model.precision`` ``auto`` is decided on the first batch of windows (:mod:`.precision`)."""
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.model = model
        self.overlap = float(overlap)
        self.tta = bool(tta)
        self.sw_batch_size = int(sw_batch_size)
        self.device = torch.device(device)
        self.window_progress = window_progress
        self._transform = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | Sequence[str | os.PathLike], device: str | torch.device = "cpu",
                        engine: str = "torch", threads: int | None = None, tune_memory: bool = False,
                        precision: str = "fp32", **kwargs: Any) -> Predictor:
        """Load ``path`` (a checkpoint, or a model from ``veloxseg export``) to run with ``engine`` in ``precision``
        (``auto``, ``fp32`` or ``bf16``: :func:`~.engines.load_model`); ``kwargs`` go to the constructor.

        A list of models, or a run folder of folds (``veloxseg train --fold all``), gives an ensemble
        (:class:`~.ensemble.EnsemblePredictor`). ``threads`` sets torch's thread count; ``tune_memory``
        sets glibc's allocator thresholds for the whole process (:func:`veloxseg.runtime.tune_allocator`,
        what the CLI does). Neither is changed unless asked.
        """
        if not isinstance(path, (str, os.PathLike)) or os.path.isdir(path):
            from .ensemble import load_predictor

            return load_predictor(path, device=device, engine=engine, threads=threads, tune_memory=tune_memory,
                                  precision=precision, **kwargs)
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device must be cpu, cuda or auto, got {device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
        if device.type == "cuda" and engine == "onnxruntime":
            raise ValueError("--engine onnxruntime runs on the CPU here; use --device cpu, or --engine torch on cuda")
        if threads:
            torch.set_num_threads(int(threads))
        if device.type == "cpu" and tune_memory:
            tune_allocator()
        return cls(load_model(path, engine, device, threads, precision), device=device, **kwargs)

    # -- preprocessing -------------------------------------------------------------------------

    @property
    def transform(self):
        """The checkpoint's inference preprocessing without the file loading (arrays come from io.py)."""
        if self._transform is None:
            from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

            from ..data.preprocessing import inference_transforms

            chain = inference_transforms(self.model.plan).transforms
            self._transform = Compose([t for t in chain if not isinstance(t, (LoadImaged, EnsureChannelFirstd))])
        return self._transform

    def _preprocess(self, image: np.ndarray, affine: np.ndarray, name: str = "array"):
        from monai.data import MetaTensor

        from ..data.preprocessing import foreground_mask

        if self.model.plan.get("crop_foreground", True) and foreground_mask(self.model.plan).is_empty(image):
            log.warning("%s: no body found (nothing above the foreground threshold); predicting the whole volume",
                        name)
        tensor = MetaTensor(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                            affine=torch.as_tensor(np.asarray(affine, dtype=np.float64)))
        return self.transform({"image": tensor})["image"]

    # -- network ---------------------------------------------------------------------------------

    def _decide_precision(self, x: torch.Tensor) -> None:
        """``auto``: compute the first windows in fp32 and bf16 and keep bf16 only if the labels agree and it is faster."""
        from .precision import choose, timed

        m = self.model
        assert m.bf16_engine is not None
        reference = m.reference or m.engine
        (fp32, t32), (bf16, t16) = timed(reference, x), timed(m.bf16_engine, x)
        chosen, _ = choose(fp32, bf16, speedup=t32 / max(t16, 1e-9))
        if chosen == "bf16":
            m.engine = m.bf16_engine
        m.precision, m.bf16_engine, m.reference = chosen, None, None

    def _window(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of windows, averaged over the flips when TTA is on (float32 whatever the precision)."""
        if self.model.precision == "auto":
            self._decide_precision(x)
        axes_sets = flip_axes_sets(self.tta)
        total = None
        for axes in axes_sets:
            xi = torch.flip(x, axes) if axes else x
            out = self.model.engine(xi).float().cpu()
            out = torch.flip(out, axes) if axes else out
            total = out if total is None else total.add_(out)
        assert total is not None
        return total.div_(len(axes_sets)) if len(axes_sets) > 1 else total

    def _probabilities(self, x: torch.Tensor, case: str) -> tuple[torch.Tensor, bool]:
        from monai.inferers import sliding_window_inference

        patch = self.model.patch_size
        size = tuple(x.shape[1:])
        padded = any(s < p for s, p in zip(size, patch))
        if padded:
            log.warning("%s: the preprocessed image %s is smaller than one patch %s; it is padded for prediction "
                        "and the padding is cropped away again", case, size, patch)
        windows = int(np.prod([max(1, int(np.ceil((s - p) / (p * (1 - self.overlap)))) + 1) if s > p else 1
                               for s, p in zip(size, patch)]))
        with torch.inference_mode():
            logits = sliding_window_inference(
                x.as_tensor()[None].float() if hasattr(x, "as_tensor") else x[None].float(),
                roi_size=patch, sw_batch_size=self.sw_batch_size, predictor=self._window, overlap=self.overlap,
                mode="gaussian", padding_mode="constant", cval=0.0, sw_device=self.device, device="cpu",
                progress=self.window_progress and windows > WINDOW_PROGRESS_THRESHOLD,
            )
            probs = logits[0]  # softmax in place: no second class-by-volume buffer
            probs.sub_(probs.amax(dim=0, keepdim=True)).exp_()
            probs.div_(probs.sum(dim=0, keepdim=True))
        return probs, padded

    def inverter(self, pre: Any) -> Callable[[torch.Tensor], np.ndarray]:
        """A function mapping one class's probabilities on ``pre``'s grid back to the input grid (float32),
        undoing this model's preprocessing (resampling, crop, reorientation; trilinear)."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        invert = Invertd(keys="pred", transform=self.transform, orig_keys="image", nearest_interp=False)

        def back(channel: torch.Tensor) -> np.ndarray:
            out = invert({"image": pre, "pred": MetaTensor(channel[None].clone())})["pred"]
            return np.asarray(out[0].detach().cpu().numpy(), dtype=np.float32)

        return back

    def _to_input_grid(self, probs: torch.Tensor, pre, keep_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Map class probabilities back to the input grid one class at a time, with a running argmax."""
        back = self.inverter(pre)
        # regions outside the foreground crop come back as 0: invert "not background" so they are background
        best = 1.0 - back(1.0 - probs[0])
        labels = np.zeros(best.shape, dtype=np.uint8)
        stack = [best.astype(np.float16)] if keep_probabilities else None
        for k in range(1, probs.shape[0]):
            pk = back(probs[k])
            better = pk > best
            labels[better] = k
            np.maximum(best, pk, out=best)
            if stack is not None:
                stack.append(pk.astype(np.float16))
            del pk, better
        return labels, (np.stack(stack) if stack is not None else None)

    # -- public API ------------------------------------------------------------------------------

    def _check_array(self, image: np.ndarray, name: str) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim == 3 and self.model.num_channels == 1:
            image = image[None]
        if image.ndim != 4:
            raise InputError(f"{name}: expected a (channels, x, y, z) array, got shape {image.shape}")
        if image.shape[0] != self.model.num_channels:
            raise InputError(f"{name}: has {image.shape[0]} channel(s), the model takes {self.model.num_channels} "
                             f"({', '.join(self.model.channel_names)})")
        bad = sum(int((~np.isfinite(channel)).sum()) for channel in image)  # per channel: a small mask
        if bad:
            raise InputError(f"{name}: {bad} voxels are NaN or infinite")
        return image

    def predict_case_array(self, image: np.ndarray, affine: np.ndarray, name: str = "array",
                           keep_probabilities: bool = False, missing: Sequence[int] = ()) -> CasePrediction:
        """Predict a ``(C, x, y, z)`` image with its voxel-to-world ``affine``; labels on the same grid.

        ``missing``: channels that are placeholders (:mod:`.missing`), zeroed after normalisation.
        """
        return self._predict([self._check_array(image, name)], affine, name, keep_probabilities, keep_image=True,
                             missing=missing)

    def _predict(self, holder: list[np.ndarray], affine: np.ndarray, name: str, keep_probabilities: bool,
                 keep_image: bool, missing: Sequence[int] = ()) -> CasePrediction:
        """The pipeline on ``holder[0]``; without ``keep_image`` the holder is emptied once the image is
        preprocessed, so the input's memory is freed before the windows run (if nothing else holds it)."""
        start = time.perf_counter()
        image = holder[0]
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"{name}: the affine must be a finite 4x4 matrix, got shape {affine.shape}")
        shape = image.shape[1:]
        try:
            pre = self._preprocess(image, affine, name)
            if missing:
                pre[list(missing)] = 0.0  # as in training with modality dropout
            if not keep_image:
                holder.clear()
                image = None
            probs, padded = self._probabilities(pre, name)
            labels, stack = self._to_input_grid(probs, pre, keep_probabilities)
        except MemoryError:
            dims = "x".join(map(str, (self.model.num_channels, *shape)))
            raise MemoryError(f"out of memory for {name}: a {dims} case needs roughly "
                              f"{needed_gb(shape, len(self.model.labels) or 2):.1f} GB") from None
        if labels.shape != shape:  # cannot happen unless the preprocessing is not invertible
            raise RuntimeError(f"{name}: prediction shape {labels.shape} differs from the input {shape}")
        return CasePrediction(labels, affine, stack, image, None, padded, tuple(pre.shape[1:]),
                              time.perf_counter() - start)

    def predict_array(self, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Label map (uint8, same shape as ``array``'s spatial axes) of a ``(C, x, y, z)`` array."""
        return self.predict_case_array(array, affine).labels

    def read_case(self, case: Case) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
        """The channels of ``case`` stacked ``(C, x, y, z)``, their affine, and channel 0's image (header).

        Channels are read one at a time into one preallocated array: the peak is the stacked
        input plus one channel, not twice the input.
        """
        from ..io import check_same_grid, read_header, read_nifti

        if len(case.channels) + len(case.missing) != self.model.num_channels:
            raise InputError(f"{case.channels[0]}: case {case.name} has {len(case.channels)} channel file(s), the "
                             f"model takes {self.model.num_channels} ({', '.join(self.model.channel_names)})")
        if case.missing:
            from .missing import check_missing_allowed

            for model in getattr(self, "members", [self]):
                check_missing_allowed(model.model.plan, case.name, case.missing, self.model.channel_names,
                                      model.model.source)
        headers = [read_header(p) for p in case.channels]
        problems = check_same_grid(headers)
        if problems:
            raise InputError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        stacked = np.empty((self.model.num_channels, *headers[0].shape), dtype=np.float32)
        present = [c for c in range(self.model.num_channels) if c not in case.missing]
        for c, p in zip(present, case.channels):
            stacked[c], _ = read_nifti(p)
        if case.missing:
            from .missing import placeholders

            filled = placeholders([None if c in case.missing else stacked[c] for c in range(len(stacked))],
                                  self.model.plan)
            for c in case.missing:
                stacked[c] = filled[c]
            del filled
        reference = nib.load(str(case.channels[0]))
        return stacked, np.asarray(reference.affine, dtype=np.float64), reference

    def predict_case(self, case: Case, keep_probabilities: bool = False, keep_image: bool = True) -> CasePrediction:
        """Predict one :class:`Case` read from its files; labels on channel 0's grid.

        ``keep_image=False`` frees the input once it is preprocessed (``result.image`` is then None).
        """
        start = time.perf_counter()
        image, affine, reference = self.read_case(case)
        if case.missing:
            absent = ", ".join(f"channel {c} ({self.model.channel_names[c]})" for c in case.missing)
            log.warning("case %s: %s missing: predicted with it zeroed (the model was trained with modality "
                        "dropout %s)", case.name, absent, self.model.plan.get("modality_dropout"))
        holder = [self._check_array(image, str(case.channels[0]))]
        del image
        result = self._predict(holder, affine, str(case.channels[0]), keep_probabilities, keep_image,
                               missing=case.missing)
        if case.missing:
            from .missing import missing_info

            result.info.update(missing_info(case.missing, self.model.channel_names, self.model.plan))
        result.reference = reference
        result.seconds = time.perf_counter() - start
        return result

    def predict(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> nib.Nifti1Image:
        """Label map of one case given as its channel files (training order), as a uint8 nibabel image."""
        files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        case = case_from_files(files, self.model.channel_names)
        return self.predict_case(case).to_nifti()

    def check_case(self, case: Case) -> None:
        """Header-only checks of a case (files exist, readable, same grid) before any prediction starts."""
        from ..io import check_same_grid, read_header

        problems = check_same_grid([read_header(p) for p in case.channels])
        if problems:
            raise InputError(problems[0])

    def describe(self) -> str:
        """One line on the loaded model, for logs and the run summary."""
        m = self.model
        return (f"{m.source.name} ({m.engine_name}, {m.precision}, {m.num_channels} channel(s): {', '.join(m.channel_names)}, "
                f"patch {list(m.patch_size)}, spacing {list(m.plan['spacing'])}, overlap {self.overlap}"
                f"{', flip TTA' if self.tta else ''})")

