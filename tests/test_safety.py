"""Issue 17: a checkpoint never runs code, no user file is lost, a failure is loud and local.

Each test is an attack or a fault that must not work: a payload checkpoint (the file it would
create must not exist afterwards), outputs aimed at inputs or ground truth (files byte-identical
afterwards), SIGTERM mid-run, an all-air case and a broken case in a cohort, a diverging run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from test_predict import Oracle, blob, make_case, make_plan, oracle_checkpoint, ras_spacing, OBLIQUE
from veloxseg.checkpoint import (FORMAT, HASH_KEY, load_checkpoint, save_checkpoint, tensors_sha256,
                                 upgrade_checkpoint)
from veloxseg.cli import main
from veloxseg.errors import InputError
from veloxseg.inference import Predictor
from veloxseg.inference.manifest import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs ``touch marker``: what an emailed checkpoint could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def ckpt_dict(plan: dict) -> dict:
    return {"format": FORMAT, "format_version": 2, "model_name": "test-oracle", "model_kwargs": {"channel": 0},
            "state_dict": Oracle(0).state_dict(), "labels": {"background": 0, "lesion": 1},
            "channel_names": plan["channel_names"], "plan": plan}


@pytest.fixture
def plan():
    return make_plan(ras_spacing(OBLIQUE))


@pytest.fixture
def cohort(tmp_path):
    folder = tmp_path / "in"
    for name, centre in (("a", None), ("b", (8, 10, 6)), ("c", (12, 14, 8))):
        make_case(folder, name, blob(centre=centre))
    return folder


def digest(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ 1. a checkpoint never runs code
def test_payload_checkpoint_is_refused_by_every_reader_and_never_runs(tmp_path, plan, cohort, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    payload = ckpt_dict(plan)
    payload["versions"] = {"veloxseg": Payload(marker)}
    torch.save(payload, evil)
    runs = {
        "predict": ["predict", "-m", str(evil), "-i", str(cohort), "-o", str(tmp_path / "out"), "--quiet"],
        "export": ["export", "-m", str(evil), "--format", "onnx", "-o", str(tmp_path / "m.onnx")],
        "verify": ["checkpoint", "verify", str(evil)],
        "upgrade without trust": ["checkpoint", "upgrade", str(evil), str(tmp_path / "new.pt")],
    }
    for what, argv in runs.items():
        assert main(argv) == 1, what
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(evil) in err, (what, err)
        assert not marker.exists(), f"{what} ran the payload"
    with pytest.raises(InputError, match=r"evil\.pt: refused: .*system"):
        Predictor.from_checkpoint(evil)
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()
    # the attack is real: an unsafe load runs it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_resume_from_a_payload_checkpoint_is_refused(tmp_path, capsys):
    from test_data import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=2)
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "PWNED"
    torch.save({"format": FORMAT, "format_version": 2, "x": Payload(marker)}, run / "checkpoint_last.pt")
    (run / "config.json").write_text(json.dumps({"dataset": str(data), "output": str(run)}))
    assert main(["train", str(data), "--output", str(run), "--resume", "--no-progress"]) == 1
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_integrity_hash_truncation_and_non_finite_weights(tmp_path, plan):
    good = Path(oracle_checkpoint(tmp_path / "good.pt", plan))
    ckpt = torch.load(good, weights_only=True)
    assert ckpt[HASH_KEY] == tensors_sha256(ckpt)
    # a weight changed behind the hash's back (what a flipped bit in the data does)
    ckpt["state_dict"]["scale"] = ckpt["state_dict"]["scale"] + 1e-3
    torch.save(ckpt, tmp_path / "altered.pt")
    with pytest.raises(InputError, match=r"altered\.pt: integrity check failed"):
        load_checkpoint(tmp_path / "altered.pt")
    # a flipped bit in the stored bytes of the tensor
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[info.header_offset + 30 + name_len + extra_len] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"flipped\.pt: (integrity check failed|not a readable checkpoint)"):
        load_checkpoint(tmp_path / "flipped.pt")
    # a truncated copy
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    # non-finite weights: never saved, and refused on loading (even with a valid hash)
    nan = ckpt_dict(plan)
    nan["state_dict"] = {"scale": torch.tensor([float("nan")])}
    with pytest.raises(ValueError, match="non-finite"):
        save_checkpoint(tmp_path / "nan.pt", nan)
    nan["versions"] = {"torch": "2.13.0"}
    nan[HASH_KEY] = tensors_sha256(nan)
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(InputError, match=r"nan\.pt: 1 weight tensor\(s\) hold NaN"):
        load_checkpoint(tmp_path / "nan.pt")


def test_old_format_checkpoint_needs_an_explicit_trusted_upgrade(tmp_path, plan, cohort, capsys):
    old = tmp_path / "old.pt"
    legacy = ckpt_dict(plan)
    legacy["format_version"] = 1
    legacy["versions"] = {"torch": torch.__version__}  # a TorchVersion, as the earlier veloxseg stored it
    legacy["training_state"] = {"rng": {"numpy": np.random.get_state(), "python": (3, tuple(range(625)), None),
                                        "torch": torch.get_rng_state()}}
    torch.save(legacy, old)
    before = old.read_bytes()
    with pytest.raises(InputError, match="checkpoint upgrade OLD NEW --trust-pickle"):
        load_checkpoint(old)
    new = tmp_path / "new.pt"
    assert main(["checkpoint", "upgrade", str(old), str(new)]) == 1
    assert "--trust-pickle" in capsys.readouterr().err and not new.exists()
    assert main(["checkpoint", "upgrade", str(old), str(old), "--trust-pickle"]) == 1  # never onto itself
    assert main(["checkpoint", "upgrade", str(old), str(new), "--trust-pickle"]) == 0
    assert old.read_bytes() == before
    ckpt = load_checkpoint(new)
    assert ckpt["versions"]["torch"] == str(torch.__version__) and type(ckpt["versions"]["torch"]) is str
    assert isinstance(ckpt["training_state"]["rng"]["numpy"]["key"], torch.Tensor)
    assert main(["predict", "-m", str(new), "-i", str(cohort), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    with pytest.raises(InputError, match="exists"):
        upgrade_checkpoint(old, new, trust_pickle=True)


def test_training_checkpoints_load_safely_and_resume_restores_rng(tmp_path):
    from veloxseg.training.trainer import rng_state, set_rng_state

    state = rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    a = (np.random.rand(3), torch.rand(3), __import__("random").random())
    set_rng_state(loaded)
    b = (np.random.rand(3), torch.rand(3), __import__("random").random())
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


# ------------------------------------------------------------------ 2. no user file is lost
def test_predict_refuses_input_folder_and_ground_truth_and_keeps_them_intact(tmp_path, plan, cohort, capsys):
    model = oracle_checkpoint(tmp_path / "m.pt", plan)
    inputs = digest(cohort)
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(cohort), "--quiet"]) == 1
    assert "input" in capsys.readouterr().err
    assert digest(cohort) == inputs
    # a folder holding ground truth named like the outputs
    truth = tmp_path / "labelsTr"
    truth.mkdir()
    for name in ("a", "b", "c"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), str(truth / f"{name}.nii.gz"))
    gt = digest(truth)
    for extra in ([], ["--continue"]):
        assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(truth), "--quiet", *extra]) == 1
        err = capsys.readouterr().err
        assert "was not written by veloxseg predict" in err and "--overwrite" in err
        assert digest(truth) == gt
    # re-running into its own folder works without --overwrite; --overwrite replaces foreign files
    out = tmp_path / "out"
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(out), "--quiet"]) == 0
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(out), "--quiet"]) == 0
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(truth), "--quiet", "--overwrite"]) == 0
    assert digest(truth) != gt


def test_continue_redoes_an_empty_output_but_keeps_an_edited_one(tmp_path, plan, cohort):
    model = oracle_checkpoint(tmp_path / "m.pt", plan)
    out = tmp_path / "out"
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(out), "--quiet"]) == 0
    reference = {n: np.asarray(nib.load(str(out / f"{n}.nii.gz")).dataobj) for n in "abc"}
    (out / "a.nii.gz").write_bytes(b"")  # an output emptied by a failed copy
    edited = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    nib.save(edited, str(out / "b.nii.gz"))  # a label map the user corrected in a viewer
    edited_bytes = (out / "b.nii.gz").read_bytes()
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(out), "--quiet", "--continue"]) == 0
    assert np.array_equal(np.asarray(nib.load(str(out / "a.nii.gz")).dataobj), reference["a"])
    assert (out / "b.nii.gz").read_bytes() == edited_bytes
    # without --continue the edited file is not ours any more: refused
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(out), "--quiet"]) == 1
    assert (out / "b.nii.gz").read_bytes() == edited_bytes


def test_export_never_replaces_its_source_or_a_foreign_file(tmp_path, plan, capsys):
    model = Path(oracle_checkpoint(tmp_path / "m.pt", plan))
    before = model.read_bytes()
    assert main(["export", "-m", str(model), "--format", "onnx", "-o", str(model), "--overwrite"]) == 1
    assert "would replace the checkpoint" in capsys.readouterr().err
    assert model.read_bytes() == before
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("my notes")
    assert main(["export", "-m", str(model), "--format", "onnx", "-o", str(foreign)]) == 1
    assert foreign.read_text() == "my notes"
    out = tmp_path / "ok.onnx"
    assert main(["export", "-m", str(model), "--format", "onnx", "-o", str(out)]) == 0
    assert main(["export", "-m", str(model), "--format", "onnx", "-o", str(out)]) == 0  # its own export: fine


def test_train_refuses_a_folder_holding_another_run(tmp_path, capsys):
    from test_data import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_best.pt").write_bytes(b"another run's model")
    assert main(["train", str(data), "--output", str(run), "--epochs", "1", "--no-progress"]) == 1
    assert "already holds a training run" in capsys.readouterr().err
    assert (run / "checkpoint_best.pt").read_bytes() == b"another run's model"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_best.pt"]


def test_two_files_for_one_channel_is_an_error_naming_both(tmp_path, plan, cohort):
    model = oracle_checkpoint(tmp_path / "m.pt", plan)
    shutil.copy(cohort / "a_0000.nii.gz", cohort / "a_0000.nii")
    with pytest.raises(InputError, match=r"a_0000\.nii.* and a_0000\.nii.*two files for one channel"):
        from veloxseg.inference import cases_from_folder

        cases_from_folder(cohort, ["CT", "PET"])
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(tmp_path / "o"), "--quiet"]) == 1


SIGTERM_DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
import test_predict
from veloxseg.inference.predictor import Predictor
slow = Predictor._probabilities
def _probabilities(self, x, case):
    time.sleep(1.0)
    return slow(self, x, case)
Predictor._probabilities = _probabilities
from veloxseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_keeps_finished_cases_removes_temporaries_and_continue_matches(tmp_path, plan, cohort):
    model = oracle_checkpoint(tmp_path / "m.pt", plan)
    driver = tmp_path / "driver.py"
    driver.write_text(SIGTERM_DRIVER.format(tests=str(REPO / "tests")))
    out = tmp_path / "out"
    args = [sys.executable, str(driver), "predict", "-m", model, "-i", str(cohort), "-o", str(out), "--quiet",
            "--save-probabilities"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "a.nii.gz").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if ".tmp" in n], left
    assert "a.nii.gz" in left and "c.nii.gz" not in left
    assert subprocess.run(args + ["--continue"], capture_output=True).returncode == 0
    full = tmp_path / "full"
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(full), "--quiet"]) == 0
    for n in "abc":
        assert np.array_equal(np.asarray(nib.load(str(out / f"{n}.nii.gz")).dataobj),
                              np.asarray(nib.load(str(full / f"{n}.nii.gz")).dataobj)), n


# ------------------------------------------------------------------ 3. failures are loud and local
def test_all_air_case_is_predicted_whole_and_a_broken_case_does_not_stop_the_cohort(tmp_path, cohort, capsys,
                                                                                      caplog):
    plan = make_plan(ras_spacing(OBLIQUE))
    plan["crop_foreground"] = True  # CT body threshold: an all-air CT has no body
    model = oracle_checkpoint(tmp_path / "m.pt", plan, channel=1)
    make_case(cohort, "air", np.full((20, 26, 14), -1000.0, np.float32), pet=blob())
    broken = nib.load(str(cohort / "b_0001.nii.gz"))
    data = np.asarray(broken.dataobj).copy()
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, broken.affine), str(cohort / "b_0001.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 case(s) failed" in err and "b: " in err and "NaN" in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz", "air.nii.gz", "c.nii.gz"]
    assert "air_0000.nii.gz: no body found" in caplog.text
    air = np.asarray(nib.load(str(out / "air.nii.gz")).dataobj)
    assert air.shape == (20, 26, 14) and np.array_equal(air, (blob() > 0).astype(np.uint8))


def test_diverging_training_stops_with_an_error_and_saves_no_non_finite_weights(tmp_path, monkeypatch, capsys):
    from test_data import make_tiny_dataset
    from veloxseg.losses import VeloxSegLoss

    data = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=3)
    real = VeloxSegLoss.forward
    calls = {"n": 0}

    def exploding(self, out, y, x):
        parts = real(self, out, y, x)
        calls["n"] += 1
        if calls["n"] >= 3:
            parts = parts._replace(total=parts.total * float("nan"))
        return parts

    monkeypatch.setattr(VeloxSegLoss, "forward", exploding)
    run = tmp_path / "run"
    code = main(["train", str(data), "--output", str(run), "--epochs", "4", "--patch-size", "32", "32", "32",
                 "--batch-size", "1", "--val-every", "1", "--threads", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "training diverged: the loss became nan" in err and len(err.splitlines()) == 1
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        if (run / name).exists():
            load_checkpoint(run / name)  # finite, or it would raise


@pytest.mark.parametrize("argv", [
    ["train", "D", "-o", "R", "--epochs", "0"],
    ["train", "D", "-o", "R", "--val-every", "0"],
    ["train", "D", "-o", "R", "--time-budget", "-1"],
    ["predict", "-m", "M", "-i", "I", "-o", "O", "--sw-batch-size", "0"],
    ["predict", "-m", "M", "-i", "I", "-o", "O", "--device", "gpu0"],
])
def test_nonsense_arguments_are_argument_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_resume_names_changed_cases_and_a_corrupt_config(tmp_path, capsys):
    from test_data import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=4)
    run = tmp_path / "run"
    assert main(["train", str(data), "--output", str(run), "--epochs", "2", "--patch-size", "32", "32", "32",
                 "--batch-size", "1", "--threads", "1", "--no-progress", "--val-fraction", "0.25"]) == 0
    split = json.loads((run / "splits.json").read_text())
    gone = split["train"][0]
    for f in [*(data / "imagesTr").glob(f"{gone}_*"), data / "labelsTr" / f"{gone}.nii.gz"]:
        f.unlink()
    meta = json.loads((data / "dataset.json").read_text())
    meta["numTraining"] -= 1
    (data / "dataset.json").write_text(json.dumps(meta))
    assert main(["train", str(data), "--output", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"removed {gone}" in err and "dataset changed" in err
    (run / "config.json").write_text("{not json")
    assert main(["train", str(data), "--output", str(run), "--resume", "--no-progress"]) == 1
    assert "config.json: not a readable run configuration" in capsys.readouterr().err


def test_predictor_leaves_process_settings_alone_unless_asked(tmp_path, plan, monkeypatch):
    import veloxseg.inference.predictor as predictor_module

    calls = []
    monkeypatch.setattr(predictor_module, "tune_allocator", lambda: calls.append(1))
    model = oracle_checkpoint(tmp_path / "m.pt", plan)
    threads = torch.get_num_threads()
    Predictor.from_checkpoint(model)
    assert calls == [] and torch.get_num_threads() == threads
    Predictor.from_checkpoint(model, tune_memory=True)
    assert calls == [1]


def test_dataset_validation_names_two_files_for_one_channel(tmp_path):
    from test_data import make_tiny_dataset
    from veloxseg.data.dataset import validate_dataset

    data = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=2)
    shutil.copy(data / "imagesTr" / "case0_0001.nii.gz", data / "imagesTr" / "case0_0001.nii")
    with pytest.raises(InputError, match=r"case0_0001\.nii\.gz and case0_0001\.nii: two files for one channel"):
        validate_dataset(data)


def test_out_of_memory_fails_the_case_with_what_it_needs(tmp_path, plan, cohort, monkeypatch, capsys):
    model = oracle_checkpoint(tmp_path / "m.pt", plan)

    def no_memory(self, x, case):
        raise MemoryError()

    monkeypatch.setattr(Predictor, "_probabilities", no_memory)
    assert main(["predict", "-m", model, "-i", str(cohort), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "3 case(s) failed" in err and "out of memory for" in err and "needs roughly" in err


def test_training_without_the_train_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    from test_data import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=2)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(["train", str(data), "--output", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]) == 1
    assert "pip install 'veloxseg[train]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
