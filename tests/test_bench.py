import json

import pytest
import torch

from veloxseg import VeloxSeg
from veloxseg.baselines import build_baseline
from veloxseg.bench.measure import num_windows
from veloxseg.cli import main
from veloxseg.summary import count_flops, count_parameters, model_summary


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The whole bench machinery on a 32^3 input, two models, minimal repetitions."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--models", "veloxseg,unet", "--size", "32", "--threads", "1,2", "--seconds", "0",
            "--min-reps", "1", "--rounds", "2", "--train-steps", "1", "--train-threads", "1", "--volume", "2x40x40x36",
            "--json", str(out / "b.json"), "--markdown", str(out / "b.md"), "--no-progress"]
    assert main(argv) == 0
    return json.loads((out / "b.json").read_text()), (out / "b.md").read_text(), out


def test_json_structure(tiny):
    result, _, _ = tiny
    assert {"config", "command", "machine", "ceiling", "models", "volume_windows"} <= set(result)
    assert set(result["ceiling"]["1"]) == {"conv", "matmul"}
    assert len(result["ceiling"]["1"]["conv"]["runs_gflops"]) == 2
    assert all(result["ceiling"]["1"][k]["gflops"] > 0 for k in ("conv", "matmul"))
    assert list(result["models"]) == ["veloxseg", "unet"]
    for name, entry in result["models"].items():
        assert entry["input_shape"] == [1, 2, 32, 32, 32] and entry["output_shape"] == [1, 2, 32, 32, 32]
        tp = entry["throughput"]["1"]
        for key in ("median", "min", "max", "reps", "images_per_s", "gflops_per_s", "conv_fraction",
                    "matmul_fraction", "time_vs_veloxseg"):
            assert key in tp, (name, key)
        assert tp["min"] <= tp["median"] <= tp["max"]
        # best of 2 rounds; VeloxSeg is timed once more per round right before unet
        assert len(tp["round_medians"]) == (4 if name == "veloxseg" else 2)
        assert tp["median"] == min(tp["round_medians"])
        side = entry["streams"]["2"]  # two windows a call, one per thread: images/s counts both
        assert len(side["round_medians"]) == 2 and side["images_per_s"] == pytest.approx(2 / side["median"])
        assert side["vs_1_thread"] == pytest.approx(side["images_per_s"] * tp["median"])
        assert "1" not in entry["streams"]
        train = entry["train"]
        assert "error" not in train, train
        assert train["seconds"] > 0 and train["peak_memory"] > 0 and "peak_memory_growth" in train
        assert train["steps"] >= 1 and train["min"] <= train["seconds"] <= train["max"]
    vol = result["models"]["veloxseg"]["volume"]
    assert "error" not in vol, vol
    assert len(vol["round_seconds"]) == 2 and vol["seconds"] == min(vol["round_seconds"])
    assert vol["output_shape"] == [1, 40, 40, 36] and vol["windows"] == result["volume_windows"] == 8
    assert result["models"]["unet"]["volume"] is None and "volume_estimate_seconds" in result["models"]["unet"]
    assert result["models"]["veloxseg"]["throughput"]["1"]["time_vs_veloxseg"] == 1.0
    unet = result["models"]["unet"]["throughput"]["1"]
    assert len(unet["ratio_rounds"]) == 2 and "ratio_rounds" not in result["models"]["veloxseg"]["throughput"]["1"]
    assert unet["time_vs_veloxseg"] == pytest.approx(sum(unet["ratio_rounds"]) / 2)  # median of two rounds


def test_flops_agree_with_summary(tiny):
    result, _, _ = tiny
    model = VeloxSeg.from_preset("autopet", img_size=(32, 32, 32), window_sizes=None)
    info = model_summary(model, (1, 2, 32, 32, 32))
    assert result["models"]["veloxseg"]["flops"] == info["flops"]
    assert result["models"]["veloxseg"]["params"] == info["params_inference"]
    unet = build_baseline("unet", 2, 2, 32).eval()
    assert result["models"]["unet"]["flops"] == count_flops(unet, (1, 2, 32, 32, 32))[0]
    assert result["models"]["unet"]["params"] == count_parameters(unet)


def test_flops_at_preset_size_agree_with_summary_cli(capsys, tmp_path):
    assert main(["summary", "--preset", "autopet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "veloxseg", "--skip", "ceiling,throughput,train,volume",
                 "--json", str(out), "--no-progress"]) == 0
    bench = json.loads(out.read_text())["models"]["veloxseg"]
    assert bench["flops"] == summary["flops"] and bench["params"] == summary["params_inference"]


def test_markdown_and_rerender(tiny, capsys):
    result, doc, out = tiny
    assert doc.startswith("# Benchmarks") and result["command"] in doc
    for header in ("params (M)", "% conv ceiling", "peak RSS growth", "Whole-volume", "Windows side by side"):
        assert header in doc
    md = out / "again.md"
    assert main(["bench", "--from-json", str(out / "b.json"), "--markdown", str(md)]) == 0
    assert "| veloxseg | 1 |" in capsys.readouterr().out
    assert md.read_text() == doc


def test_plot(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    _, _, out = tiny
    png = tmp_path / "b.png"
    assert main(["bench", "--from-json", str(out / "b.json"), "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--models", "veloxseg,resnet"], "unknown model 'resnet'; choose from veloxseg, veloxseg-straightforward, unet"),
    (["--skip", "everything"], "unknown --skip part"),
    (["--volume", "3x40x40x40"], "--volume must be"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
])
def test_bad_options_are_one_line_errors(capsys, argv, message):
    assert main(["bench", *argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_num_windows_matches_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for volume, roi, overlap in (((400, 400, 300), (96, 96, 96), 0.25), ((40, 40, 36), (32, 32, 32), 0.5),
                                 ((90, 50, 30), (32, 32, 32), 0.25)):
        interval = _get_scan_interval(volume, roi, 3, (overlap,) * 3)
        expected = len(dense_patch_slices(volume, roi, interval))
        assert num_windows(list(volume), list(roi), overlap) == expected


def test_train_step_worker_runs_variant_loss():
    from veloxseg.bench.worker import train_step

    torch.set_num_threads(1)
    res = train_step({"model": "teachers-no-gram", "preset": "autopet", "size": [32, 32, 32], "device": "cpu",
                      "batch": 1, "steps": 1, "in_channels": 2})
    assert res["seconds"] > 0 and res["steps"] == 1


def test_straightforward_row_is_the_same_network_on_default_ops():
    import torch

    from veloxseg.bench.models import STRAIGHTFORWARD, build_model, training_loss

    fast = build_model("veloxseg", "autopet", (64, 64, 64))
    slow = build_model(STRAIGHTFORWARD, "autopet", (64, 64, 64))
    slow.module.load_state_dict(fast.state_dict())
    x = torch.randn(1, 2, 64, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fast(x), slow(x), atol=1e-4)
    train = build_model(STRAIGHTFORWARD, "autopet", (64, 64, 64), train=True)
    assert train.training
    y = (x[:, :1] > 1).long()
    loss = training_loss(STRAIGHTFORWARD)(train(x), y, x)
    loss.backward()
    assert torch.isfinite(loss)


def test_precision_adds_bf16_rows_and_the_pt2_engine_is_a_row(monkeypatch, tmp_path):
    """``--precision fp32,bf16``: bf16 rows of the deployed paths (throughput, training step, whole volume) and
    the bf16 conv ceiling; ``veloxseg-pt2`` a row of its own (here without a compiler: its eager fallback, to
    test the plumbing without a minute of compiling)."""
    from veloxseg.inference import pt2

    monkeypatch.setattr(pt2, "cxx_compiler", lambda: None)
    out = tmp_path / "b.json"
    argv = ["bench", "--models", "veloxseg,veloxseg-pt2", "--precision", "fp32,bf16", "--size", "32", "--threads", "1",
            "--seconds", "0", "--min-reps", "1", "--rounds", "1", "--skip", "train,volume", "--json", str(out),
            "--no-progress"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert list(result["models"]) == ["veloxseg", "veloxseg-pt2", "veloxseg@bf16", "veloxseg-pt2@bf16"]
    assert "--models veloxseg,veloxseg-pt2 " in result["command"] and "--precision fp32,bf16" in result["command"]
    ceiling = result["ceiling"]["1"]
    assert ceiling["conv_bf16"]["gflops"] > 0
    bf16 = result["models"]["veloxseg@bf16"]
    tp = bf16["throughput"]["1"]
    assert tp["conv_fraction"] == pytest.approx(tp["gflops_per_s"] / ceiling["conv_bf16"]["gflops"])
    assert result["models"]["veloxseg-pt2@bf16"]["throughput"]["1"]["images_per_s"] > 0
    from veloxseg.bench.runner import BenchConfig, _trained
    from veloxseg.bench.worker import train_step, volume

    cfg = BenchConfig(models=["veloxseg", "veloxseg-pt2"], volume_models=["veloxseg"], precision=["bf16"])
    cfg.validate()
    assert cfg.precision == ["fp32", "bf16"] and cfg.volume_models == ["veloxseg", "veloxseg@bf16"]
    assert _trained(cfg.models) == ["veloxseg", "veloxseg@bf16"]  # a pt2 row trains as the eager network
    job = {"model": "veloxseg@bf16", "preset": "autopet", "size": [32, 32, 32], "device": "cpu", "in_channels": 2}
    step = train_step(dict(job, batch=1, steps=1))  # under bf16 autocast, float32 weights
    assert step["seconds"] > 0 and step["steps"] == 1
    vol = volume(dict(job, volume=[2, 40, 40, 36], overlap=0.25, mode="gaussian", sw_batch_size=2))
    assert vol["output_shape"] == [1, 40, 40, 36] and vol["compile_seconds"] is None
