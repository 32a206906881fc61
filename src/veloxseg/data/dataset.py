"""nnU-Net v2 raw datasets: ``dataset.json``, ``imagesTr/<case>_<XXXX><ending>``, ``labelsTr/<case><ending>``.

:func:`load_dataset` reads the folder unchanged; :func:`validate_dataset` checks every case before
training starts and raises one :class:`InputError` listing every problem, each naming its file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import check_same_grid, read_header, read_json_object, read_nifti


@dataclass(frozen=True)
class Case:
    """One training case: its channel files (in channel order) and its label file."""

    name: str
    images: tuple[Path, ...]
    label: Path

    def as_dict(self) -> dict[str, Any]:
        """The ``{"image": [...], "label": ...}`` dict MONAI transforms take."""
        return {"image": [str(p) for p in self.images], "label": str(self.label), "case": self.name}


@dataclass
class Dataset:
    """A dataset folder: metadata from ``dataset.json`` and its cases (sorted by name)."""

    root: Path
    channel_names: list[str]
    labels: dict[str, int]
    file_ending: str
    cases: list[Case] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Output channels of a network for these labels (background included)."""
        return max(self.labels.values()) + 1


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: file not found (an nnU-Net v2 dataset folder needs dataset.json)")
    return read_json_object(path, "dataset.json")


def load_dataset(root: str | Path) -> Dataset:
    """Read ``dataset.json`` and find the cases; structural problems raise :class:`InputError`.

    Cases are the files in ``labelsTr``; each needs one file per channel in ``imagesTr``. Missing
    files are not an error here (see :func:`validate_dataset`).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    djson = root / "dataset.json"
    meta = _read_json(djson)
    problems = []
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            problems.append(f"{djson}: missing key {key!r}")
    if problems:
        raise InputError("; ".join(problems))
    try:
        chans = {int(k): str(v) for k, v in meta["channel_names"].items()}
    except (AttributeError, ValueError):
        raise InputError(f"{djson}: channel_names must map channel numbers to names") from None
    if sorted(chans) != list(range(len(chans))) or not chans:
        raise InputError(f"{djson}: channel_names keys must be 0..N-1, got {sorted(chans)}")
    labels = {}
    for name, value in dict(meta["labels"]).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{djson}: label {name!r} has value {value!r}; only integer labels are supported "
                             f"(region-based labels are not)")
        labels[str(name)] = value
    if sorted(labels.values()) != list(range(len(labels))):
        raise InputError(f"{djson}: label values must be consecutive integers 0..N-1, got {sorted(labels.values())}")
    ending = str(meta["file_ending"])
    channel_names = [chans[i] for i in range(len(chans))]
    cases = []
    labels_dir = root / "labelsTr"
    if labels_dir.is_dir():
        for lab in sorted(labels_dir.glob(f"*{ending}")):
            name = lab.name[: -len(ending)]
            images = tuple(root / "imagesTr" / f"{name}_{c:04d}{ending}" for c in range(len(channel_names)))
            cases.append(Case(name, images, lab))
    return Dataset(root, channel_names, labels, ending, cases, meta)


def validate_dataset(root: str | Path, check_voxels: bool = True) -> Dataset:
    """Load and check a dataset; raise one :class:`InputError` listing every problem found.

    Checks: ``dataset.json`` keys, at least one case, every channel file present and readable,
    shapes and affines equal between a case's channels and its label, no NaN/inf voxels, label
    values among ``labels``, ``numTraining`` equal to the number of cases, image files without label.
    ``check_voxels=False`` only reads headers (no NaN and label-value checks).
    """
    ds = load_dataset(root)
    root = ds.root
    problems: list[str] = []
    if not (root / "imagesTr").is_dir():
        problems.append(f"{root / 'imagesTr'}: folder not found")
    if not (root / "labelsTr").is_dir():
        problems.append(f"{root / 'labelsTr'}: folder not found")
    if not ds.cases and not problems:
        problems.append(f"{root / 'labelsTr'}: no cases (no *{ds.file_ending} files)")
    n_train = ds.meta.get("numTraining")
    if ds.cases and n_train is not None and n_train != len(ds.cases):
        problems.append(f"{root / 'dataset.json'}: numTraining is {n_train} but labelsTr holds {len(ds.cases)} cases")
    known = {c.name for c in ds.cases}
    if (root / "imagesTr").is_dir():
        for img in sorted((root / "imagesTr").glob(f"*{ds.file_ending}")):
            stem = img.name[: -len(ds.file_ending)]
            case, _, chan = stem.rpartition("_")
            if not case or len(chan) != 4 or not chan.isdigit():
                problems.append(f"{img}: name does not follow <case>_<XXXX>{ds.file_ending}")
            elif case not in known:
                problems.append(f"{img}: no label file {root / 'labelsTr' / (case + ds.file_ending)}")
            elif int(chan) >= len(ds.channel_names):
                problems.append(f"{img}: channel {int(chan)} is not in channel_names (0..{len(ds.channel_names) - 1})")
            for other in (".nii", ".nii.gz"):
                twin = img.with_name(stem + other)
                if other != ds.file_ending and twin.exists():
                    problems.append(f"{img} and {twin.name}: two files for one channel; keep one")
    allowed = set(ds.labels.values())
    for case in ds.cases:
        headers = []
        failed: set[Path] = set()
        for path in (*case.images, case.label):
            if not path.exists():
                what = "label" if path == case.label else f"channel {case.images.index(path)} ({ds.channel_names[case.images.index(path)]})"
                problems.append(f"{path}: file not found ({what} of case {case.name})")
                continue
            try:
                headers.append(read_header(path))
            except InputError as err:
                problems.append(str(err))
                failed.add(path)
        if len(headers) == len(case.images) + 1:
            grid = check_same_grid(headers)
            problems += grid
            if grid:
                continue
        elif not headers:
            continue
        if not check_voxels:
            continue
        for path in case.images:
            if path.exists() and path not in failed:
                try:
                    read_nifti(path)
                except InputError as err:
                    problems.append(str(err))
        if case.label.exists() and case.label not in failed:
            try:
                lab, _ = read_nifti(case.label, dtype=np.float64)
            except InputError as err:
                problems.append(str(err))
                continue
            values = np.unique(lab)
            bad = [v for v in values.tolist() if v not in allowed]
            if bad:
                shown = ", ".join(f"{v:g}" for v in bad[:8])
                problems.append(f"{case.label}: label values {shown} are not in dataset.json labels "
                                f"{sorted(allowed)}")
    if problems:
        raise InputError(f"dataset {root} has {len(problems)} problem{'s' * (len(problems) > 1)}:\n  "
                         + "\n  ".join(problems))
    return ds
