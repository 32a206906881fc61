"""``docs/results.md`` sections for issue 20: fold ensembles and segmentation with a modality missing."""

from __future__ import annotations

import math
from pathlib import Path

from make_results import pyplot, save_figure, case_metric, fmt, mean_sd, noise_verdict, paired

#: rows of the modality table: (label, group/tag, which input) -> per-case Dice
MODALITY_ROWS = (
    ("(a) full model (trained on both)", "authors", "veloxseg", "both"),
    ("(b) modality dropout 0.3", "modality", "dropout", "both"),
    ("(b) modality dropout 0.3", "modality", "dropout", "PET only"),
    ("(b) modality dropout 0.3", "modality", "dropout", "CT only"),
    ("(c) trained on PET only", "modality", "pet-only", "PET only"),
    ("(c) trained on CT only", "modality", "ct-only", "CT only"),
)
#: ``cases_missing`` key (absent channel indices) for each input of a HecktorMini model (0 = CT, 1 = PET)
ABSENT = {"PET only": "0", "CT only": "1"}


def _tag(rec: dict) -> str:
    return rec["job"].get("tag") or rec["job"]["variant"] or rec["job"]["model"]


def modality_dice(groups: dict[str, list[dict]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (row label, input): per-case Dice pooled over the folds."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for label, group, tag, inp in MODALITY_ROWS:
        recs = [r for r in groups.get(group, []) if "job" in r and _tag(r) == tag]
        d: dict[str, float] = {}
        for r in recs:
            if tag == "dropout" and inp != "both":
                cases = r.get("cases_missing", {}).get(ABSENT[inp])
                if cases is None:
                    continue
                d.update(case_metric({"cases": cases}, "dice"))
            else:
                d.update(case_metric(r, "dice"))
        if d:
            out[(label, inp)] = d
    return out


def modality_plot(dice: dict[tuple[str, str], dict[str, float]], path: Path) -> bool:
    """Held-out Dice per input, one point per case, the dropout model beside the dedicated models."""
    plt = pyplot()
    if plt is None:
        return False
    if not dice:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    inputs = ["both", "PET only", "CT only"]
    for j, (label, inp) in enumerate(dice):
        x = inputs.index(inp) + (0.18 if label.startswith("(b)") else -0.18)
        vals = list(dice[(label, inp)].values())
        color = "tab:orange" if label.startswith("(b)") else "tab:blue"
        ax.scatter([x] * len(vals), vals, color=color, alpha=0.6, s=18)
        ax.errorbar([x], [sum(vals) / len(vals)], fmt="_", color="black", markersize=18)
    ax.set_xticks(range(3), inputs)
    ax.set_ylabel("held-out Dice (per case)")
    ax.set_ylim(0, 1)
    ax.scatter([], [], color="tab:blue", label="dedicated model: (a) both, (c) one modality")
    ax.scatter([], [], color="tab:orange", label="(b) one model with modality dropout")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("HecktorMini, 3 folds, 8 CPU-minutes of training each")
    return save_figure(fig, path)


def modality_section(groups: dict[str, list[dict]], png: Path) -> list[str]:
    """Issue 20, part 3: modality dropout against models trained on one modality."""
    L = ["## 7. Segmenting with a modality missing (HecktorMini, 8 CPU-minutes per fold)", ""]
    dice = modality_dice(groups)
    if not any(k[0].startswith("(b)") for k in dice):
        return L + ["Not run yet: `python experiments/run_experiments.py --groups authors modality`.", ""]
    have_plot = modality_plot(dice, png)
    L += ["Every model: `veloxseg train --time-budget 8 --budget-clock cpu --threads 1 --num-folds 3 --fold K` "
          "(the CLI's budget recipe), final weights, the fold's 2 held-out cases; per-case Dice pooled over the 3 "
          "folds. (a) is section 6's default run. (b) adds `--modality-dropout 0.3` and predicts each held-out "
          "case three times: with both channel files, without the CT file, without the PET file (the absent "
          "channel zeroed after normalisation, `veloxseg predict` on a folder lacking that file). (c) trains on a "
          "view of the data set holding one channel (symlinks, `experiments/run_experiments.py` "
          "`channel_view`).", "",
          "| model | input at prediction | held-out Dice, mean ± sd (cases) |", "|---|---|---|"]
    for label, _, _, inp in MODALITY_ROWS:
        d = dice.get((label, inp))
        L.append(f"| {label} | {inp} | " + (f"{fmt(*mean_sd(list(d.values())))} ({len(d)})" if d else "not run")
                 + " |")
    L.append("")
    comparisons = [("(b) both − (a) both", ("(b) modality dropout 0.3", "both"), ("(a) full model (trained on both)",
                                                                                  "both")),
                   ("(b) PET only − (c) PET-only model", ("(b) modality dropout 0.3", "PET only"),
                    ("(c) trained on PET only", "PET only")),
                   ("(b) CT only − (c) CT-only model", ("(b) modality dropout 0.3", "CT only"),
                    ("(c) trained on CT only", "CT only"))]
    beyond = False
    for text, x, y in comparisons:
        if x in dice and y in dice:
            diffs, _ = paired(dice[x], dice[y])
            verdict = noise_verdict(diffs)
            beyond = beyond or "beyond noise" in verdict
            L.append(f"- {text}, paired per case: {verdict}.")
    means = {k: sum(v.values()) / len(v) for k, v in dice.items()}
    b = {inp: means.get(("(b) modality dropout 0.3", inp)) for inp in ("both", "PET only", "CT only")}
    if all(v is not None for v in b.values()) and ("(a) full model (trained on both)", "both") in means:
        a = means[("(a) full model (trained on both)", "both")]
        L += ["", f"Reading: with both modalities the dropout model scores {b['both']:.3f} against the full model's "
              f"{a:.3f} ({b['both'] - a:+.3f}); with the PET alone it scores {b['PET only']:.3f}, "
              f"{'more' if b['PET only'] > b['both'] else 'less'} than with both, and with the CT alone "
              f"{b['CT only']:.3f}: in 8 CPU-minutes it learns the tumour from the PET and hardly from the CT, as the "
              "single-modality models do. "
              + ("At least one paired difference above is beyond noise." if beyond else
                 "None of the paired differences above is beyond noise on these cases.")]
    if have_plot:
        L += ["", f"![Dice with a modality missing]({png.name})"]
    L += ["", "The claim tested: (b) with one modality is close to (c) for that modality, and (b) with both is no "
          "worse than (a) beyond noise. Six held-out cases: an interval that holds 0 means these cases cannot "
          "tell the two apart, not that they are equal. BratsMini (FLAIR only, T1c only) was not run in this "
          "round: `python experiments/run_experiments.py --groups modality-brats` (16 runs of 8 CPU-minutes, 4 "
          "leave-one-out folds, resumable) runs it.", ""]
    return L


def ensemble_section(rec: dict | None) -> list[str]:
    """Issue 20, part 1: a 4-fold ensemble against its folds on 2 held-out HecktorMini cases."""
    L = ["## 8. A cross-validation ensemble against its single folds (HecktorMini)", ""]
    if rec is None:
        return L + ["Not run yet: `python experiments/ensemble.py`.", ""]
    held = rec["held_out"]
    L += [f"Cases {', '.join(held)} held out; the other four cross-validated with `{rec['command']}` (VIEW: those "
          "four cases). Each fold then predicts the held-out cases alone (`-m RUN/fold_K/checkpoint_best.pt`), and "
          "the ensemble (`-m RUN`, the mean of the 4 folds' softmax probabilities) predicts them once. Seconds per "
          f"case: {rec['predict']}.", "",
          "| model | " + " | ".join(f"Dice {c}" for c in held) + " | mean Dice | s per case (mean) |",
          "|---|" + "---|" * (len(held) + 2)]
    for name, r in rec["rows"].items():
        d = [r["dice"].get(c, math.nan) for c in held]
        t = list(r["seconds"].values())
        L.append(f"| {name} | " + " | ".join(fmt(v) for v in d) + f" | {fmt(sum(d) / len(d))} | "
                 f"{fmt(sum(t) / len(t), digits=2)} |")
    single = rec.get("single_model_8min")
    if single:
        d = [single["dice"].get(c, math.nan) for c in held]
        L.append(f"| one model on 4 other cases, 8 CPU-min (section 6's fold holding the case out) | " + " | ".join(fmt(v) for v in d)
                 + f" | {fmt(sum(d) / len(d))} | |")
    folds = [r for n, r in rec["rows"].items() if n.startswith("fold")]
    fold_mean = [sum(r["dice"][c] for r in folds) / len(folds) for c in held]
    ens = rec["rows"].get("ensemble (4 folds)")
    t_fold = sum(sum(r["seconds"].values()) / len(r["seconds"]) for r in folds) / len(folds)
    t_ens = sum(ens["seconds"].values()) / len(ens["seconds"]) if ens else math.nan
    L += ["", f"Mean of the single folds per case: {', '.join(fmt(v) for v in fold_mean)}. Each fold trained on 3 "
          f"cases for {rec['command'].split('--time-budget ')[1].split()[0]} CPU-minutes; the ensemble costs the "
          f"4 folds' training and {t_ens / t_fold:.1f}× a single fold's time per case (4 networks; reading, "
          "preprocessing and resampling back shared). Two held-out cases cannot show whether the ensemble is more "
          "accurate; the table shows that it runs end to end on real data and what it costs.", ""]
    return L
