"""``docs/results.md`` section for issue 19: training in bf16 on a CPU against fp32."""

from __future__ import annotations

from pathlib import Path

from make_results import pyplot, save_figure, fmt, mean_sd


def bf16_plot(rec: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for precision, run in rec["runs"].items():
        ax.plot(range(1, len(run["train_loss"]) + 1), run["train_loss"], label=precision)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.set_title("demo phantoms, same seed and recipe")
    return save_figure(fig, path)


def bf16_training_section(rec: dict | None, png: Path) -> list[str]:
    L = ["## 11. Training in bf16 on a CPU (`train --precision bf16`) against fp32", ""]
    if rec is None:
        return L + ["Not run yet: `python experiments/bf16_training.py`.", ""]
    runs = rec["runs"]
    L += [f"`python experiments/bf16_training.py --epochs {rec['epochs']}`: {rec['data']}; {rec['recipe']}. "
          f"Machine: {rec['machine']} (flags: {', '.join(rec['flags']) or 'no bf16'}).", "",
          "| precision | final training loss | mean loss, last 5 epochs | CPU s | CPU s per step | validation Dice "
          "(last) | test Dice, mean ± sd (4 cases) |", "|---|---:|---:|---:|---:|---:|---|"]
    for p, r in runs.items():
        last5 = r["train_loss"][-5:]
        val = r["val_dice"][max(r["val_dice"], key=int)] if r["val_dice"] else float("nan")
        steps = r.get("steps") or r["summary"].get("steps")
        per_step = r["cpu_seconds"] / steps if steps else float("nan")
        L.append(f"| {p} | {r['train_loss'][-1]:.4f} | {sum(last5) / len(last5):.4f} | {r['cpu_seconds']:.0f} | "
                 f"{per_step:.3f} | {fmt(val)} | {fmt(*mean_sd(list(r['test_dice'].values())))} |")
    if "fp32" in runs and "bf16" in runs:
        diffs = [b - a for a, b in zip(runs["fp32"]["train_loss"], runs["bf16"]["train_loss"])]
        m, s = mean_sd(diffs)
        L += ["", f"Per-epoch loss difference bf16 − fp32: mean {m:+.4f}, sd {s:.4f} over {len(diffs)} epochs. CPU s "
              "include validation and checkpoints (the training step alone, from `veloxseg bench`, is in "
              "[engines.md](engines.md)). One seed and 4 test cases: the test Dice differs mostly on one case, "
              "and one seed cannot tell whether bf16 changed the result or chance did."]
    if bf16_plot(rec, png):
        L += ["", f"![training loss, fp32 and bf16]({png.name})"]
    L.append("")
    return L
