"""The deployed path calls no deprecated API from veloxseg's own code: prediction (Predictor on a checkpoint with
the default, eager and onnxruntime engines) and the ONNX export, with deprecation warnings raised by our calls
turned into errors (``deprecations_as_errors`` in conftest.py). The ``.pt2`` export and engine are checked the
same way in test_pt2.py; TorchScript (deprecated by PyTorch) is the exception, and its deprecation must show."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from veloxseg import VeloxSeg
from veloxseg.checkpoint import save_checkpoint
from veloxseg.export import export_checkpoint

PLAN = {"channel_names": ["CT", "PET"], "spacing": [2.0, 2.0, 3.0], "patch_size": [32, 32, 32],
        "normalization": [{"scheme": "zscore"}, {"scheme": "zscore"}], "crop_foreground": False}
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


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
def case_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(0)
    files = []
    for c in range(2):
        files.append(folder / f"p1_000{c}.nii.gz")
        nib.save(nib.Nifti1Image(rng.normal(size=(40, 36, 30)).astype(np.float32) + 3 * c, AFFINE), str(files[-1]))
    return files


def test_the_guard_flags_our_deprecated_calls_and_not_other_libraries(deprecations_as_errors):
    from veloxseg.export import _write

    with pytest.raises(AssertionError, match="torch.jit.trace"):  # the guard's own check at the end
        with deprecations_as_errors():
            with pytest.raises(DeprecationWarning, match="called from veloxseg"):
                # veloxseg's TorchScript export calls torch.jit.trace (deprecated): raised at the call
                _write(torch.nn.Conv3d(1, 1, 1), "torchscript", torch.zeros(1, 1, 2, 2, 2), None, 18)
    with deprecations_as_errors():
        warnings.warn("a library's own deprecated internals", DeprecationWarning)  # this test file is not veloxseg


def test_prediction_and_onnx_export_call_no_deprecated_api(ckpt, case_files, tmp_path, deprecations_as_errors):
    from veloxseg.inference import Predictor

    with deprecations_as_errors():
        onnx = export_checkpoint(ckpt, "onnx", tmp_path / "model.onnx").model_path
        labels = {}
        # the default engine (torch: eager until a window shape has had 200 calls, as here), eager, onnxruntime
        for name, model, engine in (("torch", ckpt, "torch"), ("eager", ckpt, "eager"), ("onnx", onnx, "onnxruntime")):
            predictor = Predictor.from_checkpoint(model, engine=engine, threads=1)
            labels[name] = np.asarray(predictor.predict(case_files).dataobj)
    assert all(np.mean(labels[n] == labels["torch"]) >= 0.999 for n in labels)
    assert len(np.unique(labels["torch"])) > 1
