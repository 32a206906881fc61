"""``docs/results.md`` sections for issue 20: fold ensembles and segmentation with a modality missing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from make_results import arch, pyplot, save_figure, case_metric, fmt, mean_sd, noise_verdict, paired

@dataclass(frozen=True)
class ModalityStudy:
    """One data set's modality runs: which group holds what, and what its two modalities are called."""

    dataset: str
    full: tuple[str, str, float | None]  # (group, tag, budget) of the full model trained on both
    group: str  # the group of the dropout and single-modality runs
    #: per modality (named as in dataset.json): (its channel, the single-modality run's tag)
    modalities: dict[str, tuple[int, str]]
    folds: str
    command: str
    #: foreground classes by label value, for a per-class table (several classes only)
    classes: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(label, group, tag, input) per table row."""
        a, b = self.modalities
        full_group, full_tag, _ = self.full
        return [("(a) full model (trained on both)", full_group, full_tag, "both"),
                *[("(b) modality dropout 0.3", self.group, "dropout", inp) for inp in ("both", f"{a} only",
                                                                                        f"{b} only")],
                *[(f"(c) trained on {m} only", self.group, tag, f"{m} only") for m, (_, tag) in
                  self.modalities.items()]]

    def absent(self, inp: str) -> str:
        """``cases_missing`` key (the absent channel) for an input "X only" of a two-channel model."""
        present = self.modalities[inp.removesuffix(" only")][0]
        return str(1 - present)


HECKTOR = ModalityStudy("HecktorMini", ("authors", "default-rerun", None), "modality",
                        {"PET": (1, "pet-only"), "CT": (0, "ct-only")}, "3 folds, 2 held-out cases each",
                        "--num-folds 3 --fold K")
BRATS = ModalityStudy("BratsMini", ("curve-brats", "veloxseg", 8), "modality-brats",
                      {"FLAIR": (0, "flair-only"), "T1c": (1, "t1c-only")},
                      "4 leave-one-out folds, 3 mm", "--num-folds 4 --fold K --spacing 3 3 3",
                      {"1": "necrosis", "2": "edema", "3": "non-enh.", "4": "enhancing"})


def _row_cases(groups: dict[str, list[dict]], study: ModalityStudy) -> dict[tuple[str, str], dict[str, dict]]:
    """Per (row label, input): the held-out cases' records (per class metrics) pooled over the folds."""
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for label, group, tag, inp in study.rows():
        recs = [r for r in groups.get(group, []) if "job" in r and arch(r) == tag]
        if group == study.full[0] and study.full[2] is not None:
            recs = [r for r in recs if r["job"]["budget_min"] == study.full[2]]
        cases: dict[str, dict] = {}
        for r in recs:
            if tag == "dropout" and inp != "both":
                cases.update(r.get("cases_missing", {}).get(study.absent(inp)) or {})
            else:
                cases.update(r["cases"])
        if cases:
            out[(label, inp)] = cases
    return out


def modality_dice(groups: dict[str, list[dict]], study: ModalityStudy = HECKTOR
                  ) -> dict[tuple[str, str], dict[str, float]]:
    """Per (row label, input): per-case Dice (mean over the foreground classes) pooled over the folds."""
    return {k: d for k, cases in _row_cases(groups, study).items() if (d := case_metric({"cases": cases}, "dice"))}


def class_means(groups: dict[str, list[dict]], study: ModalityStudy) -> dict[tuple[str, str], dict[str, tuple[float, int]]]:
    """Per (row label, input) and class: the mean Dice over the held-out cases where it is defined, and their count."""
    out: dict[tuple[str, str], dict[str, tuple[float, int]]] = {}
    for key, cases in _row_cases(groups, study).items():
        for k in study.classes:
            vals = [c["labels"][k]["dice"] for c in cases.values()
                    if k in c["labels"] and c["labels"][k]["dice"] is not None]
            if vals:
                out.setdefault(key, {})[k] = (sum(vals) / len(vals), len(vals))
    return out


def class_table(groups: dict[str, list[dict]], study: ModalityStudy) -> list[str]:
    """Per row and class: the mean Dice over the held-out cases where that class's Dice is defined."""
    means = class_means(groups, study)
    L = ["Per class (mean Dice over the cases where it is defined, i.e. the class is in the reference or the "
         "prediction):", "", "| model | input at prediction | " + " | ".join(study.classes.values()) + " |",
         "|---|---|" + "---:|" * len(study.classes)]
    for label, _, _, inp in study.rows():
        row = means.get((label, inp))
        if row is None:
            continue
        cells = [f"{row[k][0]:.3f} ({row[k][1]})" if k in row else "–" for k in study.classes]
        L.append(f"| {label} | {inp} | " + " | ".join(cells) + " |")
    b_label = study.rows()[1][0]
    both = means.get((b_label, "both"), {})
    best = []
    for m in study.modalities:
        row = means.get((b_label, f"{m} only"))
        if row:
            k = max(row, key=lambda c: row[c][0])
            best.append(f"with the {m} alone, {study.classes[k]} ({row[k][0]:.3f}; with both "
                        + (f"{both[k][0]:.3f})" if k in both else "–)"))
    if best:
        L += ["", "The dropout model's best class: " + "; ".join(best) + "."]
    return L + [""]


def modality_plot(dice: dict[tuple[str, str], dict[str, float]], study: ModalityStudy, path: Path) -> bool:
    """Held-out Dice per input, one point per case, the dropout model beside the dedicated models."""
    plt = pyplot()
    if plt is None or not dice:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    inputs = ["both", *(f"{m} only" for m in study.modalities)]
    for label, inp in dice:
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
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{study.dataset}, {study.folds}, 8 CPU-minutes of training each")
    return save_figure(fig, path)


def modality_table(groups: dict[str, list[dict]], study: ModalityStudy, png: Path) -> list[str] | None:
    """The table, paired comparisons, reading and plot of one data set; None if its dropout model is not run."""
    dice = modality_dice(groups, study)
    if not any(k[0].startswith("(b)") for k in dice):
        return None
    have_plot = modality_plot(dice, study, png)
    L = ["| model | input at prediction | held-out Dice, mean ± sd (cases) |", "|---|---|---|"]
    rows = study.rows()
    for label, _, _, inp in rows:
        d = dice.get((label, inp))
        L.append(f"| {label} | {inp} | " + (f"{fmt(*mean_sd(list(d.values())))} ({len(d)})" if d else "not run")
                 + " |")
    L.append("")
    if study.classes:
        L += class_table(groups, study)
    (a_label, *_), (b_label, *_) = rows[0], rows[1]
    comparisons = [("(b) both − (a) both", (b_label, "both"), (a_label, "both"))]
    comparisons += [(f"(b) {inp} − (c) {inp.removesuffix(' only')}-only model", (b_label, inp), (label, inp))
                    for label, _, _, inp in rows[4:]]
    beyond = False
    for text, x, y in comparisons:
        if x in dice and y in dice:
            diffs, _ = paired(dice[x], dice[y])
            verdict = noise_verdict(diffs)
            beyond = beyond or "beyond noise" in verdict
            L.append(f"- {text}, paired per case: {verdict}.")
    means = {k: sum(v.values()) / len(v) for k, v in dice.items()}
    one, two = (f"{m} only" for m in study.modalities)
    b = {inp: means.get((b_label, inp)) for inp in ("both", one, two)}
    if all(v is not None for v in b.values()) and (a_label, "both") in means:
        a = means[(a_label, "both")]
        strong, weak = (one, two) if b[one] >= b[two] else (two, one)
        L += ["", f"Reading: with both modalities the dropout model scores {b['both']:.3f} against the full model's "
              f"{a:.3f} ({b['both'] - a:+.3f}); with the {strong.removesuffix(' only')} alone {b[strong]:.3f}, "
              f"with the {weak.removesuffix(' only')} alone {b[weak]:.3f}. "
              + ("At least one paired difference above is beyond noise." if beyond else
                 "None of the paired differences above is beyond noise on these cases.")]
    if have_plot:
        L += ["", f"![Dice with a modality missing, {study.dataset}]({png.name})"]
    L.append("")
    return L


def modality_section(groups: dict[str, list[dict]], png: Path) -> list[str]:
    """Issue 20, part 3: modality dropout against models trained on one modality, HecktorMini and BratsMini."""
    L = ["## 7. Segmenting with a modality missing (8 CPU-minutes per fold)", "",
         "Every model: `veloxseg train --time-budget 8 --budget-clock cpu --threads 1` and the data set's folds "
         "(the CLI's budget recipe), final weights, each fold's held-out cases; per-case Dice (BratsMini: the mean "
         "over the 4 classes with a defined Dice) pooled over the folds. (b) adds `--modality-dropout 0.3` and "
         "predicts each held-out case three times: with both channel files, and without each one (the absent "
         "channel zeroed after normalisation, `veloxseg predict` on a folder lacking that file). (c) trains on a "
         "view of the data set holding one channel (symlinks, `experiments/run_experiments.py` `channel_view`). "
         "The claim tested: (b) with one modality is close to (c) for that modality, and (b) with both is no "
         "worse than (a) beyond noise. An interval that holds 0 means these few cases cannot tell the two apart, "
         "not that they are equal.", ""]
    for study, sub, path, group in ((HECKTOR, "7a", png, "authors modality"),
                                    (BRATS, "7b", png.with_name(png.stem + "_brats.png"), "modality-brats")):
        L += [f"### {sub}. {study.dataset} ({study.folds}; (a) is section "
              f"{'6' if study is HECKTOR else '10'}'s default {'rerun' if study is HECKTOR else 'run'}, "
              f"`{study.command}`)", ""]
        L += modality_table(groups, study, path) or [
            f"Not run yet: `python experiments/run_experiments.py --groups {group}` (resumable).", ""]
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
