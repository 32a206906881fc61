"""The accuracy-experiment scripts (experiments/): the run plan, the document generator, the CPU-time budget."""

import json
import sys
from pathlib import Path

import pytest

from test_data import make_tiny_dataset
from veloxseg.training import ModelTrainer, TrainConfig

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import make_results  # noqa: E402
import run_experiments  # noqa: E402

HW = {"cpu_model": "Test CPU", "logical_cores": 2, "usable_cores": 2, "torch_threads": 1, "torch": "2.x",
      "monai": "1.x", "python": "3.11", "platform": "Linux", "load_average_at_start": [1.0, 1.0, 1.0]}


def record(model, variant, fold, dices, seconds=0.5, group="hecktor", params=1_000_000):
    job = run_experiments.Job(group, "/data/Dataset501_HecktorMini", model, variant, fold, 3, 0, 1.5, 1)
    return {
        "job": job.__dict__, "name": job.name, "command": "veloxseg " + " ".join(job.train_args(Path("/tmp/run"))),
        "run_info": {"parameters": params, "epochs_reached": 10, "process_cpu_seconds": 90.0,
                     "train_wall_seconds": 120.0, "best_val_dice": max(dices.values()), "hardware": HW},
        "cases": {c: {"seconds": seconds, "labels": {"1": {"dice": d, "hd95_mm": 5.0 if d > 0 else None,
                                                           "reference_voxels": 100, "predicted_voxels": 90}}}
                  for c, d in dices.items()},
    }


def write(results: Path, rec: dict) -> None:
    p = results / rec["job"]["group"] / f"{rec['name']}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rec))


def test_plan_covers_every_model_and_variant_on_the_same_folds():
    jobs = run_experiments.all_jobs(1.5, 1, ["hecktor", "ablation"])
    main = {(j.model, j.fold) for j in jobs if j.group == "hecktor"}
    assert main == {(m, k) for m in run_experiments.MAIN_MODELS for k in range(3)}
    abl = {(j.variant, j.fold) for j in jobs if j.group == "ablation"}
    assert abl == {(v, k) for v in run_experiments.ABLATION for k in range(3)}
    args = jobs[0].train_args(Path("/tmp/r"))
    assert args[:2] == ["train", str(run_experiments.HECKTOR)]
    for flag in ("--time-budget", "--budget-clock", "--num-folds", "--fold", "--threads", "--model"):
        assert flag in args
    assert len({j.name for j in jobs if j.group == "ablation"}) == len(run_experiments.ABLATION) * 3


def test_curve_group_runs_the_users_command_at_each_budget():
    jobs = run_experiments.all_jobs(1.5, 1, ["curve"])
    hecktor = {(j.model, j.budget_min, j.fold) for j in jobs if j.group == "curve"}
    shared = {(j.model, j.budget_min, j.fold) for j in jobs if j.group == "authors"}  # VeloxSeg at 8: section 6's
    assert shared == {("veloxseg", 8, k) for k in range(3)}
    assert hecktor | shared == {(m, b, k) for m, b in run_experiments.CURVE_HECKTOR for k in range(3)}
    with_authors = run_experiments.all_jobs(1.5, 2, ["authors", "curve"])
    assert len({j.result_path for j in with_authors}) == len(with_authors)  # the shared run is planned once
    assert {j.threads for j in with_authors} == {2}  # and with the threads asked for, whichever group lists it
    brats = {(j.model, j.budget_min, j.fold) for j in jobs if j.group == "curve-brats"}
    assert brats == {(m, b, k) for m, b in run_experiments.CURVE_BRATS for k in range(4)}
    assert len({(j.group, j.name) for j in jobs}) == len(jobs)  # one result file per run
    args = jobs[0].train_args(Path("/tmp/r"))
    assert "--time-budget" in args and "cpu" in args
    for tuned in ("--lr", "--epochs", "--patch-size", "--val-every", "--iterations"):
        assert tuned not in args  # the CLI's budget recipe decides, the same for every model


def test_results_document_tables_headline_plot_and_partial_label(tmp_path):
    results = tmp_path / "results"
    cases = [("a", "b"), ("c", "d"), ("e", "f")]
    for k, (x, y) in enumerate(cases):
        write(results, record("veloxseg", None, k, {x: 0.6, y: 0.5}, seconds=0.2))
        write(results, record("unet", None, k, {x: 0.5, y: 0.45}, seconds=0.3, params=4_800_000))
        write(results, record("veloxseg", "conv-only", k, {x: 0.3, y: 0.2}, group="ablation"))
    out = tmp_path / "docs" / "results.md"
    text = make_results.render(make_results.load(results), out, out.with_name("results_dice_vs_time.png"), None)
    assert out.read_text() == text
    assert (tmp_path / "docs" / "results_dice_vs_time.png").stat().st_size > 1000
    assert "PARTIAL RESULTS" in text and "9 of the" in text
    assert "VeloxSeg is **at least** UNet's, by +0.075" in text
    assert "| VeloxSeg | 1.00 |" in text and "| UNet | 4.80 |" in text
    assert "0.550 ± 0.055" in text  # mean ± sd over the 6 held-out cases
    assert "| conv only, widths <16, 32, 64, 128>, depthwise groups | 50.10 |" in text
    assert "beyond noise vs conv-only" not in text  # no row above conv-only
    assert "Test CPU" in text and "--budget-clock cpu" in text

    # complete plan given: no partial label; UNet ahead: said plainly
    for k, (x, y) in enumerate(cases):
        write(results, record("unet", None, k, {x: 0.9, y: 0.9}))
    text = make_results.render(make_results.load(results), out, out.with_name("r.png"), 9)
    assert "PARTIAL" not in text
    assert "VeloxSeg is **below** UNet's" in text and "lower than UNet's at this budget" in text


def test_cpu_time_budget_stops_the_run_and_is_recorded(tmp_path):
    data = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=3)
    cfg = TrainConfig(dataset=str(data), output=str(tmp_path / "run"), epochs=50, patch_size=[32, 32, 32],
                      batch_size=1, val_fraction=0.34, val_every=50, threads=1, progress=False, max_minutes=0.005,
                      budget_clock="cpu", model="unet")
    summary = ModelTrainer(cfg).run_training()
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert 1 <= summary["epochs"] < 50 and info["epochs_reached"] == summary["epochs"]
    assert info["stopped_by_time_budget"] and info["budget_clock"] == "cpu" and info["model"] == "unet"
    assert info["process_cpu_seconds"] > 0


def test_unknown_budget_clock(tmp_path):
    data = make_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=2)
    cfg = TrainConfig(dataset=str(data), output=str(tmp_path / "run"), budget_clock="gpu", threads=1)
    with pytest.raises(Exception, match="budget_clock must be wall or cpu"):
        ModelTrainer(cfg).run_training()


def test_bratsmini_modality_table_uses_the_curve_run_once_and_names_its_sequences(tmp_path):
    jobs = run_experiments.all_jobs(1.5, 1, ["modality-brats", "curve"])
    paths = [j.result_path for j in jobs]
    assert len(paths) == len(set(paths))  # the full model is the curve's 8-minute VeloxSeg run, run once
    assert not any(j.group == "modality-brats" and j.tag == "full" for j in jobs)

    import features_results

    def brats(group, tag, budget, fold, dice, missing=None):
        job = run_experiments.Job(group, "/data/Dataset502_BratsMini", "veloxseg", None, fold, 4, 0, budget, 1,
                                  tag=tag)
        case = {f"case{fold}": {"labels": {"1": {"dice": dice}, "2": {"dice": None}}}}
        rec = {"job": job.__dict__, "name": job.name, "cases": case}
        if missing:
            rec["cases_missing"] = {k: {f"case{fold}": {"labels": {"1": {"dice": v}}}} for k, v in missing.items()}
        return rec

    groups = {"curve-brats": [brats("curve-brats", None, 8, k, 0.5) for k in range(4)]
              + [brats("curve-brats", None, 30, k, 0.9) for k in range(4)],  # another budget: not the full model
              "modality-brats": [brats("modality-brats", "dropout", 8, k, 0.4, {"1": 0.3, "0": 0.1}) for k in range(4)]
              + [brats("modality-brats", "flair-only", 8, k, 0.35) for k in range(4)]}
    text = "\n".join(features_results.modality_section(groups, tmp_path / "m.png"))
    assert "### 7b. BratsMini" in text
    assert "| (a) full model (trained on both) | both | 0.500 ± 0.000 (4) |" in text
    assert "| (b) modality dropout 0.3 | FLAIR only | 0.300 ± 0.000 (4) |" in text  # T1c ("1") absent
    assert "| (b) modality dropout 0.3 | T1c only | 0.100 ± 0.000 (4) |" in text
    assert "| (c) trained on T1c only | T1c only | not run |" in text
    assert "with the FLAIR alone 0.300, with the T1c alone 0.100" in text
    assert "| (a) full model (trained on both) | both | 0.500 (4) | – | – | – |" in text  # per class
    assert "Not run yet: `python experiments/run_experiments.py --groups authors modality`" in text  # 7a


def test_curve_verdict_says_when_the_baseline_is_partial(tmp_path):
    import budget_results

    def rec(model, fold, dice):
        job = run_experiments.Job("curve-brats", "/data/Dataset502_BratsMini", model, None, fold, 4, 0, 8, 1)
        return {"job": job.__dict__, "name": job.name, "cases": {f"case{fold}": {"labels": {"1": {"dice": dice}}}}}

    groups = {"curve-brats": [rec("veloxseg", k, 0.5) for k in range(4)] + [rec("unet", 0, 0.51)]}
    text = "\n".join(budget_results.curve_section(groups, tmp_path / "c.png"))
    assert "### 10b. BratsMini" in text and "meets the issue's target" in text
    assert "n/a, fewer than 2 cases in common; partial: 1 of 4 cases run for both" in text
    assert "beyond noise" not in text
    assert "| UNet | 8 | 0.510 (1, partial: 1 of 4 cases, folds still to run) |" in text
    assert "| VeloxSeg | 8 | 0.500 ± 0.000 (4) |" in text  # a complete point is not marked
    assert "Not run yet" in text and "VeloxSeg at 30" in text and "UNet at 8" not in text
    groups["curve-brats"].append(rec("veloxseg", 0, 0.4) | {"job": {**groups["curve-brats"][0]["job"], "budget_min": 30}})
    text = "\n".join(budget_results.curve_section(groups, tmp_path / "c.png"))
    assert "at 30 CPU-minutes no baseline was run" in text and "cannot be judged; VeloxSeg 0.400" in text
    assert "against UNet's 0.510 at 8 CPU-minutes (VeloxSeg at 30 − UNet at 8, paired per case: n/a)" in text


def test_curve_target_compares_the_cases_both_points_have(tmp_path):
    import budget_results

    def rec(model, fold, dice, budget):
        job = run_experiments.Job("curve-brats", "/data/Dataset502_BratsMini", model, None, fold, 4, 0, budget, 1)
        return {"job": job.__dict__, "name": job.name, "cases": {f"case{fold}": {"labels": {"1": {"dice": dice}}}}}

    # UNet has all 4 folds at 30 minutes, VeloxSeg only fold 0: the verdict uses case0 alone
    groups = {"curve-brats": [rec("veloxseg", 0, 0.3, 30)] + [rec("unet", k, d, 30)
                                                               for k, d in enumerate((0.9, 0.1, 0.1, 0.1))]}
    text = "\n".join(budget_results.curve_section(groups, tmp_path / "c.png"))
    assert "at 30 CPU-minutes VeloxSeg 0.300 against the best baseline run, UNet 0.900: -0.600 (misses" in text
    assert "partial: 1 of 4 cases run for both" in text


def test_run_experiments_refuses_two_different_runs_with_one_result_file(monkeypatch):
    real = run_experiments.Job

    def clash(*args, **kwargs):  # every group's job collapses onto one result path, with different settings
        job = real(*args, **kwargs)
        job.group, job.fold, job.budget_min, job.tag = "x", 0, 8, None
        return job

    monkeypatch.setattr(run_experiments, "Job", clash)
    with pytest.raises(ValueError, match="two different runs would write"):
        run_experiments.all_jobs(1.5, 1, ["authors"])
