"""Measurements that need a fresh process: one training step, and whole-volume prediction.

Run as ``python -m veloxseg.bench.worker '<json job>'``; prints one JSON line with the result.
A fresh process per model makes the peak-memory figure that model's alone.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from typing import Any

import torch

from ..inference.graph import PREDICT_TRACE_AFTER, FrozenGraph
from ..inference.streams import WindowStreams
from ..runtime import tune_allocator
from .measure import current_rss, num_windows, peak_rss, reset_peak_rss, sync
from .models import CompiledPackage, build_model, split_precision, training_loss


def _peak_start(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    reset_peak_rss()
    return current_rss()


def _peak_growth(device: str, base: int) -> tuple[int, int]:
    """``(peak, peak - base)`` in bytes: GPU allocations on CUDA, RSS on CPU."""
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss()
    return peak, peak - base


def train_step(job: dict[str, Any]) -> dict[str, Any]:
    """Time training steps (forward, the model's loss, backward, AdamW step) after one warm-up step.

    At least ``steps`` timed steps, and more until ``seconds`` have passed. A ``@bf16`` model trains under
    CPU autocast to bfloat16 with float32 weights (``veloxseg train --precision bf16``).
    """
    device, size, batch = job["device"], job["size"], job["batch"]
    model = build_model(job["model"], job["preset"], size, train=True).to(device)
    loss_fn = training_loss(job["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    c = job["in_channels"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, *size, generator=gen).to(device)
    y = (torch.rand(batch, 1, *size, generator=gen) > 0.9).long().to(device)

    bf16 = split_precision(job["model"])[1] == "bf16" and device == "cpu"

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y, x)
        loss.backward()
        opt.step()
        return float(loss.detach())

    base = _peak_start(device)
    loss = step()  # warm-up
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < job["steps"] or time.perf_counter() - start < job.get("seconds", 0.0):
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak, growth = _peak_growth(device, base)
    if not math.isfinite(loss):
        raise RuntimeError(f"{job['model']}: non-finite training loss")
    return {"seconds": statistics.median(times), "min": min(times), "max": max(times), "steps": len(times),
            "peak_memory": peak, "peak_memory_growth": growth}


@torch.no_grad()
def volume(job: dict[str, Any]) -> dict[str, Any]:
    """Sliding-window prediction (MONAI) of a random volume, argmax to a label map; time and peak memory."""
    from monai.inferers import sliding_window_inference

    device = job["device"]
    # as `veloxseg predict` runs it: the TorchScript graph only once enough windows pay for tracing it
    model = build_model(job["model"], job["preset"], job["size"], trace_after=PREDICT_TRACE_AFTER).to(device)
    if isinstance(model, (FrozenGraph, CompiledPackage)) and device == "cpu":  # and its windows spread over the threads
        model = WindowStreams(model)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, *job["volume"], generator=gen)
    compile_seconds = None
    if isinstance(model, CompiledPackage):  # compiled before the clock starts (predict keeps it in its cache)
        t0 = time.perf_counter()
        model(torch.zeros(1, job["volume"][0], *job["size"]))
        compile_seconds = time.perf_counter() - t0
    base = _peak_start(device)
    t0 = time.perf_counter()
    logits = sliding_window_inference(image, tuple(job["size"]), job["sw_batch_size"], model,
                                      overlap=job["overlap"], mode=job["mode"], sw_device=device, device="cpu")
    labels = logits.argmax(1).to(torch.uint8)
    sync(device)
    seconds = time.perf_counter() - t0
    peak, growth = _peak_growth(device, base)
    return {"seconds": seconds, "peak_memory": peak, "peak_memory_growth": growth,
            "windows": num_windows(job["volume"][1:], job["size"], job["overlap"]),
            "output_shape": list(labels.shape), "compile_seconds": compile_seconds}


def main(argv: list[str]) -> int:
    """Run the job given as JSON in ``argv[0]`` and print its result as one JSON line."""
    job = json.loads(argv[0])
    if job["device"] == "cpu":
        tune_allocator()  # as `veloxseg train` and `veloxseg predict` do, for every model alike
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    result = {"train": train_step, "volume": volume}[job["kind"]](job)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
