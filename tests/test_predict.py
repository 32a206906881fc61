"""``veloxseg predict`` and ``veloxseg.Predictor``: geometry round trips with an oracle model, folder
runs (parts, --continue, interruption, extras), and every bad input."""

from __future__ import annotations

import gzip
import logging

import nibabel as nib
import numpy as np
import pytest

from veloxseg.inference.manifest import MANIFEST_NAME
import torch
from torch import nn

import veloxseg
from veloxseg.checkpoint import register_model, save_checkpoint
from veloxseg.cli import main
from veloxseg.errors import InputError
from veloxseg.inference import Predictor, cases_from_folder, select_part
from veloxseg.inference.cases import Case


class Oracle(nn.Module):
    """Logits (-x_c, x_c): label 1 exactly where channel ``channel`` (after normalisation) is positive."""

    def __init__(self, channel: int = 0) -> None:
        super().__init__()
        self.channel = channel
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x[:, self.channel:self.channel + 1] * self.scale
        return torch.cat([-c, c], dim=1)


register_model("test-oracle", lambda kwargs: Oracle(**kwargs))

# flipped first axis, a 0.3 rad rotation (oblique), permuted axes, anisotropic voxels
THETA = 0.3
ROT = np.array([[np.cos(THETA), -np.sin(THETA), 0], [np.sin(THETA), np.cos(THETA), 0], [0, 0, 1]])
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = (ROT @ np.diag([-1.5, 0.8, 2.5]))[:, [2, 0, 1]]
OBLIQUE[:3, 3] = [10.0, -20.0, 5.0]
SHAPE = (20, 26, 14)


def ras_spacing(affine: np.ndarray) -> list[float]:
    """Voxel spacing in RAS array-axis order (what a plan's ``spacing`` means)."""
    ornt = nib.orientations.io_orientation(affine)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    out = [0.0, 0.0, 0.0]
    for src, (dst, _) in enumerate(ornt):
        out[int(dst)] = float(zooms[src])
    return out


def make_plan(spacing, patch=(16, 16, 16), channels=("CT", "PET")) -> dict:
    return {"channel_names": list(channels), "spacing": [float(s) for s in spacing], "patch_size": list(patch),
            "normalization": [{"scheme": "none"}] * len(channels), "crop_foreground": False}


def oracle_checkpoint(path, plan, channel=0) -> str:
    save_checkpoint(path, {"model_name": "test-oracle", "model_kwargs": {"channel": channel},
                           "state_dict": Oracle(channel).state_dict(), "labels": {"background": 0, "lesion": 1},
                           "channel_names": plan["channel_names"], "plan": plan})
    return str(path)


def save(path, data, affine=OBLIQUE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return path


def blob(shape=SHAPE, centre=None, radius=5.0):
    """A smooth pattern: positive inside a ball (voxel units), negative outside."""
    centre = np.array(centre if centre is not None else [s / 2 for s in shape])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (radius - np.sqrt(((grid - centre) ** 2).sum(-1))).astype(np.float32)


def make_case(folder, name, ct, pet=None, affine=OBLIQUE):
    save(folder / f"{name}_0000.nii.gz", ct, affine)
    save(folder / f"{name}_0001.nii.gz", ct * 0.5 + 1 if pet is None else pet, affine)


@pytest.fixture
def exact_ckpt(tmp_path):
    """An oracle checkpoint whose plan spacing is the test images' own: no resampling."""
    return oracle_checkpoint(tmp_path / "oracle.pt", make_plan(ras_spacing(OBLIQUE)))


def outputs(folder):
    """Files in ``folder`` apart from predict's record of what it wrote (temporary files count)."""
    return sorted(p.name for p in folder.iterdir() if p.name != MANIFEST_NAME) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# geometry round trips


def test_round_trip_oblique_flipped_anisotropic_exact(tmp_path, exact_ckpt):
    rng = np.random.default_rng(0)
    ct = rng.normal(size=SHAPE).astype(np.float32)  # noise: any misplaced voxel would show
    make_case(tmp_path / "in", "c1", ct)
    assert main(["predict", "-m", exact_ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--quiet"]) == 0
    src = nib.load(str(tmp_path / "in" / "c1_0000.nii.gz"))
    out = nib.load(str(tmp_path / "out" / "c1.nii.gz"))
    assert out.shape == SHAPE
    assert np.array_equal(out.affine, src.affine)
    assert out.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    assert np.array_equal(np.asarray(out.dataobj), (ct > 0).astype(np.uint8))
    assert outputs(tmp_path / "out") == ["c1.nii.gz"]


def test_round_trip_with_resampling_keeps_grid_and_lands_on_the_object(tmp_path):
    ckpt = oracle_checkpoint(tmp_path / "o.pt", make_plan([1.0, 1.0, 1.0], patch=(32, 32, 32)))
    ct = blob(radius=6.0, centre=(8, 15, 6))
    make_case(tmp_path / "in", "c1", ct)
    assert main(["predict", "-m", ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    out = nib.load(str(tmp_path / "out" / "c1.nii.gz"))
    assert out.shape == SHAPE and np.array_equal(out.affine, nib.load(str(tmp_path / "in" / "c1_0000.nii.gz")).affine)
    pred, truth = np.asarray(out.dataobj) > 0, ct > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.9


def test_qform_only_input_keeps_its_header_geometry(tmp_path, exact_ckpt):
    img = nib.Nifti1Image(blob(), None)
    q = np.array([[0, -0.8, 0, 3], [1.5, 0, 0, 4], [0, 0, 2.5, 5], [0, 0, 0, 1.0]])
    img.set_qform(q, code=1)
    img.set_sform(None, code=0)
    (tmp_path / "in").mkdir()
    for c in range(2):
        nib.save(img, str(tmp_path / "in" / f"q_000{c}.nii.gz"))
    ckpt = oracle_checkpoint(tmp_path / "q.pt", make_plan(ras_spacing(q)))
    assert main(["predict", "-m", ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    src, out = nib.load(str(tmp_path / "in" / "q_0000.nii.gz")), nib.load(str(tmp_path / "out" / "q.nii.gz"))
    assert np.array_equal(out.affine, src.affine)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 0
    assert np.array_equal(np.asarray(out.dataobj), (blob() > 0).astype(np.uint8))


def test_python_api_predict_and_predict_array(tmp_path, exact_ckpt):
    ct = blob()
    make_case(tmp_path, "c", ct)
    predictor = veloxseg.Predictor.from_checkpoint(exact_ckpt, device="cpu")
    img = predictor.predict([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    assert isinstance(img, nib.Nifti1Image) and img.shape == SHAPE
    labels = predictor.predict_array(np.stack([ct, ct]), OBLIQUE)
    assert labels.dtype == np.uint8 and labels.shape == SHAPE
    assert np.array_equal(labels, np.asarray(img.dataobj))
    assert np.array_equal(labels, (ct > 0).astype(np.uint8))


def test_tta_and_overlap_keep_an_equivariant_oracle_exact(tmp_path, exact_ckpt):
    ct = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    predictor = Predictor.from_checkpoint(exact_ckpt, tta=True, overlap=0.25)
    assert np.array_equal(predictor.predict_array(np.stack([ct, ct]), OBLIQUE), (ct > 0).astype(np.uint8))


def test_image_smaller_than_a_patch_is_padded_and_logged(tmp_path, caplog):
    ckpt = oracle_checkpoint(tmp_path / "o.pt", make_plan(ras_spacing(OBLIQUE), patch=(32, 32, 32)))
    ct = blob()
    make_case(tmp_path / "in", "small", ct)
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "-m", ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert "smaller than one patch" in caplog.text and "padded" in caplog.text
    out = nib.load(str(tmp_path / "out" / "small.nii.gz"))
    assert out.shape == SHAPE and np.array_equal(np.asarray(out.dataobj), (ct > 0).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# folder runs


def test_folder_run_with_probabilities_preview_and_summary(tmp_path, exact_ckpt, capsys):
    for i in range(2):
        make_case(tmp_path / "in", f"case{i}", blob(centre=(6 + 6 * i, 12, 7)))
    assert main(["predict", "-m", exact_ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--save-probabilities", "--preview", "--threads", "1"]) == 0
    assert outputs(tmp_path / "out") == ["case0.nii.gz", "case0.npz", "case0.png", "case1.nii.gz", "case1.npz",
                                         "case1.png"]
    with np.load(tmp_path / "out" / "case0.npz") as npz:
        probs = npz["probabilities"]
        assert probs.shape == (2, *SHAPE) and probs.dtype == np.float16
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-3)
        labels = np.asarray(nib.load(str(tmp_path / "out" / "case0.nii.gz")).dataobj)
        assert np.array_equal(probs.argmax(0), labels)
    assert (tmp_path / "out" / "case0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "predicted 2 case(s)" in text and "time per case" in text


def test_single_case_given_as_channel_files(tmp_path, exact_ckpt):
    make_case(tmp_path / "in", "pat7", blob())
    assert main(["predict", "-m", exact_ckpt, "-i", str(tmp_path / "in" / "pat7_0000.nii.gz"),
                 str(tmp_path / "in" / "pat7_0001.nii.gz"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert outputs(tmp_path / "out") == ["pat7.nii.gz"]


def test_parts_split_deterministically_and_cover_all_cases():
    cases = [Case(f"c{i:02d}", ()) for i in range(7)][::-1]
    parts = [select_part(cases, 3, k) for k in range(3)]
    names = [c.name for part in parts for c in part]
    assert sorted(names) == sorted(c.name for c in cases) and len(set(names)) == 7
    assert [c.name for c in parts[1]] == ["c01", "c04"]
    assert select_part(cases, 3, 1) == parts[1]
    with pytest.raises(ValueError, match="part-id"):
        select_part(cases, 3, 3)


def test_num_parts_on_the_command_line(tmp_path, exact_ckpt):
    for i in range(3):
        make_case(tmp_path / "in", f"c{i}", blob())
    for k in range(2):
        assert main(["predict", "-m", exact_ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / f"out{k}"),
                     "--num-parts", "2", "--part-id", str(k), "--quiet"]) == 0
    assert outputs(tmp_path / "out0") == ["c0.nii.gz", "c2.nii.gz"]
    assert outputs(tmp_path / "out1") == ["c1.nii.gz"]


def test_interrupted_run_keeps_finished_cases_and_continue_skips_them(tmp_path, exact_ckpt, monkeypatch, capsys):
    for i in range(3):
        make_case(tmp_path / "in", f"c{i}", blob())
    calls = {"n": 0}
    original = Predictor.predict_case

    def interrupt_on_second(self, case, keep_probabilities=False, keep_image=True):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, case, keep_probabilities, keep_image)

    monkeypatch.setattr(Predictor, "predict_case", interrupt_on_second)
    args = ["predict", "-m", exact_ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    assert main(args) == 130
    assert outputs(tmp_path / "out") == ["c0.nii.gz"]  # finished case intact, nothing half-written
    monkeypatch.setattr(Predictor, "predict_case", original)
    mtime = (tmp_path / "out" / "c0.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args + ["--continue"]) == 0
    assert "predicted 2 case(s)" in capsys.readouterr().out
    assert outputs(tmp_path / "out") == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    assert (tmp_path / "out" / "c0.nii.gz").stat().st_mtime_ns == mtime


def test_interruption_while_writing_leaves_no_file(tmp_path, exact_ckpt, monkeypatch):
    make_case(tmp_path / "in", "c0", blob())

    def broken_save(img, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", broken_save)
    assert main(["predict", "-m", exact_ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--quiet"]) == 130
    assert outputs(tmp_path / "out") == []


# ---------------------------------------------------------------------------------------------
# bad input: one line naming the file, exit 1, nothing written


def run_bad(capsys, tmp_path, model, inputs, expect: list[str], out=None, extra=()):
    out = out or tmp_path / "out"
    code = main(["predict", "-m", str(model), "-i", *[str(i) for i in inputs], "-o", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1, err
    for part in expect:
        assert part in err, err
    if out.is_dir():
        assert outputs(out) == [], "nothing may be left behind"
    return err


def test_checkpoint_missing(tmp_path, capsys):
    make_case(tmp_path / "in", "c", blob())
    run_bad(capsys, tmp_path, tmp_path / "nope.pt", [tmp_path / "in"], ["nope.pt", "not found"])


@pytest.mark.parametrize("content", ["dict", "garbage", "empty"])
def test_not_a_veloxseg_checkpoint(tmp_path, capsys, content):
    make_case(tmp_path / "in", "c", blob())
    bad = tmp_path / "bad.pt"
    if content == "dict":
        torch.save({"state_dict": {}}, bad)
    else:
        bad.write_bytes(b"" if content == "empty" else b"\x00garbage" * 10)
    run_bad(capsys, tmp_path, bad, [tmp_path / "in"], ["bad.pt", "checkpoint"])


def test_wrong_number_of_channel_files_for_one_case(tmp_path, capsys, exact_ckpt):
    make_case(tmp_path / "in", "c", blob())
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in" / "c_0000.nii.gz"],
            ["c_0000.nii.gz", "got 1 channel file", "takes 2 (CT, PET)"])


def test_extra_channel_in_folder(tmp_path, capsys, exact_ckpt):
    make_case(tmp_path / "in", "c", blob())
    save(tmp_path / "in" / "c_0002.nii.gz", blob())
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["c_0002.nii.gz", "3 channel files", "takes 2"])


def test_channel_file_missing_in_folder(tmp_path, capsys, exact_ckpt):
    make_case(tmp_path / "in", "a", blob())
    save(tmp_path / "in" / "b_0000.nii.gz", blob())
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["b_0001.nii.gz", "channel file missing", "PET"])


def test_channel_file_missing_for_one_case_given_as_files(tmp_path, capsys, exact_ckpt):
    save(tmp_path / "in" / "c_0000.nii.gz", blob())
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in" / "c_0000.nii.gz", tmp_path / "in" / "c_0001.nii.gz"],
            ["c_0001.nii.gz", "missing"])


def test_channels_with_different_shapes(tmp_path, capsys, exact_ckpt):
    save(tmp_path / "in" / "c_0000.nii.gz", blob())
    save(tmp_path / "in" / "c_0001.nii.gz", blob(shape=(20, 26, 13)))
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["c_0001.nii.gz", "shape"])


def test_channels_with_different_affines(tmp_path, capsys, exact_ckpt):
    save(tmp_path / "in" / "c_0000.nii.gz", blob())
    shifted = OBLIQUE.copy()
    shifted[0, 3] += 2.0
    save(tmp_path / "in" / "c_0001.nii.gz", blob(), shifted)
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["c_0001.nii.gz", "affine differs"])


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "png"])
def test_unreadable_nifti(tmp_path, capsys, exact_ckpt, kind):
    make_case(tmp_path / "in", "c", blob())
    target = tmp_path / "in" / "c_0001.nii.gz"
    if kind == "truncated":
        raw = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "text":
        target.write_text("patient name, age\n")
    else:
        target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["c_0001.nii.gz"])


def test_truncated_uncompressed_nifti(tmp_path, capsys, exact_ckpt):
    save(tmp_path / "in" / "c_0000.nii", blob())
    save(tmp_path / "in" / "c_0001.nii", blob())
    target = tmp_path / "in" / "c_0001.nii"
    target.write_bytes(target.read_bytes()[:1000])
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["c_0001.nii"])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_voxels(tmp_path, capsys, exact_ckpt, value):
    ct = blob()
    ct[3, 4, 5] = value
    save(tmp_path / "in" / "c_0000.nii.gz", blob())
    save(tmp_path / "in" / "c_0001.nii.gz", ct)
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["c_0001.nii.gz", "NaN or infinite"])


def test_nan_in_predict_array_names_the_array(exact_ckpt):
    arr = np.stack([blob(), blob()])
    arr[1, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        Predictor.from_checkpoint(exact_ckpt).predict_array(arr, OBLIQUE)


def test_wrong_channel_count_in_predict_array(exact_ckpt):
    with pytest.raises(InputError, match="has 3 channel"):
        Predictor.from_checkpoint(exact_ckpt).predict_array(np.stack([blob()] * 3), OBLIQUE)


def test_output_path_is_a_file(tmp_path, capsys, exact_ckpt):
    make_case(tmp_path / "in", "c", blob())
    (tmp_path / "file").write_text("x")
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["file", "not a folder"], out=tmp_path / "file")
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["cannot create the output folder"],
            out=tmp_path / "file" / "sub")


def test_output_folder_not_writable(tmp_path, capsys, exact_ckpt, monkeypatch):
    make_case(tmp_path / "in", "c", blob())
    (tmp_path / "ro").mkdir()
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # root ignores file modes, so refuse the write itself
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["ro", "not writable", "Permission denied"],
            out=tmp_path / "ro")


def test_input_folder_problems(tmp_path, capsys, exact_ckpt):
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "nothing"], ["nothing", "missing"])
    (tmp_path / "empty").mkdir()
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "empty"], ["empty", "no input files"])
    save(tmp_path / "named" / "scan.nii.gz", blob())
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "named"], ["scan.nii.gz", "not named <case>_<channel>"])


def test_bad_case_stops_the_run_before_any_prediction(tmp_path, capsys, exact_ckpt):
    make_case(tmp_path / "in", "a", blob())
    save(tmp_path / "in" / "b_0000.nii.gz", blob())
    save(tmp_path / "in" / "b_0001.nii.gz", blob(shape=(20, 26, 13)))
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["b_0001.nii.gz", "shape"])


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys, exact_ckpt):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    make_case(tmp_path / "in", "c", blob())
    run_bad(capsys, tmp_path, exact_ckpt, [tmp_path / "in"], ["cuda", "no CUDA device"], extra=["--device", "cuda"])


def test_folder_discovery_orders_channels(tmp_path):
    make_case(tmp_path, "x", blob())
    (case,) = cases_from_folder(tmp_path, ["CT", "PET"])
    assert [p.name for p in case.channels] == ["x_0000.nii.gz", "x_0001.nii.gz"]


def test_foreground_crop_is_undone_outside_the_body(tmp_path):
    """With the plan's CT body crop, voxels outside the crop come back as background, inside as predicted."""
    plan = dict(make_plan(ras_spacing(OBLIQUE)), crop_foreground=True)
    ckpt = oracle_checkpoint(tmp_path / "o.pt", plan, channel=1)  # label = PET > 0
    ct = np.full(SHAPE, -1000.0, np.float32)
    ct[4:16, 5:20, 3:11] = 40.0  # the "body"
    pet = blob(radius=4.0, centre=(10, 12, 7))
    pet[0:2] = 5.0  # positive PET outside the body is cropped away: background
    make_case(tmp_path / "in", "c", ct, pet)
    assert main(["predict", "-m", ckpt, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet",
                 "--save-probabilities"]) == 0
    out = nib.load(str(tmp_path / "out" / "c.nii.gz"))
    assert out.shape == SHAPE and np.array_equal(out.affine, nib.load(str(tmp_path / "in" / "c_0000.nii.gz")).affine)
    body = ct > -500
    expected = ((pet > 0) & body).astype(np.uint8)
    assert np.array_equal(np.asarray(out.dataobj), expected)
    with np.load(tmp_path / "out" / "c.npz") as npz:
        probs = npz["probabilities"].astype(np.float32)
    assert np.all(probs[0][~body] == 1.0) and np.all(probs[1][~body] == 0.0)  # outside the crop: background
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=2e-3)


def test_commands_are_listed_with_their_options(capsys):
    for command, options in {"predict": ["--num-parts", "--continue", "--engine", "--tta", "--preview"],
                             "evaluate": ["--pred", "--ref", "--labels", "--json"],
                             "export": ["--format", "--output"]}.items():
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert all(o in text for o in options), (command, text)


def test_failed_run_creates_no_output_folder(tmp_path):
    """A missing checkpoint is reported before anything is created on disk."""
    from veloxseg.cli import main

    out = tmp_path / "never"
    assert main(["predict", "-m", str(tmp_path / "missing.pt"), "-i", str(tmp_path), "-o", str(out)]) == 1
    assert not out.exists()
