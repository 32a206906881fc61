"""Compare the ways to run the deployed VeloxSeg on a CPU, side by side in one run.

Rewrites the measured part of ``docs/engines.md`` (between its ``engines-table`` markers; the rest of the
page is prose kept as it is). Run from the repository root:

    python benchmarks/engines.py [--preset autopet] [--threads 1,2] [--seconds 5] [--precision fp32,bf16]
                                 [--no-compile] [--no-pt2]

Engines: the frozen TorchScript graph of the network with veloxseg's fast CPU kernels (the default
of ``veloxseg predict``, ``--engine torch``), eager PyTorch with the fast kernels (``--engine eager``),
eager PyTorch on the default ops (the straightforward path), the ``torch.export`` program compiled by
AOTInductor (``--engine pt2``, the package ``veloxseg export --format pt2`` writes), ONNX Runtime on the
exported model (``veloxseg predict --engine onnxruntime``) and ``torch.compile`` (inductor, static shapes);
with ``--precision fp32,bf16`` also eager and pt2 in bf16 (``--precision bf16``). Each is timed like
``veloxseg bench`` times throughput: batch 1, eval, ``torch.inference_mode`` (as ``veloxseg predict``),
warm-up, then the median of repeated forwards for at least ``--seconds``; outputs are checked against
eager (max logit difference, and for bf16 the fraction of voxels with the same label).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from veloxseg import VeloxSeg, __version__
from veloxseg.export import export_module
from veloxseg.inference.cpu import cpu_name, isa_flags
from veloxseg.inference.engines import OnnxEngine, TorchEngine
from veloxseg.inference.graph import PREDICT_TRACE_AFTER, FrozenGraph
from veloxseg.inference.pt2 import PackageEngine, compile_package, example_input
from veloxseg.networks.layers import fast_paths
from veloxseg.presets import get_preset
from veloxseg.runtime import tune_allocator


def timed(fn: Callable[[], torch.Tensor], seconds: float, min_reps: int = 3) -> dict[str, float]:
    """Median, min and max seconds of ``fn`` after two warm-up calls."""
    fn()
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "reps": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="autopet")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for minutes)")
    parser.add_argument("--no-pt2", action="store_true", help="skip the AOTInductor packages (about a minute each)")
    parser.add_argument("--precision", default="fp32", help="fp32 or fp32,bf16 (adds eager and pt2 in bf16)")
    parser.add_argument("--out", default="docs/engines.md")
    args = parser.parse_args()
    bf16 = "bf16" in args.precision.split(",")

    tune_allocator()  # as `veloxseg predict` runs (veloxseg.runtime), for every engine alike
    preset = get_preset(args.preset)
    model = VeloxSeg.from_preset(args.preset).for_inference()
    x = torch.randn(preset.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(x)
    packages: dict[str, PackageEngine] = {}
    pt2_seconds: dict[str, float] = {}
    tmp_dir = tempfile.TemporaryDirectory()
    tmp = tmp_dir.name
    onnx_path = Path(tmp) / "model.onnx"
    export_module(model, "onnx", onnx_path, preset.input_shape[1], preset.patch_size)
    onnx_bytes = onnx_path.read_bytes()
    for precision in (["fp32", "bf16"] if bf16 else ["fp32"]) if not args.no_pt2 else []:
        t0 = time.perf_counter()  # one package for every thread count (it reads the thread count at run time)
        path = compile_package(model, example_input(tuple(preset.input_shape[1:])), Path(tmp) / f"{precision}.pt2",
                               precision)
        pt2_seconds[precision] = time.perf_counter() - t0
        packages[precision] = PackageEngine(path)
    eager_bf16 = TorchEngine(model, dtype=torch.bfloat16) if bf16 else None

    rows, compile_seconds, failures, trace_seconds = [], {}, {}, {}
    graph = FrozenGraph(model)
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        ort = OnnxEngine(onnx_bytes, threads=threads)

        def straightforward() -> torch.Tensor:
            with fast_paths(False):
                return model(x)

        t0 = time.perf_counter()
        with torch.inference_mode():
            graph(x)  # traced and frozen for this thread count
        trace_seconds[threads] = time.perf_counter() - t0
        engines: dict[str, Callable[[], torch.Tensor]] = {
            "TorchScript graph, fast CPU kernels (default)": lambda: graph(x),
            "eager, fast CPU kernels": lambda: model(x),
            "eager, PyTorch default ops": straightforward,
            "ONNX Runtime": lambda: ort(x),
        }
        if "fp32" in packages:
            engines["torch.export + AOTInductor (pt2)"] = lambda: packages["fp32"](x)
        if eager_bf16 is not None:
            engines["eager, bf16 channels-last"] = lambda: eager_bf16(x)
        if "bf16" in packages:
            engines["torch.export + AOTInductor (pt2), bf16"] = lambda: packages["bf16"](x)
        if not args.no_compile:
            # compiled per thread count, on a fresh copy so that it gets its own dynamo entries.
            # Graph breaks compile each level's blocks as separate frames (one entry per shape): with
            # dynamo's default limit of 8 the rest silently ran eager, and after a recompile dynamo
            # switches to dynamic shapes (generic kernels, 0.19 s per forward here): static shapes
            # and room for every level's entries
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            t0 = time.perf_counter()
            compiled = torch.compile(copy.deepcopy(model), dynamic=False)
            try:
                with torch.inference_mode():
                    compiled(x)
            except Exception as err:  # an inductor failure is a finding to report, not a reason to stop
                failures[threads] = str(err).strip().splitlines()[0][:160]
                print(f"torch.compile failed at {threads} thread(s): {failures[threads]}", flush=True)
            else:
                compile_seconds[threads] = time.perf_counter() - t0
                engines["torch.compile (inductor, static shapes)"] = lambda: compiled(x)
        for name, fn in engines.items():
            with torch.inference_mode():
                out = fn().float()
                diff = (out - reference).abs().max().item()
                agree = (out.argmax(1) == reference.argmax(1)).float().mean().item()
                t = timed(fn, args.seconds)
            rows.append((name, threads, t, diff, agree))
            print(f"{name:40s} threads={threads} median={t['median']:.4f}s max|diff|={diff:.1e} "
                  f"labels={100 * agree:.3f}%", flush=True)

    base = {th: t["median"] for name, th, t, _, _ in rows if name.endswith("(default)")}
    flags = " ".join(f for f in isa_flags() if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    lines = [
        START,
        "",
        f"Command: `python benchmarks/engines.py --preset {args.preset} --threads {args.threads} "
        f"--seconds {args.seconds:g} --precision {args.precision}{' --no-compile' if args.no_compile else ''}"
        f"{' --no-pt2' if args.no_pt2 else ''}`",
        "",
        f"Deployed VeloxSeg, preset {args.preset}, input {'×'.join(map(str, preset.input_shape))}, batch 1, eval, "
        "inference mode; "
        f"veloxseg {__version__}, torch {torch.__version__}, {cpu_name()} ({platform.machine()}; flags: "
        f"{flags or 'none of avx2/avx512f/avx512_bf16/amx'}), {torch.get_num_threads()} thread(s) last set.",
        "",
        "| engine | threads | images/s | s per forward: median (min–max), n | × default | max abs logit diff "
        "| labels = fp32 eager |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, th, t, diff, agree in rows:
        lines.append(f"| {name} | {th} | {1 / t['median']:.2f} | {t['median']:.4f} ({t['min']:.4f}–{t['max']:.4f}),"
                     f" {t['reps']} | {t['median'] / base[th]:.2f} | {diff:.1e} | {100 * agree:.2f} % |")
    for th, reason in failures.items():
        reason = reason.replace("|", "/")
        lines.append(f"| torch.compile (inductor, static shapes) | {th} | – | failed to compile: {reason} "
                     "| – | – | – |")
    if pt2_seconds:
        took = ", ".join(f"{p} {s:.0f} s" for p, s in pt2_seconds.items())
        lines += ["", f"The pt2 packages (`torch.export` with a dynamic batch, AOTInductor with freezing, thread count "
                  f"read at run time) compiled in {took}, once for every thread count."]
    if compile_seconds:
        took = ", ".join(f"{s:.0f} s at {th} thread(s)" for th, s in compile_seconds.items())
        lines += ["", f"`torch.compile` took {took} to compile before its first forward "
                  "(inductor caches compiled kernels on disk, so the first compile on a machine takes longer). "
                  "It is compiled once per thread count, with static shapes (`dynamic=False`) and a "
                  "recompile limit of 64: graph breaks "
                  "compile each level's blocks as separate frames, and with dynamo's defaults the frames past "
                  "the 8th recompile silently ran eager while a recompile switched others to dynamic shapes "
                  "(0.19 s per forward in an earlier run). The compiled graph is traced on PyTorch's default ops "
                  "(veloxseg's fast kernels call `torch.mkldnn_convolution`, which dynamo cannot trace). "
                  "Inductor's `freezing` (weights folded and prepacked for oneDNN) was no faster at 1 thread "
                  "(0.083 s)."]
    if failures:
        lines += ["", "A failed compile is reported with the first line of its error."]
        if any("stride" in reason for reason in failures.values()):
            lines[-1] += (" The stride assertion is inductor's: a convolution's real output came out "
                          "channels-last where its fake-tensor rule predicted channels-first (an inductor issue, "
                          "not investigated further).")
    for th in base:
        best = min((r for r in rows if r[1] == th), key=lambda r: r[2]["median"])  # (bf16 rows included)
        lines += ["", f"Fastest with {th} thread(s): {best[0]} ({1 / best[2]['median']:.2f} images/s)."]
    took = ", ".join(f"{s:.1f} s at {th} thread(s)" for th, s in trace_seconds.items())
    lines += ["", f"`veloxseg predict` runs the TorchScript graph by default (`--engine torch`): after "
              f"{PREDICT_TRACE_AFTER} eager calls of a window shape (a cohort, not a single volume: ski rental over "
              "the second or so it costs) the network (with the fast CPU kernels) is traced, frozen (weights, the "
              "fused q/k/v and mixer weights and the position biases become constants) and checked against eager; "
              "then TorchScript's interpreter runs it without Python in between (trace, freeze and check here: "
              f"{took}). `--engine eager` runs eager PyTorch with the fast kernels, `--engine pt2` the AOTInductor "
              "package, `--engine onnxruntime` ONNX Runtime. torch.compile is not offered by `predict`.", "", END]
    write_table(Path(args.out), "\n".join(lines))
    tmp_dir.cleanup()
    print(f"wrote {args.out}")
    return 0


START, END = "<!-- engines-table: generated by `python benchmarks/engines.py`; do not edit by hand -->", \
    "<!-- end engines-table -->"


def write_table(path: Path, table: str) -> None:
    """Put ``table`` between the markers of ``path`` (the prose around them is kept), or at its end."""
    text = path.read_text() if path.is_file() else "# Inference engines on the CPU\n"
    if START in text and END in text:
        text = text[:text.index(START)] + table + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + table + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
