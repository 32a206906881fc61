"""Predicting a list of cases into a folder: output checks, progress, ``--continue``, run summary.

Per case the extras (``.npz`` probabilities, ``.png`` preview, ``.json`` when a channel file was absent:
:mod:`.missing`) are written first and the label map
``<case>.nii.gz`` last, each to a temporary name renamed into place and recorded in the folder's
:class:`~.manifest.OutputManifest`: interrupting a run (Ctrl-C or SIGTERM) leaves finished cases
intact and nothing half-written, and ``--continue`` skips the cases whose outputs are recorded and
readable. The run never replaces a file it did not write (unless ``overwrite``), refuses an output
folder that holds input images, and a case that fails is reported by name at the end while the
other cases are written.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_path
from .cases import CHANNEL_FILE, Case
from .manifest import OutputManifest
from .missing import sidecar_path, write_sidecar
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
    failed: dict[str, str] = field(default_factory=dict)
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
        for name, why in self.failed.items():
            out.append(f"FAILED {name}: {why}")
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


def requested_outputs(output_dir: Path, case: str, save_probabilities: bool, preview: bool) -> list[Path]:
    """The files a case will have once finished."""
    paths = output_paths(output_dir, case)
    return [paths["labels"]] + ([paths["probabilities"]] if save_probabilities else []) \
        + ([paths["preview"]] if preview else [])


def _readable(path: Path) -> bool:
    try:
        if path.name.endswith(".nii.gz"):
            import nibabel as nib

            np.asarray(nib.load(str(path)).dataobj)
        elif path.suffix == ".npz":
            with np.load(path) as z:
                z["probabilities"]
        return path.stat().st_size > 0
    except Exception:
        return False


def is_finished(output_dir: Path, case: str, save_probabilities: bool, preview: bool,
                manifest: OutputManifest | None = None, entries: dict[str, int] | None = None) -> bool:
    """A case is finished when its requested outputs were written by ``predict`` and are readable.

    (One the user edited since, e.g. a corrected label map, is readable and so is kept as it is.)
    """
    entries = (manifest or OutputManifest(output_dir)).entries() if entries is None else entries
    return all(p.name in entries and _readable(p)
               for p in requested_outputs(output_dir, case, save_probabilities, preview))


def may_replace(path: Path, manifest: OutputManifest, entries: dict[str, int], resume: bool) -> bool:
    """``predict`` may replace ``path``: missing, its own unchanged output, or (``--continue``) its own but
    unreadable (empty or truncated) output."""
    if not (path.exists() or path.is_symlink()) or manifest.owns(path, entries):
        return True
    return resume and path.name in entries and not path.is_symlink() and not _readable(path)


def check_output_folder(output_dir: Path, cases: Sequence[Case], save_probabilities: bool, preview: bool,
                        overwrite: bool, resume: bool = False, finished: Collection[str] = ()) -> None:
    """Refuse an output folder that holds input images, or files ``predict`` did not write (unless ``overwrite``)."""
    out = output_dir.resolve() if output_dir.exists() else output_dir.absolute()
    for case in cases:
        for f in case.channels:
            if f.absolute().parent.resolve() == out:
                raise InputError(f"{output_dir}: is the folder of the input image {f.name}; write the predictions "
                                 f"to another folder")
    if not output_dir.is_dir():
        return
    inputs = sorted(p.name for p in output_dir.iterdir() if CHANNEL_FILE.match(p.name))
    if inputs:
        raise InputError(f"{output_dir}: holds input channel files ({inputs[0]}"
                         f"{f' and {len(inputs) - 1} more' if len(inputs) > 1 else ''}); write the predictions "
                         f"to another folder")
    if overwrite:
        return
    manifest = OutputManifest(output_dir)
    entries = manifest.entries()
    foreign = [p for c in cases for p in requested_outputs(output_dir, c.name, save_probabilities, preview)
               + ([sidecar_path(output_dir, c.name)] if c.missing else [])
               if c.name not in finished and not may_replace(p, manifest, entries, resume)]
    if foreign:
        raise InputError(f"{foreign[0]}: exists and was not written by veloxseg predict"
                         f"{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}; choose another output "
                         f"folder, or pass --overwrite to replace them")


def save_case(result: CasePrediction, output_dir: Path, case: str, channel_names: Sequence[str],
              labels: dict[str, int] | None = None, save_probabilities: bool = False, preview: bool = False,
              manifest: OutputManifest | None = None) -> None:
    """Write a case's outputs: extras first, the label map last, each atomically and recorded in ``manifest``."""
    import nibabel as nib

    paths = output_paths(output_dir, case)
    manifest = manifest or OutputManifest(output_dir)
    if save_probabilities and result.probabilities is not None:
        with atomic_path(paths["probabilities"], ".npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=result.probabilities, affine=result.affine,
                                labels=np.array(sorted((labels or {}).values()) or
                                                list(range(result.probabilities.shape[0]))))
        manifest.record(paths["probabilities"])
    if preview and result.image is not None:
        from .preview import write_preview

        write_preview(paths["preview"], result.image, result.labels, result.affine, channel_names, title=case)
        manifest.record(paths["preview"])
    sidecar = sidecar_path(output_dir, case)
    if result.info.get("missing_channels"):  # <case>.json: which channels were absent
        manifest.record(write_sidecar(sidecar, case, {k: result.info[k] for k in
                                                      ("missing_channels", "handling", "modality_dropout")}))
    elif sidecar.is_file() and manifest.owns(sidecar):  # an earlier run's, no longer true
        sidecar.unlink()
    with atomic_path(paths["labels"], ".nii.gz") as tmp:
        nib.save(result.to_nifti(), tmp)
    manifest.record(paths["labels"])


def _one_line(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return f"{str(err) or 'out of memory'} (try --sw-batch-size 1, or a machine with more memory)"
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, InputError) else f"{type(err).__name__}: {text}"


def predict_cases(predictor: Predictor, cases: Sequence[Case], output_dir: str | os.PathLike,
                  save_probabilities: bool = False, preview: bool = False, resume: bool = False,
                  progress: bool = True, overwrite: bool = False) -> RunSummary:
    """Predict ``cases`` into ``output_dir``.

    Header problems of any case and an unsafe output folder stop the run before it starts; a case
    that fails later is recorded in ``summary.failed`` and the others are still written.
    """
    from tqdm import tqdm

    out = Path(output_dir)
    summary = RunSummary(out)
    manifest = OutputManifest(out)
    entries = manifest.entries() if resume and out.is_dir() else {}
    finished = {c.name for c in cases if entries and is_finished(out, c.name, save_probabilities, preview,
                                                                 entries=entries)}  # --continue: read once
    check_output_folder(out, cases, save_probabilities, preview, overwrite, resume, finished)
    summary.skipped = [c.name for c in cases if c.name in finished]
    todo = [c for c in cases if c.name not in finished]
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
            try:
                result = predictor.predict_case(case, keep_probabilities=save_probabilities, keep_image=preview)
                save_case(result, out, case.name, predictor.model.channel_names, predictor.model.labels,
                          save_probabilities, preview, manifest)
            except Exception as err:  # one bad case never stops the cohort (KeyboardInterrupt does)
                summary.failed[case.name] = _one_line(err)
                if len(todo) > 1:  # said at once in a cohort; the run's final error line lists every failure
                    log.error("case %s failed: %s", case.name, summary.failed[case.name])
                continue
            summary.predicted.append(case.name)
            summary.seconds[case.name] = time.perf_counter() - t0  # reading, predicting and writing
            if result.padded:
                summary.padded.append(case.name)
            del result
    summary.total_seconds = time.perf_counter() - start
    return summary
