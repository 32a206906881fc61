"""What ``veloxseg predict`` writes beside (or instead of) a case's label map: ``<case>_seg.dcm``
(``--output-type dicom-seg|both|all``), ``<case>_rtstruct.dcm`` (``--output-type rtstruct|all``), both
for DICOM input only, and ``<case>_stats.json`` (``--stats``).

All are made from the finished label map ``<case>.nii.gz`` and the case's channel files, after the
prediction, so the label map is exactly the one the NIfTI path writes. Each file is written
atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .cases import Case

#: ``--output-type`` values: both = nifti + dicom-seg; all = nifti + dicom-seg + rtstruct
OUTPUT_TYPES: tuple[str, ...] = ("nifti", "dicom-seg", "rtstruct", "both", "all")


def report_paths(output_dir: str | os.PathLike, case: str) -> dict[str, Path]:
    """Where a case's reports go: ``<case>_seg.dcm``, ``<case>_rtstruct.dcm`` and ``<case>_stats.json``."""
    output_dir = Path(output_dir)
    return {"seg": output_dir / f"{case}_seg.dcm", "rtstruct": output_dir / f"{case}_rtstruct.dcm",
            "stats": output_dir / f"{case}_stats.json"}


def wants_nifti(output_type: str) -> bool:
    """True when ``--output-type`` keeps the label map ``<case>.nii.gz`` in the output folder."""
    return output_type in ("nifti", "both", "all")


def wants_seg(output_type: str) -> bool:
    """True when ``--output-type`` asks for DICOM-SEG."""
    return output_type in ("dicom-seg", "both", "all")


def wants_rtstruct(output_type: str) -> bool:
    """True when ``--output-type`` asks for an RTSTRUCT."""
    return output_type in ("rtstruct", "all")


def dicom_reports(output_type: str) -> list[str]:
    """The DICOM files ``--output-type`` asks for: keys of :func:`report_paths` (``seg``, ``rtstruct``)."""
    return (["seg"] if wants_seg(output_type) else []) + (["rtstruct"] if wants_rtstruct(output_type) else [])


def check_output_type(cases: Sequence[Case], output_type: str) -> None:
    """DICOM-SEG and RTSTRUCT need the source series: an :class:`InputError` for a case given as NIfTI."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"--output-type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if dicom_reports(output_type):
        what = "an RTSTRUCT" if output_type == "rtstruct" else "a DICOM-SEG"
        for case in cases:
            if not getattr(case, "reference_headers", None):
                raise InputError(f"{case.channels[0]}: --output-type {output_type} needs DICOM input ({what} "
                                 f"references the source series); use --output-type nifti for NIfTI input")


def reports_finished(output_dir: str | os.PathLike, case: str, output_type: str, stats: bool) -> bool:
    """True when the reports this run asks for already exist (``--continue``)."""
    paths = report_paths(output_dir, case)
    return all(paths[k].is_file() for k in dicom_reports(output_type)) and (not stats or paths["stats"].is_file())


def _pet_channel(channel_names: Sequence[str]) -> int | None:
    from ..dicom.study import channel_modality

    for i, name in enumerate(channel_names):
        if channel_modality(name) == "PT":
            return i
    return None


def pet_source(case: Case, channel: int, pet_units: str = "SUVbw") -> str:
    """What the PET values in the statistics are, in words, for the JSON."""
    if getattr(case, "reference_headers", None):
        unit = "SUVbw (body-weight SUV from the DICOM header)" if pet_units == "SUVbw" else "Bq/mL (DICOM Units BQML)"
        return f"{unit}, on the grid of the segmentation"
    return (f"as stored in the NIfTI input {case.channels[channel].name}: veloxseg does not check their units "
            f"(SUV only if the file holds SUV)")


def write_reports(case: Case, labels_file: str | os.PathLike, output_dir: str | os.PathLike, labels: dict[str, int],
                  channel_names: Sequence[str], output_type: str = "nifti", stats: bool = False,
                  pet_units: str = "SUVbw") -> list[Path]:
    """Write the DICOM-SEG and/or statistics of ``case`` from its label map ``labels_file``."""
    from ..io import read_nifti

    written: list[Path] = []
    if not dicom_reports(output_type) and not stats:
        return written
    label_map, affine = read_nifti(labels_file, dtype=np.uint8)
    paths = report_paths(output_dir, case.name)
    if wants_seg(output_type):
        from ..dicom.seg import write_segmentation

        written.append(write_segmentation(paths["seg"], label_map, getattr(case, "reference_headers"), labels))
    if wants_rtstruct(output_type):
        from ..dicom.rtstruct import write_rtstruct

        written.append(write_rtstruct(paths["rtstruct"], label_map, getattr(case, "reference_headers"), labels))
    if stats:
        from ..lesions import case_statistics, write_statistics

        channel = _pet_channel(channel_names)
        pet = read_nifti(case.channels[channel])[0] if channel is not None else None
        source = pet_source(case, channel, pet_units) if channel is not None else ""
        shown = f"{case.name}.nii.gz" if wants_nifti(output_type) else paths[dicom_reports(output_type)[0]].name
        result: dict[str, Any] = {"case": case.name, "segmentation": shown}
        result.update(case_statistics(label_map, affine, labels, pet, source))
        if result["pet"] is not None:
            result["pet"]["channel"] = channel_names[channel]
        written.append(write_statistics(paths["stats"], result))
    return written


class ReportRun:
    """``--output-type`` and ``--stats`` of one ``veloxseg predict`` run.

    :meth:`select` checks the cases fit the output type (and with ``--continue`` and DICOM-SEG or
    RTSTRUCT only drops finished cases); predict into :attr:`labels_dir`; :meth:`finish` writes the
    reports of the predicted cases. With ``--output-type dicom-seg`` or ``rtstruct`` the label maps go
    to ``workdir`` (removed with it) and the ``.npz``/``.png`` extras are copied out to the output folder.
    """

    def __init__(self, output_dir: str | os.PathLike, output_type: str = "nifti", stats: bool = False,
                 workdir: str | os.PathLike | None = None, resume: bool = False, pet_units: str = "SUVbw",
                 overwrite: bool = False) -> None:
        self.output_dir, self.output_type, self.stats = Path(output_dir), output_type, stats
        self.overwrite = overwrite
        self.resume, self.pet_units = resume, pet_units
        self.labels_dir = (Path(workdir) / "labels" if not wants_nifti(output_type) and workdir is not None
                           else self.output_dir)
        self.cases: dict[str, Case] = {}
        self.skipped: list[str] = []
        self.written: list[Path] = []

    def select(self, cases: Sequence[Case]) -> list[Case]:
        """The cases to predict; :class:`InputError` when DICOM-SEG or RTSTRUCT is asked of NIfTI input."""
        check_output_type(cases, self.output_type)
        if dicom_reports(self.output_type):
            from ..extras import require

            require(["pydicom", "highdicom"], f"--output-type {self.output_type}", "dicom")
        todo = list(cases)
        if self.resume and self.labels_dir != self.output_dir:
            self.skipped = [c.name for c in todo if reports_finished(self.output_dir, c.name, self.output_type,
                                                                     self.stats)]
            todo = [c for c in todo if c.name not in self.skipped]
        self.cases = {c.name: c for c in todo}
        self.check_targets(todo)
        return todo

    def targets(self, name: str) -> list[Path]:
        """The files this run writes into the output folder for case ``name`` besides the label map."""
        paths = report_paths(self.output_dir, name)
        out = [paths[k] for k in dicom_reports(self.output_type)] + ([paths["stats"]] if self.stats else [])
        if self.labels_dir != self.output_dir:
            from .runner import output_paths

            extras = output_paths(self.output_dir, name)
            out += [extras["probabilities"], extras["preview"]]
        return out

    def check_targets(self, cases: Sequence[Case]) -> None:
        """Refuse to replace a report file ``predict`` did not write (unless ``overwrite``), as for label maps."""
        from .manifest import OutputManifest
        from .runner import may_replace

        if self.overwrite or not self.output_dir.is_dir():
            return
        manifest = OutputManifest(self.output_dir)
        entries = manifest.entries()
        foreign = [p for c in cases for p in self.targets(c.name)
                   if not may_replace(p, manifest, entries, self.resume)]
        if foreign:
            raise InputError(f"{foreign[0]}: exists and was not written by veloxseg predict"
                             f"{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}; choose another "
                             f"output folder, or pass --overwrite to replace them")

    def finish(self, predicted: Sequence[str], model: Any, skipped: Sequence[str] = ()) -> None:
        """Write the reports of ``predicted`` cases, and of ``skipped`` (finished) ones that lack them.

        ``model`` is the :class:`~.engines.LoadedModel` (labels and channel names).
        """
        import shutil

        from ..io import atomic_path
        from .runner import ensure_output_dir, output_paths

        if self.output_type == "nifti" and not self.stats:
            return
        ensure_output_dir(self.output_dir)
        lacking = [n for n in skipped if n in self.cases and not reports_finished(self.output_dir, n, self.output_type,
                                                                                   self.stats)]
        from .manifest import OutputManifest

        manifest = OutputManifest(self.output_dir)
        for name in list(predicted) + lacking:
            paths = output_paths(self.labels_dir, name)
            written = write_reports(self.cases[name], paths["labels"], self.output_dir, model.labels,
                                    model.channel_names, self.output_type, self.stats, self.pet_units)
            if self.labels_dir != self.output_dir:
                for key in ("probabilities", "preview"):
                    if paths[key].is_file():
                        target = output_paths(self.output_dir, name)[key]
                        with atomic_path(target, target.suffix) as tmp:
                            shutil.copyfile(paths[key], tmp)
                        written.append(target)
            for path in written:
                manifest.record(path)
            self.written += written

    def lines(self) -> list[str]:
        """Summary lines for the console."""
        out = []
        if self.written:
            out.append(f"wrote {len(self.written)} file(s) for --output-type {self.output_type}"
                       f"{' --stats' if self.stats else ''} into {self.output_dir}")
        if self.skipped:
            names = {"seg": "DICOM-SEG", "rtstruct": "RTSTRUCT"}
            what = " and ".join(names[k] for k in dicom_reports(self.output_type))
            out.append(f"skipped {len(self.skipped)} case(s) whose {what} exists (--continue)")
        return out
