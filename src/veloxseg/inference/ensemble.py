"""Ensembles of models (the folds of a cross-validation): the mean of their softmax probabilities.

``veloxseg predict -m RUN_DIR`` (a folder written by ``veloxseg train --fold all``), ``-m A.pt B.pt ...``
or ``Predictor.from_checkpoint([...])`` give an :class:`EnsemblePredictor`. Per case:

1. the channel files are read once;
2. members whose preprocessing is equal (channel names, spacing, normalisation, cropping: the plans
   of the folds of one run) share one preprocessing pass; members with another plan get their own;
3. within such a group, members with the same patch size share one sliding-window pass: every
   window goes through each member (with its own flip TTA) and their logits are blended together,
   then each member's softmax is taken and the group's probabilities are their mean;
4. each group's probabilities are mapped back to the input grid with its own preprocessing
   inverted, and the groups are averaged there (weighted by their number of members), one class
   at a time with a running argmax.

Blending and the inverse resampling are linear, so the result equals the mean of the members'
single-model probabilities on the input grid (``tests/test_cross_validation.py`` checks 1e-5).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .predictor import WINDOW_PROGRESS_THRESHOLD, CasePrediction, Predictor, log

#: plan keys that decide the preprocessing (two members with equal values share one pass)
PREPROCESSING_KEYS: tuple[str, ...] = ("channel_names", "spacing", "normalization", "crop_foreground",
                                       "ct_body_threshold")
FOLD_DIR = re.compile(r"^fold_(\d+)$")


def preprocessing_key(plan: Mapping[str, Any]) -> str:
    """A string equal for two plans exactly when their preprocessing is the same."""
    return json.dumps({k: plan.get(k) for k in PREPROCESSING_KEYS}, sort_keys=True)


def fold_checkpoints(run: str | os.PathLike, folds: Sequence[int] | None = None) -> list[Path]:
    """``RUN_DIR/fold_K/checkpoint_best.pt`` of the chosen ``folds`` (default: every fold of ``splits.json``,
    else every ``fold_K`` folder); an :class:`InputError` naming what is missing."""
    run = Path(run)
    present = {int(m.group(1)): p for p in run.iterdir() if p.is_dir() and (m := FOLD_DIR.match(p.name))}
    if folds is None:
        splits = run / "splits.json"
        try:
            n = len(json.loads(splits.read_text())) if splits.is_file() else None
        except (OSError, ValueError):
            n = None
        folds = list(range(n)) if n is not None else sorted(present)
    if not folds:
        raise InputError(f"{run}: no fold_K/checkpoint_best.pt found (a folder of folds from veloxseg train "
                         f"--fold all, or a checkpoint file)")
    paths = []
    for k in folds:
        path = run / f"fold_{k}" / "checkpoint_best.pt"
        if not path.is_file():
            have = ", ".join(str(f) for f in sorted(present)) or "none"
            raise InputError(f"{path}: not found (folds with a folder: {have}); finish training that fold, or "
                             f"choose others with --folds")
        paths.append(path)
    return paths


def resolve_models(models: Sequence[str | os.PathLike], folds: Sequence[int] | None = None) -> list[Path]:
    """The model files of ``veloxseg predict -m``: one file, several files, or a run folder (its folds)."""
    paths = [Path(m) for m in models]
    if len(paths) == 1 and paths[0].is_dir():
        run = paths[0]
        if folds is None and (run / "checkpoint_best.pt").is_file() and not any(run.glob("fold_*")):
            return [run / "checkpoint_best.pt"]  # a single run's folder
        return fold_checkpoints(run, folds)
    if folds is not None:
        raise InputError("--folds picks folds of a run folder: give -m RUN_DIR (written by veloxseg train --fold all)")
    for p in paths:
        if p.is_dir():
            raise InputError(f"{p}: is a folder; give one run folder alone, or checkpoint files")
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise InputError(f"-m names the same model twice ({', '.join(str(p) for p in paths)})")
    return paths


def load_predictor(models: Sequence[str | os.PathLike] | str | os.PathLike, folds: Sequence[int] | None = None,
                   **kwargs: Any) -> Predictor:
    """A :class:`Predictor` for one model, an :class:`EnsemblePredictor` for several or a folder of folds.

    ``kwargs`` go to :meth:`Predictor.from_checkpoint` (device, engine, threads, overlap, tta, ...).
    """
    models = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    paths = resolve_models(models, folds)
    share = kwargs.pop("share_preprocessing", True)
    if len(paths) == 1:  # one model (or one fold): the plain predictor
        return Predictor.from_checkpoint(paths[0], **kwargs)
    return EnsemblePredictor.from_checkpoints(paths, share_preprocessing=share, **kwargs)


class EnsemblePredictor(Predictor):
    """Average the softmax probabilities of several models on the input grid (see the module docstring).

    Example::

        ens = EnsemblePredictor.from_checkpoints(["run/fold_0/checkpoint_best.pt", "run/fold_1/checkpoint_best.pt"])
        seg = ens.predict(["case_0000.nii.gz", "case_0001.nii.gz"])
        probs = ens.probabilities(volume, affine)        # float32 (classes, x, y, z), the members' mean
    """

    def __init__(self, members: Sequence[Predictor], share_preprocessing: bool = True) -> None:
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one model")
        first = members[0]
        for m in members[1:]:
            if list(m.model.channel_names) != list(first.model.channel_names):
                raise InputError(f"{m.model.source}: takes channels {', '.join(m.model.channel_names)}, "
                                 f"{first.model.source} takes {', '.join(first.model.channel_names)}; an ensemble's "
                                 f"models must take the same channels")
            if dict(m.model.labels) != dict(first.model.labels):
                raise InputError(f"{m.model.source}: labels {m.model.labels} differ from {first.model.source}'s "
                                 f"{first.model.labels}; an ensemble's models must predict the same labels")
        super().__init__(first.model, overlap=first.overlap, tta=first.tta, sw_batch_size=first.sw_batch_size,
                         device=first.device, window_progress=first.window_progress)
        self.members = members
        self.share_preprocessing = share_preprocessing

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | os.PathLike], **kwargs: Any) -> EnsemblePredictor:
        """Load every model with :meth:`Predictor.from_checkpoint` (same ``kwargs``)."""
        share = kwargs.pop("share_preprocessing", True)
        return cls([Predictor.from_checkpoint(p, **kwargs) for p in paths], share_preprocessing=share)

    # -- grouping ----------------------------------------------------------------------------------

    def groups(self) -> list[list[int]]:
        """Member indices grouped by equal preprocessing (each member alone without ``share_preprocessing``)."""
        if not self.share_preprocessing:
            return [[i] for i in range(len(self.members))]
        out: dict[str, list[int]] = {}
        for i, m in enumerate(self.members):
            out.setdefault(preprocessing_key(m.model.plan), []).append(i)
        return list(out.values())

    # -- prediction --------------------------------------------------------------------------------

    def _mean_probabilities(self, members: list[Predictor], x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
        """Mean softmax of ``members`` (same patch size) over one sliding-window pass of ``x``."""
        from monai.inferers import sliding_window_inference

        patch = members[0].model.patch_size
        size = tuple(x.shape[1:])
        padded = any(s < p for s, p in zip(size, patch))
        windows = int(np.prod([max(1, int(np.ceil((s - p) / (p * (1 - self.overlap)))) + 1) if s > p else 1
                               for s, p in zip(size, patch)]))

        def every_member(w: torch.Tensor) -> torch.Tensor:
            return torch.cat([m._window(w) for m in members], dim=1)

        with torch.inference_mode():
            logits = sliding_window_inference(
                x.as_tensor()[None].float() if hasattr(x, "as_tensor") else x[None].float(),
                roi_size=patch, sw_batch_size=self.sw_batch_size, predictor=every_member, overlap=self.overlap,
                mode="gaussian", padding_mode="constant", cval=0.0, sw_device=self.device, device="cpu",
                progress=self.window_progress and windows > WINDOW_PROGRESS_THRESHOLD,
            )[0]
            classes = logits.shape[0] // len(members)
            probs = torch.softmax(logits.view(len(members), classes, *logits.shape[1:]), dim=1).mean(0)
        return probs, padded

    def _group_probabilities(self, group: list[int], image: np.ndarray, affine: np.ndarray, name: str,
                             missing: Sequence[int]) -> tuple[Any, torch.Tensor, bool]:
        """One preprocessing pass for ``group``; its preprocessed image and the mean of its members' probabilities."""
        leader = self.members[group[0]]
        pre = leader._preprocess(image, affine, name)
        if missing:
            pre[list(missing)] = 0.0  # as in training with modality dropout: zero after normalisation
        by_patch: dict[tuple[int, ...], list[Predictor]] = {}
        for i in group:
            by_patch.setdefault(self.members[i].model.patch_size, []).append(self.members[i])
        total, padded = None, False
        for members in by_patch.values():
            probs, pad = self._mean_probabilities(members, pre, name)
            padded |= pad
            probs = probs * (len(members) / len(group))
            total = probs if total is None else total + probs
        assert total is not None
        return pre, total, padded

    @staticmethod
    def _back(member: Predictor, pre: Any) -> Callable[[torch.Tensor], np.ndarray]:
        """Map one class's probabilities back to the input grid with ``member``'s preprocessing inverted."""
        return member.inverter(pre)

    def _input_grid(self, image: np.ndarray, affine: np.ndarray, name: str, missing: Sequence[int],
                    stack_dtype: Any = None) -> tuple[np.ndarray, np.ndarray | None, bool, tuple[int, ...]]:
        """Labels, the stacked mean probabilities (``stack_dtype``; None: not kept), padding, preprocessed shape."""
        parts = []
        padded = False
        shape: tuple[int, ...] = ()
        for group in self.groups():
            pre, probs, pad = self._group_probabilities(group, image, affine, name, missing)
            padded |= pad
            shape = shape or tuple(pre.shape[1:])
            parts.append((self._back(self.members[group[0]], pre), probs, len(group) / len(self.members)))
        if padded:
            log.warning("%s: the preprocessed image is smaller than one patch; it is padded for prediction and the "
                        "padding is cropped away again", name)
        classes = parts[0][1].shape[0]
        labels = best = None
        stack = [] if stack_dtype is not None else None
        for k in range(classes):
            acc = None
            for back, probs, weight in parts:
                # regions outside the foreground crop come back as 0: invert "not background" for the background
                pk = 1.0 - back(1.0 - probs[0]) if k == 0 else back(probs[k])
                pk *= np.float32(weight)
                acc = pk if acc is None else np.add(acc, pk, out=acc)
            assert acc is not None
            if best is None:
                best, labels = acc.copy(), np.zeros(acc.shape, dtype=np.uint8)
            else:
                better = acc > best
                labels[better] = k
                np.maximum(best, acc, out=best)
            if stack is not None:
                stack.append(acc.astype(stack_dtype))
        assert labels is not None
        return labels, (np.stack(stack) if stack is not None else None), padded, shape

    def predict_case_array(self, image: np.ndarray, affine: np.ndarray, name: str = "array",
                           keep_probabilities: bool = False, missing: Sequence[int] = ()) -> CasePrediction:
        """The ensemble's labels (and float16 probabilities) of a ``(C, x, y, z)`` image on its own grid."""
        return self._predict([self._check_array(image, name)], affine, name, keep_probabilities, True, missing)

    def _predict(self, holder: list[np.ndarray], affine: np.ndarray, name: str, keep_probabilities: bool,
                 keep_image: bool, missing: Sequence[int] = ()) -> CasePrediction:
        """The ensemble's pipeline on ``holder[0]`` (what :meth:`Predictor.predict_case` calls); the image
        is kept for the members' passes whatever ``keep_image`` says."""
        start = time.perf_counter()
        image = holder[0]
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"{name}: the affine must be a finite 4x4 matrix, got shape {affine.shape}")
        labels, stack, padded, shape = self._input_grid(image, affine, name, missing,
                                                        np.float16 if keep_probabilities else None)
        if labels.shape != image.shape[1:]:
            raise RuntimeError(f"{name}: prediction shape {labels.shape} differs from the input {image.shape[1:]}")
        return CasePrediction(labels, affine, stack, image, None, padded, shape, time.perf_counter() - start,
                              {"ensemble": [str(m.model.source) for m in self.members]})

    def probabilities(self, image: np.ndarray, affine: np.ndarray, name: str = "array",
                      missing: Sequence[int] = ()) -> np.ndarray:
        """The members' mean class probabilities on the input grid, float32 ``(classes, x, y, z)``."""
        image = self._check_array(image, name)
        _, stack, _, _ = self._input_grid(image, np.asarray(affine, dtype=np.float64), name, missing, np.float32)
        assert stack is not None
        return stack

    def describe(self) -> str:
        """One line on the ensemble, for logs and the run summary."""
        names = ", ".join(_short_name(m.model.source) for m in self.members)
        groups = len(self.groups())
        return (f"ensemble of {len(self.members)} models ({names}); {groups} preprocessing pass(es) per case; "
                f"first: {self.members[0].describe()}")


def _short_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if FOLD_DIR.match(path.parent.name) else path.name
