"""The torch.export + AOTInductor engine: ``veloxseg export --format pt2`` gives a package that
``torch._inductor.aoti_load_package`` loads and that computes the eager logits; ``predict --engine pt2``
compiles once per window shape into the user cache and reuses it; without a compiler it falls back."""

from __future__ import annotations

import json
import logging
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from veloxseg.checkpoint import register_model, save_checkpoint
from veloxseg.errors import InputError
from veloxseg.export import read_sidecar, sidecar_path
from veloxseg.inference import pt2
from veloxseg.inference.engines import load_model

needs_compiler = pytest.mark.skipif(pt2.cxx_compiler() is None, reason="AOTInductor needs a C++ compiler")
PLAN = {"channel_names": ["CT", "PET"], "spacing": [2.0, 2.0, 3.0], "patch_size": [16, 16, 16],
        "normalization": [{"scheme": "zscore"}, {"scheme": "zscore"}], "crop_foreground": False}


class TinyConv(torch.nn.Module):
    """A network that compiles in seconds (a VeloxSeg takes about a minute)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    register_model("test-pt2-conv", lambda kwargs: TinyConv(**kwargs))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "conv.pt"
    save_checkpoint(path, {"model_name": "test-pt2-conv", "model_kwargs": {"classes": 3},
                           "state_dict": TinyConv(3).state_dict(), "labels": {"background": 0, "a": 1, "b": 2},
                           "channel_names": PLAN["channel_names"], "plan": PLAN})
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(pt2.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "pt2"


def compiled_engine(loaded) -> pt2.CompiledEngine:
    return loaded.engine.engine  # WindowStreams(CompiledEngine)


@needs_compiler
def test_engine_compiles_once_per_window_shape_and_reuses_the_cache(tiny_ckpt, cache, deprecations_as_errors):
    x = torch.randn(2, 2, 16, 16, 16)
    with deprecations_as_errors():
        first = load_model(tiny_ckpt, "pt2")
        out = first.engine(x)
    engine = compiled_engine(first)
    assert engine.compiled == 1 and engine.loaded == 0
    (package,) = cache.glob("*.pt2")
    assert package.name.startswith(pt2.file_sha256(tiny_ckpt)[:24]) and "2x16x16x16-fp32" in package.name
    eager = load_model(tiny_ckpt, "eager").engine(x)
    assert out.dtype == torch.float32 and torch.allclose(out, eager, atol=1e-4)
    assert torch.allclose(first.engine(x[:1]), eager[:1], atol=1e-4)  # batch 1: the batch is dynamic
    mtime = package.stat().st_mtime_ns

    second = load_model(tiny_ckpt, "pt2")  # a second run: loaded, not compiled again
    assert torch.allclose(second.engine(x), eager, atol=1e-4)
    assert compiled_engine(second).compiled == 0 and compiled_engine(second).loaded == 1
    assert package.stat().st_mtime_ns == mtime and len(list(cache.glob("*.pt2"))) == 1


def test_without_a_compiler_the_engine_falls_back_with_one_line(tiny_ckpt, cache, monkeypatch, caplog):
    monkeypatch.setattr(pt2, "cxx_compiler", lambda: None)
    loaded = load_model(tiny_ckpt, "pt2")
    x = torch.randn(1, 2, 16, 16, 16)
    with caplog.at_level(logging.WARNING):
        out, again = loaded.engine(x), loaded.engine(x)
    assert torch.allclose(out, load_model(tiny_ckpt, "eager").engine(x), atol=1e-5) and torch.equal(out, again)
    notes = [r.getMessage() for r in caplog.records if "pt2 engine unavailable" in r.getMessage()]
    assert len(notes) == 1 and "no C++ compiler" in notes[0] and "\n" not in notes[0]
    assert not cache.exists() or not list(cache.glob("*.pt2"))


def test_cache_key_names_weights_shape_precision_and_is_only_used_when_private(tmp_path):
    a = pt2.package_name("a" * 64, (2, 96, 96, 96), "fp32")
    assert a != pt2.package_name("b" * 64, (2, 96, 96, 96), "fp32")
    assert a != pt2.package_name("a" * 64, (2, 64, 96, 96), "fp32")
    assert a != pt2.package_name("a" * 64, (2, 96, 96, 96), "bf16")
    folder = tmp_path / "veloxseg" / "pt2"
    assert pt2.private_dir(folder) and (folder.stat().st_mode & 0o777) == 0o700
    os.chmod(folder, 0o777)
    assert not pt2.private_dir(folder)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(pt2.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pt2.cache_dir() == tmp_path / "xdg" / "veloxseg" / "pt2"
    monkeypatch.setenv(pt2.CACHE_ENV, str(tmp_path / "mine"))
    assert pt2.cache_dir() == tmp_path / "mine" / "pt2"


def test_a_package_from_another_cpu_is_refused_before_loading(tmp_path):
    model = tmp_path / "model.pt2"
    model.write_bytes(b"not loaded")
    meta = {"format": "veloxseg-export", "format_version": 1, "model_format": "pt2", "plan": PLAN,
            "channel_names": ["CT", "PET"], "machine": None, "cpu_flags": ["avx512_made_up"]}
    sidecar_path(model).write_text(json.dumps(meta))
    with pytest.raises(InputError, match="avx512_made_up, which this CPU lacks"):
        load_model(model)


@needs_compiler
@pytest.mark.slow  # AOTInductor compiles a VeloxSeg in about a minute
def test_pt2_export_of_a_veloxseg_loads_and_computes_the_eager_logits(tmp_path, deprecations_as_errors):
    from veloxseg import VeloxSeg
    from veloxseg.cli import main
    from veloxseg.inference import Predictor

    torch.manual_seed(0)
    model = VeloxSeg(in_channels=[1, 1], out_channels=3, img_size=(32, 32, 32), feature_size=8,
                     attn_feature_size=8)
    plan = dict(PLAN, patch_size=[32, 32, 32])
    ckpt = save_checkpoint(tmp_path / "tiny.pt", {
        "model_name": "veloxseg", "model_kwargs": model.hparams, "state_dict": model.state_dict(),
        "labels": {"background": 0, "a": 1, "b": 2}, "channel_names": ["CT", "PET"], "plan": plan})
    out = tmp_path / "model.pt2"
    with deprecations_as_errors():
        assert main(["export", "-m", str(ckpt), "--format", "pt2", "-o", str(out)]) == 0
    meta = read_sidecar(out)
    assert meta["model_format"] == "pt2" and meta["plan"] == plan and meta["roi_size"] == [32, 32, 32]
    assert meta["in_channels"] == 2 and meta["out_channels"] == 3 and meta["precision"] == "fp32"
    loaded = torch._inductor.aoti_load_package(str(out))
    deployed = model.for_inference().eval()
    for batch in (1, 3):
        x = torch.randn(batch, 2, 32, 32, 32)
        with torch.no_grad():
            got, expected = loaded(x), deployed(x)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4)

    folder = tmp_path / "case"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for c in range(2):
        data = rng.normal(size=(40, 36, 30)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(folder / f"p1_000{c}.nii.gz"))
    files = sorted(folder.glob("*.nii.gz"))
    with deprecations_as_errors():
        a = np.asarray(Predictor.from_checkpoint(out, engine="pt2").predict(files).dataobj)
    b = np.asarray(Predictor.from_checkpoint(ckpt, engine="eager").predict(files).dataobj)
    assert np.mean(a == b) >= 0.999
    shutil.rmtree(folder)
