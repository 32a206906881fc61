"""docs/guide.md: the synthetic-study commands and the volume-table snippet run as written (fewer
cases, one training epoch), and the outputs the guide describes are there."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from veloxseg.inference.manifest import MANIFEST_NAME  # predict's record of what it wrote

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from veloxseg.cli import main  # noqa: E402

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
# smaller than the guide's (which a user runs in about 10 minutes): the same commands, seconds here
SHRINK = {"--cases 8": "--cases 2", "--test-cases 2": "--test-cases 1"}
TRAIN_SHRINK = ["--epochs", "1", "--patch-size", "32", "32", "32", "--batch-size", "1", "--val-fraction", "0.5",
                "--val-every", "1", "--threads", "1", "--no-progress"]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_guide_synthetic_study_commands_run(tmp_path, monkeypatch, capsys):
    text = GUIDE.read_text()
    section = text.split("## 1.")[1].split("## 2.")[0]
    (commands,) = blocks(section, "bash")
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in commands.strip().splitlines():
        for old, new in SHRINK.items():
            line = line.replace(old, new)
        argv = shlex.split(line)
        assert argv[0] == "veloxseg"
        if argv[1] == "train":
            argv += TRAIN_SHRINK
        assert main(argv[1:]) == 0, line
        ran.append(argv[1])
    assert ran == ["demo-data", "dataset-from-dicom", "train", "predict", "evaluate"]
    out = tmp_path / "predictions"
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME) == ["evaluation.csv", "study_002.nii.gz", "study_002_seg.dcm",
                                                     "study_002_stats.json"]
    stats = json.loads((out / "study_002_stats.json").read_text())
    assert set(stats["total"]) >= {"tmtv_ml", "tlg"} and "SUVbw" in stats["pet"]["values"]
    plan = json.loads((tmp_path / "runs" / "dicom_demo" / "plan.json").read_text())
    assert plan["pet_units"] == "SUVbw" and plan["channel_names"] == ["CT", "PET"]
    # the volume table snippet
    (snippet,) = blocks(text, "python")
    capsys.readouterr()
    exec(compile(snippet, "guide.md", "exec"), {})
    table = (tmp_path / "volumes.csv").read_text().splitlines()
    assert table[0] == "case,label,volume_ml,lesions,suv_max,tlg,tmtv_ml" and table[1].startswith("study_002,lesion,")
