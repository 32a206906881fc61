"""Write ``docs/results.md`` and ``docs/results_dice_vs_time.png`` from ``experiments/results/``.

Called by ``run_experiments.py`` after every run (so the document is always up to date, and says
when it is partial); can be run on its own:

    python experiments/make_results.py [--results experiments/results] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

MAIN_ORDER = ("veloxseg", "unet", "segresnet", "swinunetr", "dynunet")
LABELS = {"veloxseg": "VeloxSeg", "unet": "UNet", "segresnet": "SegResNet", "swinunetr": "SwinUNETR",
          "dynunet": "DynUNet (nnU-Net)", "unetr": "UNETR"}
ABLATION_ORDER = ("conv-only", "multiscale", "jl-groups", "pwa", "unified-upsampling", "full",
                  "groups-8-16-16-32", "teachers-no-gram")


def load(results: Path) -> dict[str, list[dict]]:
    """Result records by group."""
    out: dict[str, list[dict]] = {}
    for p in sorted(results.glob("*/*.json")):
        try:
            out.setdefault(p.parent.name, []).append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


TIME_KEY = "seconds"  # "seconds_retimed" when every result has been re-timed (run_experiments.py --retime)


def choose_time_key(recs: list[dict]) -> str:
    ok = recs and all("seconds_retimed" in c for r in recs for c in r["cases"].values())
    return "seconds_retimed" if ok else "seconds"


def arch(rec: dict) -> str:
    return rec["job"].get("tag") or rec["job"]["variant"] or rec["job"]["model"]


def case_metric(rec: dict, key: str) -> dict[str, float]:
    """Per case: ``key`` ("dice" or "hd95_mm") averaged over the foreground labels where it is defined."""
    out = {}
    for case, c in rec["cases"].items():
        vals = [v[key] for v in c["labels"].values() if v[key] is not None]
        if vals:
            out[case] = sum(vals) / len(vals)
    return out


def case_dice(rec: dict) -> dict[str, float]:
    """Per case: Dice averaged over the foreground labels with a defined Dice."""
    return case_metric(rec, "dice")


def case_hd95(rec: dict) -> dict[str, float]:
    """Per case: HD95 (mm) averaged over the foreground labels with a defined HD95."""
    return case_metric(rec, "hd95_mm")


def mean_sd(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


def fmt(m: float, s: float | None = None, digits: int = 3) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    if s is None or math.isnan(s):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


_PARAMS: dict[tuple, int] = {}


def inference_parameters(rec: dict) -> int:
    """Parameters of the deployed network (VeloxSeg without teachers and deep-supervision heads)."""
    job = rec["job"]
    patch = tuple(rec["run_info"].get("patch_size") or (32, 32, 64))
    key = (job["model"], job["variant"], job["dataset"], patch)
    if key not in _PARAMS:
        try:
            from veloxseg.baselines import BaselineNet
            from veloxseg.data.plan import default_modalities
            from veloxseg.networks import VeloxSeg
            from veloxseg.variants import get_variant

            meta = json.loads((Path(job["dataset"]) / "dataset.json").read_text())
            names = [meta["channel_names"][k] for k in sorted(meta["channel_names"], key=int)]
            blocks, classes = default_modalities(names), len(meta["labels"])
            if job["model"] == "veloxseg":
                extra = get_variant(job["variant"]).model if job["variant"] else {}
                net = VeloxSeg(in_channels=blocks, out_channels=classes, img_size=list(patch), **extra).for_inference()
            else:
                net = BaselineNet(job["model"], sum(blocks), classes, list(patch))
            _PARAMS[key] = sum(p.numel() for p in net.parameters())
        except Exception:  # data set not on this machine: the training network's count
            _PARAMS[key] = rec["run_info"]["parameters"]
    return _PARAMS[key]


def summarize(recs: list[dict]) -> dict:
    """Per-architecture pooled per-case scores, fold means, timings."""
    by: dict[str, dict] = {}
    for r in recs:
        a = arch(r)
        e = by.setdefault(a, {"dice": {}, "hd95": {}, "fold_dice": {}, "seconds": {}, "epochs": [], "cpu": [],
                              "wall": [], "params": inference_parameters(r), "best_val": [], "folds": []})
        d = case_dice(r)
        e["dice"].update(d)
        e["hd95"].update(case_hd95(r))
        e["fold_dice"][r["job"]["fold"]] = statistics.fmean(d.values()) if d else math.nan
        e["seconds"].update({c: v.get(TIME_KEY, v["seconds"]) for c, v in r["cases"].items()})
        e["epochs"].append(r["run_info"]["epochs_reached"])
        e["cpu"].append(r["run_info"]["process_cpu_seconds"])
        e["wall"].append(r["run_info"]["train_wall_seconds"])
        if r["run_info"].get("best_val_dice") is not None:
            e["best_val"].append(r["run_info"]["best_val_dice"])
        e["folds"].append(r["job"]["fold"])
    return by


def paired(a: dict[str, float], b: dict[str, float]) -> tuple[list[float], list[str]]:
    common = sorted(set(a) & set(b))
    return [a[c] - b[c] for c in common], common


#: two-sided 95 % Student t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201}


def noise_verdict(diffs: list[float]) -> str:
    """Paired per-case difference: mean and 95 % t interval; 'within noise' when the interval holds 0."""
    if len(diffs) < 2:
        return "n/a"
    m, s = mean_sd(diffs)
    half = T95.get(len(diffs) - 1, 2.0) * s / math.sqrt(len(diffs))
    lo, hi = m - half, m + half
    return (f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] (n={len(diffs)}) "
            f"{'within noise' if lo <= 0 <= hi else 'beyond noise'}")


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: Path) -> bool:
    """Lay out, write and close ``fig``; True."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot(groups: dict[str, list[dict]], path: Path) -> bool:
    """Dice against inference seconds, one point per case, for every model trained on HecktorMini."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = groups.get("hecktor", []) + groups.get("ablation", [])
    if not recs:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5))
    archs = [a for a in (*MAIN_ORDER, *ABLATION_ORDER) if any(arch(r) == a for r in recs)]
    colors = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    for i, a in enumerate(archs):
        mine = [r for r in recs if arch(r) == a]
        xs, ys = [], []
        for r in mine:
            d = case_dice(r)
            for c, v in d.items():
                xs.append(r["cases"][c].get(TIME_KEY, r["cases"][c]["seconds"]))
                ys.append(v)
        if not xs:
            continue
        baseline = a in MAIN_ORDER and a != "veloxseg"
        marker = "s" if baseline else ("*" if a == "veloxseg" else "o")
        ax.scatter(xs, ys, s=18, alpha=0.35, color=colors[i % len(colors)], marker=marker)
        ax.scatter([statistics.fmean(xs)], [statistics.fmean(ys)], s=140 if a == "veloxseg" else 70,
                   color=colors[i % len(colors)], marker=marker, edgecolor="black",
                   label=LABELS.get(a, a if a not in ABLATION_ORDER else f"ablation: {a}"))
    ax.set_xscale("log")
    ax.set_xlabel("inference seconds per case, 1 thread (" + ("re-timed after training, no training running"
                  if TIME_KEY == "seconds_retimed" else "measured beside other runs on a loaded machine") + "; log)")
    ax.set_ylabel("Dice (GTVt), held-out case")
    ax.set_title("HecktorMini, 3-fold CV, equal CPU training time per run\n(small: cases; large: model mean)")
    ax.set_ylim(-0.02, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine(recs: list[dict]) -> list[str]:
    if not recs:
        return []
    hw = recs[0]["run_info"]["hardware"]
    loads = [r["run_info"]["hardware"].get("load_average_at_start") for r in recs]
    loads1 = sorted(x[0] for x in loads if x)
    cpu = [r["run_info"]["process_cpu_seconds"] / max(r["run_info"]["train_wall_seconds"], 1e-9) for r in recs]
    lines = [f"- CPU: {hw['cpu_model']}, {hw['logical_cores']} logical cores ({hw['usable_cores']} usable); "
             f"torch {hw['torch']}, MONAI {hw['monai']}, Python {hw['python']}; {hw['platform']}.",
             f"- Every run: `--threads {recs[0]['job']['threads']}` (torch threads "
             f"{hw['torch_threads']}), two to six runs at a time (at most two SwinUNETR or DynUNet, for memory)."]
    if loads1:
        lines.append(f"- The machine was shared: the 1-minute load average when runs started was "
                     f"{loads1[0]:.1f}–{loads1[-1]:.1f} (median {statistics.median(loads1):.1f}) on "
                     f"{hw['logical_cores']} cores (other engineers' builds, tests and benchmarks). A run's "
                     f"process got {min(cpu):.0%}–{max(cpu):.0%} (median {statistics.median(cpu):.0%}) of one core "
                     f"while it trained — which is why the budgets count CPU seconds, not wall-clock seconds. "
                     f"The runs were also paused for some minutes while a clean benchmark (docs/benchmarks.md) "
                     f"had the machine; a pause costs wall-clock time only, not budget.")
    return lines


def render(groups: dict[str, list[dict]], out: Path, png: Path, expected: int | None) -> str:
    from run_experiments import all_jobs

    global TIME_KEY
    hecktor, ablation = groups.get("hecktor", []), groups.get("ablation", [])
    TIME_KEY = choose_time_key(hecktor + ablation)
    seeds, brats = groups.get("seeds", []), groups.get("brats", [])
    every = [r for g in groups.values() for r in g if "job" in r]  # ensemble/ and budget/ have records of their own
    core = ("hecktor", "ablation", "seeds", "brats")  # the banner counts these; later sections say what they lack
    n_done = sum(len(groups.get(g, [])) for g in core)
    first = next((r for g in core for r in groups.get(g, [])), None)
    budget = first["job"]["budget_min"] if first else None  # the core groups share one budget
    planned = all_jobs(budget or 1.5, 1, list(core))
    n_planned = expected or len(planned)
    have_plot = plot(groups, png)
    L: list[str] = ["# Accuracy on real scans: VeloxSeg against the baselines at equal training time, and the ablation",
                    "",
                    "*Generated by `experiments/make_results.py` from `experiments/results/` (written by "
                    "`experiments/run_experiments.py`); do not edit by hand.*", ""]
    if n_done < n_planned:
        L += [f"> **PARTIAL RESULTS**: {n_done} of the {n_planned} planned runs have finished "
              f"(updated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Missing runs are missing from "
              f"the tables; `python experiments/run_experiments.py` continues where this stopped. Missing: "
              + ", ".join(f"{g} {sum(j.group == g for j in planned) - len(groups.get(g, []))} of "
                          f"{sum(j.group == g for j in planned)}" for g in core
                          if sum(j.group == g for j in planned) > len(groups.get(g, [])))
              + ".", ""]
    L += ["## Set-up", "",
          "- **Data**: `Dataset501_HecktorMini` (6 real head-and-neck PET/CT cases, 64³ at 3.344 mm, primary "
          "tumour GTVt); 3-fold cross-validation (`--num-folds 3 --fold K`: 4 training, 2 held-out cases per "
          "fold; every case is held out exactly once). `Dataset502_BratsMini` (4 BRATS cases, FLAIR + T1c, "
          "4 tumour classes) leave-one-out (`--num-folds 4`), resampled to **3 mm** (`--spacing 3 3 3`, "
          "27× fewer voxels than the native 1 mm) so that it fits a CPU budget.",
          f"- **Budget**: every run trains for **{budget:g} minutes of its own CPU time** (`--time-budget "
          f"{budget:g} --budget-clock cpu`, one thread; the number of epochs and the cosine schedule are fitted "
          "to it; the last epoch and the final validation may overrun by one epoch). CPU time rather than "
          "wall-clock time because the machine was shared with other jobs whose load varied during the "
          "session: a CPU budget gives every model the same compute however busy the machine was (wall-clock "
          "seconds per run are in the raw results). Same pipeline for every model: target spacing from the "
          "plan (the data's 3.344 mm), **patch 32×32×64** (the plan's 64³ is the whole volume; the smaller "
          "patch makes positive crops 4× richer in tumour and steps 4× cheaper), 1:1 positive:negative crops, "
          "rotations and flips, AdamW (peak lr 2e-3 for every model, as the built-in demo uses for runs of "
          "minutes; weight decay 0.01; warm-up then cosine), batch 2 volumes × 2 crops, at most 200 epochs, "
          "validation every 10 epochs." if budget is not None else "- **Budget**: no run finished yet.",
          "- **Losses**: VeloxSeg and its variants: the VeloxSeg loss (deep-supervised Dice+CE, reconstruction, "
          "Gram/SDKT; variants without teachers have only Dice+CE); baselines: Dice+CE (DynUNet with nnU-Net's "
          "deep supervision).",
          "- **Scoring**: the *final* weights of each run (`checkpoint_last.pt`, so the held-out cases never pick "
          "the epoch) predict the fold's held-out cases with `veloxseg.inference.Predictor` (what `veloxseg "
          "predict` runs; Gaussian sliding window, overlap 0.25, 1 thread) in the original grid; "
          "`veloxseg.evaluation.evaluate_folders` (what `veloxseg evaluate` runs) gives Dice and HD95 (mm). HD95 "
          "is undefined when the prediction is empty; such cases are left out of the HD95 mean (n given). "
          "Inference time per case includes reading, preprocessing and writing.",
          "- **Spread**: ± is the standard deviation over the held-out cases (6 for HecktorMini); fold means are "
          "listed too. *Within noise*: the 95 % t interval of the paired per-case difference (shown as "
          "mean [low, high] (n cases)) includes 0.",
          ""]
    L += ["## Machine and load", "", *machine(every), ""]
    L += ["## Commands", "", "```bash",
          "# everything (resumable: finished runs are skipped), 2 runs at a time on 2 cores, 1 thread each",
          f"python experiments/run_experiments.py --budget {budget if budget is not None else 1.5:g} "
          "--parallel 2 --threads 1 --work /tmp/veloxseg-exp",
          "python experiments/run_experiments.py --retime --repeats 1   # inference times again, one run at a time",
          "python experiments/make_results.py        # this document and the plot, from experiments/results/",
          "", "# one run, e.g. UNet on fold 0 (what the script runs for every model and variant):"]
    ex = next((r for r in hecktor if r["job"]["model"] == "unet"), None) or (every[0] if every else None)
    if ex:
        L.append(ex["command"])
        abl = next((r for r in ablation), None)
        if abl:
            L.append(abl["command"])
    L += ["veloxseg predict -m RUN/checkpoint_last.pt -i INPUT_DIR -o PRED_DIR --overlap 0.25 --threads 1",
          "veloxseg evaluate --pred PRED_DIR --ref ../shared/data/Dataset501_HecktorMini/labelsTr --cases HELD_OUT_CASES",
          "```", ""]

    # --- main comparison
    s = summarize(hecktor)
    L += ["## 1. HecktorMini: VeloxSeg and the MONAI baselines at equal training time", ""]
    if s:
        n_cases = len({c for e in s.values() for c in e["dice"]})
        L += [f"| model | params (M)† | epochs reached | training CPU s / run | Dice ({n_cases} cases) | fold means | HD95 mm (n) "
              "| inference s / case | best val Dice in training* |",
              "|---|---|---|---|---|---|---|---|---|"]
        for a in MAIN_ORDER:
            if a not in s:
                continue
            e = s[a]
            dm, ds = mean_sd(list(e["dice"].values()))
            hm, hs = mean_sd(list(e["hd95"].values()))
            folds = ", ".join(f"{e['fold_dice'][k]:.2f}" for k in sorted(e["fold_dice"]))
            L.append(f"| {LABELS[a]} | {e['params'] / 1e6:.2f} | {fmt(*mean_sd(e['epochs']), digits=1)} | "
                     f"{statistics.fmean(e['cpu']):.0f} | {fmt(dm, ds)} | {folds} | "
                     f"{fmt(hm, hs, 1)} ({len(e['hd95'])}) | {statistics.fmean(e['seconds'].values()):.2f} | "
                     f"{fmt(*mean_sd(e['best_val']))} |")
        L += ["", "† of the deployed network (VeloxSeg without its training-only teachers and deep-supervision "
              "heads), at the 32×32×64 patch.",
              "\\* the best validation Dice seen during training (validation every 10 epochs on the same "
              "held-out cases, in the resampled grid): optimistic, because it picks the epoch on those cases; "
              "the Dice column uses the final weights instead.", ""]
        L += headline(s, groups)
        cases = sorted({c for e in s.values() for c in e["dice"]})
        L += ["### Per case (Dice)", "", "| case | " + " | ".join(LABELS[a] for a in MAIN_ORDER if a in s) + " |",
              "|---|" + "---|" * sum(a in s for a in MAIN_ORDER)]
        for c in cases:
            L.append(f"| {c} | " + " | ".join(fmt(s[a]["dice"].get(c, math.nan)) for a in MAIN_ORDER if a in s)
                     + " |")
        L.append("")
    else:
        L += ["No run of this group has finished yet.", ""]
    if have_plot:
        timing = ("Inference times were re-measured after all training had finished (`run_experiments.py "
                  "--retime --repeats 1`: one process, one run after another, 1 thread, no training running; the other core was not always idle), "
                  "with the code of the time for every model: a warm-up, then a timed prediction of each "
                  "held-out case (reading, preprocessing, sliding window, resampling back; not writing). "
                  "Single timings on a virtual machine: treat differences under ~20 % as noise "
                  "(docs/benchmarks.md has repeated, interleaved timings)."
                  if TIME_KEY == "seconds_retimed" else
                  "Inference times were measured right after each run, 1 thread, while other runs trained beside "
                  "it on a shared, loaded machine: absolute seconds are inflated and noisy (the same model's "
                  "cases differ by up to 10×); the ordering between models is the useful part "
                  "(docs/benchmarks.md has clean timings).")
        L += ["## 2. Dice against inference time", "", f"![Dice vs inference time]({png.name})", "",
              "One small point per held-out case, one large point per model (mean). " + timing, ""]
    L += ablation_section(s, summarize(ablation))
    if seeds:
        L += seeds_section(s, summarize(seeds))
    L += brats_section(brats)
    L += authors_section(groups.get("authors", []), groups.get("ds-heads", []), groups)
    from budget_results import budget_pair_section, curve_section
    from features_results import ensemble_section, modality_section

    L += modality_section(groups, png.with_name("results_modality.png"))
    L += ensemble_section(next(iter(groups.get("ensemble", [])), None))
    L += budget_pair_section({r["name"]: r for r in groups.get("budget", [])}, groups.get("authors"))
    L += curve_section(groups, png.with_name("results_dice_per_cpu_minute.png"))
    from engine_results import bf16_training_section

    L += bf16_training_section(next(iter(groups.get("bf16", [])), None), png.with_name("results_bf16_training.png"))
    fin = sorted(r.get("finished_utc", "") for r in every if r.get("finished_utc"))
    L += ["## What was tried", "",
          "- A first attempt used the plan's defaults — 64³ patches (the whole volume), peak lr 1e-3, 2.5 minutes "
          "of *wall-clock* time per run, two runs at a time. On the shared machine a run got about 20 % of a "
          "core (≈ 30 CPU seconds in 2.5 minutes) and the first two finished runs (VeloxSeg, conv-only) had "
          "held-out Dice ≈ 0.00: nothing had been learnt, so that set was stopped and discarded. The set "
          "reported here changed three things, for every model alike: a CPU-time budget (`--budget-clock cpu`), "
          "32×32×64 patches with 1:1 positive/negative crops, and peak lr 2e-3.",
          "- Code version: the runs were made over two sessions with the code of the time. The training-speed "
          "work of issue 7 (same computation, faster steps) landed while the last BratsMini runs trained, so "
          "VeloxSeg runs from then on fit somewhat more epochs into the same CPU budget (epochs are in the "
          "tables; results written from then on record `code_commit`).",
          "- Nothing else was tuned, and no model got settings of its own."
          + (f" The runs reported here finished between {fin[0]} and {fin[-1]}." if fin else ""), ""]
    L += ["## What is not shown", "",
          "- Budgets of about a CPU-minute and a half on a shared 2-core CPU: every network here is far from converged, and the ranking "
          "at longer budgets can differ (large networks gain most from more time). The comparison answers "
          "\"what does a CPU user get in the same few minutes\", not the paper's full-training question.",
          "- Six (HecktorMini) and four (BratsMini) cases: differences of a few Dice points are within the noise "
          "(see the intervals). UNETR was not trained (not in the issue's list; "
          "its ViT-B encoder is among the slowest baselines on this CPU).",
          "- No per-model tuning: one learning rate (2e-3) and recipe for all.", ""]
    text = "\n".join(L)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def headline(s: dict, groups: dict[str, list[dict]]) -> list[str]:
    if "veloxseg" not in s or "unet" not in s:
        return ["**VeloxSeg vs UNet**: not both trained yet.", ""]
    v, u = s["veloxseg"], s["unet"]
    diffs, common = paired(v["dice"], u["dice"])
    vm, um = statistics.fmean(v["dice"][c] for c in common), statistics.fmean(u["dice"][c] for c in common)
    wins = sum(d > 0 for d in diffs)
    verdict = "at least" if vm >= um else "below"
    L = [f"**VeloxSeg vs MONAI UNet (same {groups['hecktor'][0]['job']['budget_min']:g} CPU-minute budget)**: "
         f"mean held-out Dice {vm:.3f} vs {um:.3f} over {len(common)} cases — VeloxSeg is **{verdict}** UNet's, "
         f"by {vm - um:+.3f} (paired difference {noise_verdict(diffs)}; VeloxSeg better on {wins} of "
         f"{len(common)} cases). VeloxSeg reached {statistics.fmean(v['epochs']):.0f} epochs and UNet "
         f"{statistics.fmean(u['epochs']):.0f} in the same time; VeloxSeg has {v['params'] / 1e6:.2f} M "
         f"parameters, UNet {u['params'] / 1e6:.2f} M."]
    if vm < um:
        noisy = "within noise" in noise_verdict(diffs)
        L[-1] += (" **VeloxSeg's Dice is lower than UNet's at this budget**"
                  + (" — the gap is within the noise of these cases (the interval includes 0), so the data neither "
                     "show VeloxSeg to be worse nor show it to be at least as good." if noisy else
                     ", and the gap is beyond the noise of these cases.")
                  + " What was tried: the paper's recipe "
                  "with one shared learning rate (2e-3), the same budget per fold, 3 folds"
                  + (", a second seed (section 4)" if groups.get("seeds") else "")
                  + "; no per-model tuning (see *What was tried*).")
    L.append("")
    return L


def ablation_section(main: dict, abl: dict) -> list[str]:
    from veloxseg.variants import VARIANTS

    s = dict(abl)
    if "veloxseg" in main:
        s["full"] = main["veloxseg"]
    L = ["## 3. Ablation on HecktorMini (same folds, same budget)", ""]
    if not abl:
        return L + ["No ablation run has finished yet.", ""]
    L += ["The \"full\" row is the VeloxSeg run of section 1 (same folds, seed and budget). Paper: AutoPET-II "
          "Dice % after full training (ARCHITECTURE.md section 6); ours: HecktorMini held-out Dice after "
          "minutes. Δ: paired per-case difference to the row above (controls: to the row they modify) — mean "
          "[95 % t interval] (n cases).", "",
          "| configuration | paper Dice % | paper Δ | ours Dice (cases) | fold means | epochs | params (M) | ours Δ |",
          "|---|---|---|---|---|---|---|---|"]
    prev = {"multiscale": "conv-only", "jl-groups": "multiscale", "pwa": "jl-groups",
            "unified-upsampling": "pwa", "full": "unified-upsampling", "groups-8-16-16-32": "jl-groups",
            "teachers-no-gram": "full"}
    for a in ABLATION_ORDER:
        var = VARIANTS[a]
        pd = var.paper[2] if var.paper else None
        pp = prev.get(a)
        pdelta = (f"{pd - VARIANTS[pp].paper[2]:+.2f} vs {pp}" if pp and pd is not None and VARIANTS[pp].paper
                  else "")
        if a not in s:
            L.append(f"| {var.description} | {pd:.2f} | {pdelta} | not run | | | | |")
            continue
        e = s[a]
        folds = ", ".join(f"{e['fold_dice'][k]:.2f}" for k in sorted(e["fold_dice"]))
        delta = ""
        if pp and pp in s:
            delta = noise_verdict(paired(e["dice"], s[pp]["dice"])[0]) + f" vs {pp}"
        L.append(f"| {var.description} | {pd:.2f} | {pdelta} | {fmt(*mean_sd(list(e['dice'].values())))} "
                 f"({len(e['dice'])}) | "
                 f"{folds} | {statistics.fmean(e['epochs']):.0f} | {e['params'] / 1e6:.2f} | {delta} |")
    L.append("")
    if "full" in s:
        worst = [a for a in ABLATION_ORDER if a in s and a != "full"
                 and "beyond" in noise_verdict(paired(s["full"]["dice"], s[a]["dice"])[0])]
        L.append("Full model minus each variant, where the difference is beyond noise (paired, 95 % t interval): "
                 + (", ".join(f"{a} ({noise_verdict(paired(s['full']['dice'], s[a]['dice'])[0]).split(' [')[0]})"
                              for a in worst) if worst else "none")
                 + "; everything else is within the noise of 6 cases at this budget. These intervals are for one seed; "
                 "section 4 shows how much a second seed moves the same model on the same cases.")
        L.append("")
    return L


def seeds_section(main: dict, seeds: dict) -> list[str]:
    L = ["## 4. A second seed (VeloxSeg and UNet, HecktorMini)", "",
         "| model | seed 0 Dice (cases) | seed 1 Dice (cases) | both seeds (case-runs) | same case, other seed: "
         "mean / max abs. change |", "|---|---|---|---|---|"]
    for a in ("veloxseg", "unet"):
        if a not in seeds:
            continue
        s0 = list(main.get(a, {}).get("dice", {}).values())
        s1 = list(seeds[a]["dice"].values())
        d0, d1 = main.get(a, {}).get("dice", {}), seeds[a]["dice"]
        change = [abs(d0[c] - d1[c]) for c in sorted(set(d0) & set(d1))]
        ch = f"{statistics.fmean(change):.3f} / {max(change):.3f} ({len(change)})" if change else "–"
        L.append(f"| {LABELS[a]} | {fmt(*mean_sd(s0))} ({len(s0)}) | {fmt(*mean_sd(s1))} ({len(s1)}) | "
                 f"{fmt(*mean_sd(s0 + s1))} ({len(s0) + len(s1)}) | {ch} |")
    if "veloxseg" in seeds and "unet" in seeds:
        d, common = paired(seeds["veloxseg"]["dice"], seeds["unet"]["dice"])
        L += ["", f"Seed 1, VeloxSeg − UNet over {len(common)} cases: {noise_verdict(d)}."]
    L += ["", "The same model on the same held-out case changes by the amounts in the last column when only the "
          "seed (initial weights, crops, augmentation) changes. The paired intervals of sections 1 and 3 cover "
          "case-to-case noise only, from one seed; seed-to-seed noise of this size comes on top, so single-seed "
          "differences smaller than it should be read as within noise too."]
    L.append("")
    return L


#: the runs of the ``authors`` group (issue 18), in table order
AUTHORS_ROWS = {
    "veloxseg": "veloxseg default: the authors' network (2x residual, LN eps 1e-6, DS align_corners, He init), "
                "veloxseg's recipe for minutes",
    "recipe-authors": "the authors' network and their recipe (`--recipe authors`: their lr curve and rates, "
                      "no flips, no clipping)",
    "pre-authors": "the network before issue 18 (`--variant pre-authors`: single residual, LN eps 1e-5, "
                   "DS align_corners=False, PyTorch init), veloxseg's recipe",
    "default-rerun": "veloxseg default again (the same command and seed), with the code of the row below: "
                     "faster steps, so more of them in the same CPU budget",
    "ds-halving": "the authors' network, veloxseg's recipe with nnU-Net's deep-supervision weights "
                  "(`--ds-weights 1 0.5 0.25 0.125` instead of the paper's equal weights)",
}
#: the paired comparisons of section 6: (row, the row it is compared with)
AUTHORS_PAIRS = (("veloxseg", "recipe-authors"), ("veloxseg", "pre-authors"), ("default-rerun", "veloxseg"),
                 ("ds-halving", "default-rerun"))


def ds_heads_reading(ds_heads: list[dict], groups: dict[str, list[dict]]) -> str:
    """Each ``ds_heads.py`` record as "after B CPU-minutes (run, command): Dice+CE per output", B from the run's result."""
    budgets = {f"{g}/{r['name']}": r["job"]["budget_min"] for g, rs in groups.items() for r in rs if "job" in r}
    parts = []
    for h in sorted(ds_heads, key=lambda h: h["command"]):
        run = "/".join(h["command"].split()[2].split("/")[-2:])  # GROUP/NAME of the run folder
        budget = f"{budgets[run]:g} CPU-minutes" if run in budgets else "training"
        parts.append(f"after {budget} (`{h['command'].replace('/tmp/veloxseg-exp/', 'WORK/')}`): "
                     + ", ".join(f"{v:.2f} ({n})" for n, v in zip(h["outputs"], h["dice_ce"])))
    return "; ".join(parts)


def authors_section(recs: list[dict], ds_heads: list[dict] | None = None,
                    groups: dict[str, list[dict]] | None = None) -> list[str]:
    """Issue 18: our default against the authors' recipe and against the network before it matched theirs."""
    L = ["## 6. The authors' exact network and recipe (HecktorMini, 8 CPU-minutes per fold)", ""]
    if not recs:
        return L + ["Not run yet: `python experiments/run_experiments.py --groups authors`.", ""]
    s = summarize(recs)
    L += ["Each run: `veloxseg train --time-budget 8 --budget-clock cpu --threads 1 --num-folds 3 --fold K` with "
          "nothing else chosen by hand (the CLI's own recipe for a time budget), then the final weights predict "
          "the fold's 2 held-out cases. Per-case Dice pooled over the 3 folds.", "",
          "| configuration | held-out Dice, mean ± sd (cases) | epochs reached (mean) | optimizer steps (mean) | "
          "CPU s of training (mean) |", "|---|---|---|---|---|"]
    steps: dict[str, list[float]] = {}
    for r in recs:
        if r["run_info"].get("steps") is not None:
            steps.setdefault(arch(r), []).append(r["run_info"]["steps"])
    for a, label in AUTHORS_ROWS.items():
        if a not in s:
            L.append(f"| {label} | not run | | | |")
            continue
        e = s[a]
        d = list(e["dice"].values())
        L.append(f"| {label} | {fmt(*mean_sd(d))} ({len(d)}) | {fmt(*mean_sd(e['epochs']), digits=1)} | "
                 f"{fmt(*mean_sd(steps.get(a, [])), digits=0)} | {fmt(*mean_sd(e['cpu']), digits=0)} |")
    present = [a for a in AUTHORS_ROWS if a in s]
    cases = sorted({c for a in present for c in s[a]["dice"]})
    L += ["", "Per held-out case:", "", "| case | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    L += [f"| {c} | " + " | ".join(fmt(s[a]["dice"].get(c, math.nan)) for a in present) + " |" for c in cases]
    L.append("")
    for one, other in AUTHORS_PAIRS:
        if one in s and other in s:
            diffs, common = paired(s[one]["dice"], s[other]["dice"])
            L.append(f"- {'default' if one == 'veloxseg' else one} − {'default' if other == 'veloxseg' else other}, "
                     f"paired per case: {noise_verdict(diffs)}.")
    L += ["", "Reading: the authors' recipe is tuned for 300 epochs on a GPU (peak lr 2.75e-4); in a budget of CPU "
          "minutes it takes too few effective steps, hence `--recipe authors` is a reproduction tool and "
          "veloxseg's budget recipe the default. The default network computes what the authors' code computes "
          "(issue 18); the earlier network is kept as `--variant pre-authors`. Where the paired interval above "
          "holds 0, these 6 cases do not show either network training better; the issue's rule keeps the "
          "authors' computation as the default unless the earlier one is better beyond noise."]
    if "ds-halving" in s and "default-rerun" in s:
        diffs, _ = paired(s["ds-halving"]["dice"], s["default-rerun"]["dice"])
        verdict = noise_verdict(diffs)
        fit = ""
        if ds_heads:
            fit = (". The outputs' Dice+CE on training crops at the end of a default run of fold 0 (training mode, "
                   "8 batches), " + ds_heads_reading(ds_heads, groups or {}))
        L += ["", "Tried for issue 22 (VeloxSeg below the best baseline at 8 CPU-minutes, section 10): with the "
              f"paper's equal weights the full-resolution output gets a quarter of the Dice+CE gradient{fit}. "
              "nnU-Net's halving weights "
              f"(`--ds-weights 1 0.5 0.25 0.125`) against the default run with the same code: {verdict}. "
              + ("They are better beyond noise on these cases; " if "beyond noise" in verdict and diffs
                 and sum(diffs) > 0 else "Not better beyond noise on these cases; ")
              + "the default stays the paper's equal weights (a change of recipe needs more than 6 cases to "
              "justify), and `--ds-weights` is there for users to try."]
    L.append("")
    return L


def brats_section(recs: list[dict]) -> list[str]:
    L = ["## 5. BratsMini (FLAIR + T1c, 4 classes, leave-one-out, 3 mm)", ""]
    if not recs:
        return L + ["Not run in this session (the runs are queued last; `python experiments/run_experiments.py "
                    "--groups brats` runs them).", ""]
    names = {"1": "necrosis", "2": "edema", "3": "non-enh.", "4": "enhancing"}
    L += ["Dice per class, its mean over the classes with a defined Dice, and HD95 (mm) averaged over the classes "
          "where it is defined (both masks non-empty).", "",
          "| model | held-out case | " + " | ".join(names.values()) + " | mean Dice | mean HD95 (mm) | epochs |",
          "|---|---|" + "---|" * (len(names) + 3)]
    by_model: dict[str, list[float]] = {}
    hd_model: dict[str, list[float]] = {}
    for r in sorted(recs, key=lambda r: (MAIN_ORDER.index(r["job"]["model"]), r["job"]["fold"])):
        hd = case_hd95(r)
        for case, c in r["cases"].items():
            vals = [c["labels"].get(k, {}).get("dice") for k in names]
            defined = [v for v in vals if v is not None]
            m = statistics.fmean(defined) if defined else math.nan
            by_model.setdefault(r["job"]["model"], []).append(m)
            if case in hd:
                hd_model.setdefault(r["job"]["model"], []).append(hd[case])
            L.append(f"| {LABELS[r['job']['model']]} | {case} | " + " | ".join(fmt(v if v is not None else math.nan)
                                                                              for v in vals)
                     + f" | {fmt(m)} | {fmt(hd.get(case, math.nan), None, 1)} | {r['run_info']['epochs_reached']} |")
    L.append("")
    L.append("Mean over cases: " + "; ".join(f"{LABELS[m]} Dice {fmt(*mean_sd(v))}, HD95 "
                                             f"{fmt(*mean_sd(hd_model.get(m, [])), 1)} mm"
                                             for m, v in by_model.items())
             + ". Classes absent from a case's reference and prediction have no Dice (–).")
    L.append("")
    return L


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results.md")
    ap.add_argument("--expected", type=int, default=None, help="planned number of runs (default: the full plan)")
    a = ap.parse_args()
    render(load(a.results), a.out, a.out.with_name("results_dice_vs_time.png"), a.expected)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
