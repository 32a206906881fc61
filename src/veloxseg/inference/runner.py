"""Predicting a list of cases into a folder: output checks, progress, ``--continue``, run summary.

Per case the extras (``.npz`` probabilities, ``.png`` preview) are written first and the label map
``<case>.nii.gz`` last, each to a temporary name renamed into place, so an existing label map means
a finished case: interrupting a run leaves finished cases intact and nothing half-written, and
``--continue`` skips the finished ones.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_path
from .cases import Case
from .predictor import CasePrediction, Predictor

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a prediction run did."""

    output_dir: Path
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    padded: list[str] = field(default_factory=list)
    total_seconds: float = 0.0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [f"predicted {len(self.predicted)} case(s) into {self.output_dir}"
               + (f", skipped {len(self.skipped)} already finished (--continue)" if self.skipped else "")]
        if self.seconds:
            t = np.array(list(self.seconds.values()))
            out.append(f"time per case: mean {t.mean():.2f} s, min {t.min():.2f} s, max {t.max():.2f} s; "
                       f"total {self.total_seconds:.1f} s")
        if self.padded:
            out.append(f"padded to one patch (smaller than the patch after resampling): {', '.join(self.padded)}")
        return out


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check a file can be written there; :class:`InputError` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: output path exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{path}: cannot create the output folder ({err.strerror or err})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".veloxseg-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"{path}: output folder is not writable ({err.strerror or err})") from None
    return path


def output_paths(output_dir: Path, case: str) -> dict[str, Path]:
    """Where a case's files go: ``<case>.nii.gz``, ``<case>.npz``, ``<case>.png``."""
    return {"labels": output_dir / f"{case}.nii.gz", "probabilities": output_dir / f"{case}.npz",
            "preview": output_dir / f"{case}.png"}


def is_finished(output_dir: Path, case: str, save_probabilities: bool, preview: bool) -> bool:
    """A case is finished when its label map (and the requested extras) exist."""
    paths = output_paths(output_dir, case)
    return (paths["labels"].is_file() and (not save_probabilities or paths["probabilities"].is_file())
            and (not preview or paths["preview"].is_file()))


def save_case(result: CasePrediction, output_dir: Path, case: str, channel_names: Sequence[str],
              labels: dict[str, int] | None = None, save_probabilities: bool = False, preview: bool = False) -> None:
    """Write a case's outputs: extras first, the label map last, each atomically."""
    import nibabel as nib

    paths = output_paths(output_dir, case)
    if save_probabilities and result.probabilities is not None:
        with atomic_path(paths["probabilities"], ".npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=result.probabilities, affine=result.affine,
                                labels=np.array(sorted((labels or {}).values()) or
                                                list(range(result.probabilities.shape[0]))))
    if preview and result.image is not None:
        from .preview import write_preview

        write_preview(paths["preview"], result.image, result.labels, result.affine, channel_names, title=case)
    with atomic_path(paths["labels"], ".nii.gz") as tmp:
        nib.save(result.to_nifti(), tmp)


def predict_cases(predictor: Predictor, cases: Sequence[Case], output_dir: str | os.PathLike,
                  save_probabilities: bool = False, preview: bool = False, resume: bool = False,
                  progress: bool = True) -> RunSummary:
    """Predict ``cases`` into ``output_dir``; header problems of any case stop the run before it starts."""
    from tqdm import tqdm

    out = Path(output_dir)
    summary = RunSummary(out)
    todo = []
    for case in cases:
        if resume and is_finished(out, case.name, save_probabilities, preview):
            summary.skipped.append(case.name)
        else:
            todo.append(case)
    for case in todo:  # header checks of every case first: fail before any work is done
        predictor.check_case(case)
    ensure_output_dir(out)  # only once the inputs are known to be good: a failed run creates no folder
    if summary.skipped:
        log.info("--continue: %d finished case(s) skipped", len(summary.skipped))
    from tqdm.contrib.logging import logging_redirect_tqdm

    start = time.perf_counter()
    with logging_redirect_tqdm():  # log lines above the bar, not through it
        bar = tqdm(todo, desc="predict", unit="case", disable=not progress or not todo)
        for case in bar:
            bar.set_postfix_str(case.name)
            t0 = time.perf_counter()
            result = predictor.predict_case(case, keep_probabilities=save_probabilities)
            save_case(result, out, case.name, predictor.model.channel_names, predictor.model.labels,
                      save_probabilities, preview)
            summary.predicted.append(case.name)
            summary.seconds[case.name] = time.perf_counter() - t0  # reading, predicting and writing
            if result.padded:
                summary.padded.append(case.name)
            del result
    summary.total_seconds = time.perf_counter() - start
    return summary
