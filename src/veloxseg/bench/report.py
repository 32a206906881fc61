"""Markdown tables, the benchmark document and the bar chart of a ``veloxseg bench`` result."""

from __future__ import annotations

from typing import Any

GB = 1024**3


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def _mem(x: int | None) -> str:
    return "–" if x is None else f"{x / GB:.2f}"


def _fail(d: dict[str, Any] | None) -> str | None:
    if d is None:
        return "not run"
    if "error" in d:
        return "failed: " + d["error"].replace("|", "/")[:80]
    return None


def size_table(result: dict[str, Any]) -> str:
    """Parameters at inference and compute of one forward."""
    rows = ["| model | params (M) | GFLOP per forward | G multiply-adds |", "|---|---:|---:|---:|"]
    for name, e in result["models"].items():
        if "params" in e:
            rows.append(f"| {name} | {e['params'] / 1e6:.3f} | {e['flops'] / 1e9:.2f} | {e['flops'] / 2e9:.2f} |")
    return "\n".join(rows)


def ceiling_table(result: dict[str, Any]) -> str:
    """The machine's measured dense-compute ceilings per thread count."""
    bf16 = any("conv_bf16" in c for c in result["ceiling"].values())
    rows = ["| threads | conv3d 5×5×5, 32→32, 48³ (GFLOP/s) | matmul 4096² fp32 (GFLOP/s) |"
            + (" conv3d as before, bf16 channels-last (GFLOP/s) |" if bf16 else ""),
            "|---:|---:|---:|" + ("---:|" if bf16 else "")]
    for t, c in result["ceiling"].items():
        extra = f" {c['conv_bf16']['gflops']:.1f} |" if "conv_bf16" in c else (" – |" if bf16 else "")
        rows.append(f"| {t} | {c['conv']['gflops']:.1f} | {c['matmul']['gflops']:.1f} |{extra}")
    return "\n".join(rows)


def throughput_table(result: dict[str, Any]) -> str:
    """Inference throughput per model and thread count, with GFLOP/s and fractions of the ceilings."""
    rows = ["| model | threads | images/s | s per forward: median (min–max) | time × VeloxSeg "
            "| GFLOP/s | % conv ceiling | % matmul ceiling |",
            "|---|---:|---:|---|---:|---:|---:|---:|"]
    for name, e in result["models"].items():
        for t, tm in e.get("throughput", {}).items():
            frac, mfrac = tm.get("conv_fraction"), tm.get("matmul_fraction")
            conv_pct = _f(None if frac is None else 100 * frac, ".1f")
            mm_pct = _f(None if mfrac is None else 100 * mfrac, ".1f")
            rows.append(
                f"| {name} | {t} | {tm['images_per_s']:.3f} | {tm['median']:.3f} ({tm['min']:.3f}–{tm['max']:.3f}),"
                f" n={tm['reps']} | {_f(tm.get('time_vs_veloxseg'), '.1f')} | {_f(tm.get('gflops_per_s'), '.1f')} "
                f"| {conv_pct} | {mm_pct} |")
    compiled = [f"{n} {e['compile_seconds']:.0f} s" for n, e in result["models"].items() if e.get("compile_seconds")]
    if compiled:
        rows.append("")
        rows.append("Compiled (torch.export + AOTInductor) before the first timed forward, once per process: "
                    + ", ".join(compiled) + ". A bf16 row's % conv ceiling is of the bf16 conv ceiling.")
    scaling = [f"{n} {e['scaling_2_vs_1']:.2f}×" for n, e in result["models"].items() if "scaling_2_vs_1" in e]
    if scaling:
        rows.append("")
        rows.append("2-thread / 1-thread throughput: " + ", ".join(scaling) + ".")
    return "\n".join(rows)


def streams_table(result: dict[str, Any]) -> str:
    """Throughput with as many windows at once as threads, one window per thread (predict's CPU path)."""
    rows = ["| model | threads | images/s | s per call of `threads` windows: median (min–max) | × 1 thread |",
            "|---|---:|---:|---|---:|"]
    for name, e in result["models"].items():
        for t, tm in e.get("streams", {}).items():
            rows.append(f"| {name} | {t} | {tm['images_per_s']:.3f} | {tm['median']:.3f} ({tm['min']:.3f}–"
                        f"{tm['max']:.3f}), n={tm['reps']} | {_f(tm.get('vs_1_thread'))} |")
    return "\n".join(rows)


def train_table(result: dict[str, Any]) -> str:
    """One training step per model: seconds and peak memory."""
    cfg = result["config"]
    mem = "GPU max allocated" if cfg["device"].startswith("cuda") else "peak RSS growth"
    rows = [f"| model | s per step: fastest (median–max) | time × VeloxSeg (fastest) | {mem} (GB) |",
            "|---|---|---:|---:|"]
    for name, e in result["models"].items():
        tr = e.get("train")
        if tr is None:
            continue
        fail = _fail(tr)
        if fail:
            rows.append(f"| {name} | {fail} | – | – |")
            continue
        rows.append(f"| {name} | {tr['min']:.2f} ({tr['seconds']:.2f}–{tr['max']:.2f}), n={tr['steps']} "
                    f"| {_f(tr.get('time_vs_veloxseg'), '.1f')} | {_mem(tr['peak_memory_growth'])} |")
    return "\n".join(rows)


def volume_table(result: dict[str, Any]) -> str:
    """Whole-volume sliding-window prediction (measured, or estimated from the forward time)."""
    rows = ["| model | seconds | peak RSS (GB) | peak RSS growth (GB) |", "|---|---:|---:|---:|"]
    for name, e in result["models"].items():
        vol = e.get("volume")
        if vol is not None:
            fail = _fail(vol)
            if fail:
                rows.append(f"| {name} | {fail} | – | – |")
            else:
                rows.append(f"| {name} | {vol['seconds']:.1f} | {_mem(vol['peak_memory'])} "
                            f"| {_mem(vol['peak_memory_growth'])} |")
        elif "volume_estimate_seconds" in e:
            rows.append(f"| {name} | ≈ {e['volume_estimate_seconds']:.0f} (estimated) | – | – |")
    return "\n".join(rows)


def markdown(result: dict[str, Any]) -> str:
    """All tables of ``result`` as markdown (what ``veloxseg bench`` prints)."""
    cfg = result["config"]
    shape = "×".join(map(str, result["models"][next(iter(result["models"]))].get("input_shape", [])))
    parts = [f"Input {shape}, preset {cfg['preset']}, device {cfg['device']}.", "", size_table(result)]
    if result["ceiling"]:
        parts += ["", ceiling_table(result)]
    if any(e.get("throughput") for e in result["models"].values()):
        parts += ["", throughput_table(result)]
    if any(e.get("streams") for e in result["models"].values()):
        parts += ["", "Windows side by side: a call of as many windows as threads, one window per thread on one "
                      "intra-op thread (`veloxseg.inference.streams.WindowStreams`, how `veloxseg predict` spreads "
                      "a batch of windows on a CPU); × 1 thread is against the 1-thread row above.",
                  "", streams_table(result)]
    if any(e.get("train") is not None for e in result["models"].values()):
        parts += ["", f"Training step: batch {cfg['train_batch']}, {cfg['train_threads']} thread(s), "
                      "forward + the model's own loss + backward + AdamW step.", "", train_table(result)]
    if any(e.get("volume") is not None for e in result["models"].values()):
        vol, roi = "×".join(map(str, cfg["volume"])), "×".join(map(str, cfg["size"]))
        parts += ["", f"Whole-volume prediction of a {vol} volume: MONAI sliding windows of {roi}, "
                      f"overlap {cfg['overlap']:g}, {cfg.get('sw_batch_size', 1)} window(s) per forward, "
                      "Gaussian blending, "
                      f"{result['volume_windows']} windows, argmax to labels; {cfg['train_threads']} thread(s). "
                      "Estimated rows are windows × the median forward time at that thread count.",
                  "", volume_table(result)]
    return "\n".join(parts) + "\n"


MODELS_NOTE = (
    "Models: `veloxseg` is the deployed network (no teachers, no deep-supervision heads; in training, the "
    "full network with both texture teachers and `VeloxSegLoss`), run for inference as `veloxseg predict` runs it "
    "on a CPU: a frozen TorchScript graph with the fast CPU kernels (traced in the warm-up; in the whole-volume "
    "rows with predict's policy, eager until 200 calls of a window shape, so a single volume runs eagerly, and the "
    "windows of a call side by side, one per thread). "
    "The other ways to run it (eager PyTorch, ONNX Runtime, torch.compile) are timed side by side by "
    "`python benchmarks/engines.py` ([engines.md](engines.md)). `veloxseg-straightforward` is the same network "
    "and loss run eagerly with veloxseg's fast CPU kernels switched off (PyTorch's default ops): the before/after "
    "of the CPU optimisations, from the same command. The baselines run eagerly, as MONAI's users run them; "
    "they are MONAI's "
    "(`src/veloxseg/baselines.py`): UNet with channels 16–256 and two residual units per level; UNETR with "
    "ViT-B/16 and feature size 16; SwinUNETR with feature size 48; SegResNet with 16 initial filters; DynUNet "
    "configured like nnU-Net's 3D full-resolution U-Net (32–320 filters, 5 stages at 96³, deep supervision). "
    "Baselines train with Dice+CE (DynUNet with nnU-Net's deep-supervision weights).")


def document(result: dict[str, Any], note: str | None = None, image: str | None = None,
             plot_arg: str | None = None, json_arg: str | None = None) -> str:
    """``docs/benchmarks.md``: how it was made, the machine, and every table.

    ``image`` is the chart's path relative to the document; ``plot_arg`` and ``json_arg`` the
    ``--plot`` and ``--json`` values used (shown in the command).
    """
    m = result["machine"]
    lines = ["# Benchmarks", "",
             "<!-- Generated by `veloxseg bench --markdown`; do not edit by hand, rerun the command. -->", ""]
    if note:
        lines += [f"> {note}", ""]
    command = result["command"] + (f" --json {json_arg}" if json_arg else "") \
        + (f" --plot {plot_arg}" if plot_arg else "") + " --markdown docs/benchmarks.md"
    lines += ["Produced by this command (any machine can rerun it; ratios and fractions of the ceiling are the "
              "figures that carry over between machines):", "", "```bash", command,
              "```", "",
              f"Machine: {m['cpu']}, {m['cores']} core(s) available{', GPU ' + m['gpu'] if m.get('gpu') else ''}; "
              f"torch {m['torch']}, MONAI {m['monai']}, veloxseg {m['veloxseg']}, Python {m['python']}; {m['date']}.",
              "", "Protocol: inference is eval mode under `torch.inference_mode` (as `veloxseg predict` runs it), "
              "batch 1, after a warm-up, the median of timed "
              "forwards over at least the given seconds, in `--rounds` rounds interleaved over the models, of "
              "which each model's best is reported. VeloxSeg is timed again right before every other model, and "
              "'time × VeloxSeg' is the median over the rounds of the model's time over that adjacent VeloxSeg "
              "time (VeloxSeg's own figure is the best of all its timings). FLOPs are PyTorch's "
              "`FlopCounterMode` (2 per multiply-add). The ceilings are measured in the same run with the same "
              "thread counts; '% conv ceiling' is the model's achieved GFLOP/s over the dense 5×5×5 conv's (each ceiling is "
              "the better of a run before and one after the models). Training steps are timed after a warm-up "
              "step (at least `--train-steps`, and more until the given seconds); the fastest step is compared "
              "between models. Whole-volume predictions are the fastest of `--rounds` runs. Training steps and "
              "whole-volume predictions run in a fresh process per model, so their peak RSS growth is that "
              "model's alone.", "", MODELS_NOTE, "", markdown(result)]
    if image:
        lines += ["", f"![veloxseg bench chart]({image})", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    """Bar chart: parameters, inference throughput, training-step time and memory per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    models = [n for n, e in result["models"].items() if "params" in e]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    ax = axes[0]
    ax.bar(models, [result["models"][n]["params"] / 1e6 for n in models], color="tab:blue")
    ax.set_yscale("log")
    ax.set_title("parameters (M)")
    ax = axes[1]
    threads = list(result["config"]["threads"])
    width = 0.8 / max(1, len(threads))
    for i, t in enumerate(threads):
        vals = [result["models"][n].get("throughput", {}).get(str(t), {}).get("images_per_s", 0) for n in models]
        ax.bar([j + i * width for j in range(len(models))], vals, width, label=f"{t} thread(s)")
    ax.set_xticks([j + width * (len(threads) - 1) / 2 for j in range(len(models))], models)
    ax.set_yscale("log")
    ax.set_title("inference (images/s)")
    ax.legend(fontsize=8)
    for ax, key, title, scale in ((axes[2], "seconds", "training step (s)", 1.0),
                                  (axes[3], "peak_memory_growth", "training peak memory (GB)", 1 / GB)):
        vals = []
        for n in models:
            tr = result["models"][n].get("train") or {}
            vals.append(tr[key] * scale if key in tr else 0)
        ax.bar(models, vals, color="tab:orange" if key == "seconds" else "tab:green")
        ax.set_yscale("log")
        ax.set_title(title)
    for ax in axes:
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        for label in ax.get_xticklabels():  # anchor each rotated name at its bar, not centred on it
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    fig.suptitle(f"veloxseg bench: preset {result['config']['preset']}, input "
                 f"{'x'.join(map(str, result['config']['size']))}, {result['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
