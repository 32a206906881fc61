"""``veloxseg export``: ONNX (torch.export-based, batch dynamic) / TorchScript of the deployable network match
eager PyTorch, carry their preprocessing in a sidecar, and run the whole prediction pipeline (``--engine
onnxruntime``); the ONNX export and prediction call no deprecated API (conftest.deprecated_calls_fail).
The ``.pt2`` export is tested in test_pt2.py."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import deprecated_calls_fail
from veloxseg import VeloxSeg
from veloxseg.checkpoint import build_model, load_checkpoint, save_checkpoint
from veloxseg.cli import main
from veloxseg.errors import InputError
from veloxseg.export import compare_logits, read_sidecar, sidecar_path
from veloxseg.inference import Predictor

PLAN = {"channel_names": ["CT", "PET"], "spacing": [2.0, 2.0, 3.0], "patch_size": [32, 32, 32],
        "normalization": [{"scheme": "zscore"}, {"scheme": "zscore"}], "crop_foreground": False}
AFFINE = np.array([[-2.0, 0, 0, 50], [0, 2.0, 0, -30], [0, 0, 3.0, 10], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = VeloxSeg(in_channels=[1, 1], out_channels=3, img_size=(32, 32, 32))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model_name": "veloxseg", "model_kwargs": model.hparams, "state_dict": model.state_dict(),
                           "labels": {"background": 0, "a": 1, "b": 2}, "channel_names": PLAN["channel_names"],
                           "plan": PLAN})
    return path


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    rng = np.random.default_rng(0)
    shape = (40, 36, 30)  # two windows along the first two axes
    for c in range(2):
        data = rng.normal(size=shape).astype(np.float32) + 3 * c
        nib.save(nib.Nifti1Image(data, AFFINE), str(folder / f"p1_000{c}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ckpt):
    """The checkpoint exported once per format through the CLI (export is the slow part); the ONNX export
    with deprecation warnings from veloxseg's calls as errors, TorchScript (deprecated by PyTorch) saying so."""
    folder = tmp_path_factory.mktemp("exported")
    paths = {"onnx": folder / "model.onnx", "torchscript": folder / "model.ts"}
    with deprecated_calls_fail():
        assert main(["export", "-m", str(ckpt), "--format", "onnx", "-o", str(paths["onnx"])]) == 0
    with pytest.warns(FutureWarning, match="TorchScript export: TorchScript .* is deprecated by PyTorch"):
        assert main(["export", "-m", str(ckpt), "--format", "torchscript", "-o", str(paths["torchscript"])]) == 0
    return paths


def eager_and_input(ckpt_path):
    model = build_model(load_checkpoint(ckpt_path), deploy=True)
    x = torch.randn(2, 2, 32, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model(x).numpy(), x.numpy()


def test_onnx_export_matches_eager_and_has_a_sidecar(ckpt, exported):
    out = exported["onnx"]
    import onnxruntime as ort

    expected, x = eager_and_input(ckpt)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and image.shape[1:] == [2, 32, 32, 32] and not isinstance(image.shape[0], int)
    for batch in (x, x[:1]):  # fixed channels and window, dynamic batch
        got = session.run(None, {"image": batch})[0]
        diff, agreement = compare_logits(expected[: len(batch)], got)
        assert diff <= 1e-3 and agreement >= 0.999
    meta = read_sidecar(out)
    assert meta["plan"] == PLAN and meta["labels"] == {"background": 0, "a": 1, "b": 2}
    assert meta["roi_size"] == [32, 32, 32] and meta["in_channels"] == 2 and meta["out_channels"] == 3
    assert meta["model_kwargs"]["texture_teachers"] is True  # the training config, for the record
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.json", "model.ts",
                                                            "model.ts.json"]


def test_onnx_export_is_the_deployable_network_only(ckpt, exported):
    import onnx

    graph = onnx.load(str(exported["onnx"])).graph
    assert [o.name for o in graph.output] == ["logits"]
    deployed = build_model(load_checkpoint(ckpt), deploy=True)
    n_params = sum(int(np.prod(i.dims)) for i in graph.initializer)
    assert n_params <= sum(p.numel() for p in deployed.parameters()) * 1.05  # no teachers (they are ~35 % more)


def test_torchscript_export_matches_eager(ckpt, exported):
    out = exported["torchscript"]
    expected, x = eager_and_input(ckpt)
    with torch.no_grad():
        got = torch.jit.load(str(out))(torch.from_numpy(x)).numpy()
    diff, agreement = compare_logits(expected, got)
    assert diff <= 1e-3 and agreement >= 0.999
    assert sidecar_path(out).is_file()


def test_prediction_engines_agree(tmp_path, ckpt, case_dir, exported):
    """Every engine, with deprecation warnings from veloxseg's calls as errors: the default engine (eager until a
    window shape has had 200 calls, as here), eager, and onnxruntime from a checkpoint and from an export."""
    onnx_path = exported["onnx"]
    runs = {
        "torch": ["-m", str(ckpt)],
        "eager": ["-m", str(ckpt), "--engine", "eager"],
        "ort_from_ckpt": ["-m", str(ckpt), "--engine", "onnxruntime"],
        "ort_from_file": ["-m", str(onnx_path), "--engine", "onnxruntime"],
    }
    results = {}
    for name, model_args in runs.items():
        out = tmp_path / name
        with deprecated_calls_fail():
            assert main(["predict", *model_args, "-i", str(case_dir), "-o", str(out), "--quiet", "--threads", "1"]) == 0
        img = nib.load(str(out / "p1.nii.gz"))
        assert img.shape == (40, 36, 30) and np.array_equal(img.affine, nib.load(str(case_dir / "p1_0000.nii.gz")).affine)
        results[name] = np.asarray(img.dataobj)
    for name in ("eager", "ort_from_ckpt", "ort_from_file"):
        assert np.mean(results[name] == results["torch"]) >= 0.999
    assert len(np.unique(results["torch"])) > 1  # a random network still predicts several classes


def test_predictor_runs_a_torchscript_export(ckpt, case_dir, exported):
    ts = exported["torchscript"]
    files = sorted(case_dir.glob("p1_*.nii.gz"))
    with pytest.warns(FutureWarning, match="loading model.ts: TorchScript"):
        loaded = Predictor.from_checkpoint(ts)
    a = np.asarray(loaded.predict(files).dataobj)
    b = np.asarray(Predictor.from_checkpoint(ckpt).predict(files).dataobj)
    assert np.mean(a == b) >= 0.999


def test_export_of_a_bad_checkpoint_fails_cleanly(tmp_path, capsys):
    assert main(["export", "-m", str(tmp_path / "none.pt"), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 1
    assert "none.pt: checkpoint not found" in capsys.readouterr().err
    (tmp_path / "fake.pt").write_bytes(b"\x00" * 50)
    assert main(["export", "-m", str(tmp_path / "fake.pt"), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 1
    assert "fake.pt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.pt"]


def test_onnx_export_without_the_deploy_extra_says_what_to_install(tmp_path, ckpt, capsys, monkeypatch):
    from veloxseg import extras

    monkeypatch.setattr(extras, "missing_modules", lambda modules: [m for m in modules if m == "onnxscript"])
    out = tmp_path / "m.onnx"
    assert main(["export", "-m", str(ckpt), "--format", "onnx", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "onnxscript" in err and "veloxseg[deploy]" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_export_into_a_missing_folder_fails_cleanly(tmp_path, ckpt, capsys):
    assert main(["export", "-m", str(ckpt), "--format", "onnx", "-o", str(tmp_path / "no" / "m.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_exported_model_without_sidecar_is_a_clear_error(tmp_path, case_dir, exported, capsys):
    out = tmp_path / "model.onnx"
    shutil.copy(exported["onnx"], out)
    assert main(["predict", "-m", str(out), "-i", str(case_dir), "-o", str(tmp_path / "pred"), "--quiet"]) == 1
    assert "model.onnx.json: sidecar" in capsys.readouterr().err
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


def test_sidecar_of_another_kind_is_rejected(tmp_path):
    model = tmp_path / "x.onnx"
    model.write_bytes(b"")
    sidecar_path(model).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a veloxseg export sidecar"):
        read_sidecar(model)


class _Tiny(torch.nn.Module):
    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_any_registered_model_family_exports(tmp_path):
    """Export takes channels and patch size from the plan, not from VeloxSeg's constructor arguments."""
    from veloxseg.checkpoint import register_model
    from veloxseg.export import export_checkpoint

    register_model("test-tiny-conv", lambda kwargs: _Tiny(**kwargs))
    plan = dict(PLAN, patch_size=[16, 16, 16])
    ckpt = save_checkpoint(tmp_path / "tiny.pt", {"model_name": "test-tiny-conv", "model_kwargs": {"classes": 3},
                                                  "state_dict": _Tiny(3).state_dict(), "labels": {"background": 0},
                                                  "channel_names": ["CT", "PET"], "plan": plan})
    result = export_checkpoint(ckpt, "onnx", tmp_path / "tiny.onnx")
    assert result.max_abs_logit_diff <= 1e-3 and read_sidecar(result.model_path)["roi_size"] == [16, 16, 16]
