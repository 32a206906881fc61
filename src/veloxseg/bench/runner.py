"""``veloxseg bench``: every measurement for every model, side by side in one run."""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .. import __version__
from ..inference.streams import WindowStreams
from ..presets import get_preset
from ..runtime import tune_allocator
from ..summary import count_flops, count_parameters
from .measure import ceilings, num_windows, time_repeated
from .models import BF16, BF16_MODELS, DEFAULT_MODELS, PT2, CompiledPackage, build_model, check_models, split_precision

PARTS: tuple[str, ...] = ("ceiling", "throughput", "train", "volume")


def default_threads() -> int:
    """CPU cores available to this process (the thread count of training and whole-volume runs)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class BenchConfig:
    """What ``veloxseg bench`` measures, and how long (see ``veloxseg bench --help``)."""

    preset: str = "autopet"
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    device: str = "cpu"
    threads: list[int] = field(default_factory=lambda: [1])
    seconds: float = 1.0
    min_reps: int = 3
    size: list[int] | None = None
    train_batch: int = 2
    train_steps: int = 3
    rounds: int = 3
    train_threads: int = field(default_factory=default_threads)
    volume: list[int] = field(default_factory=lambda: [2, 400, 400, 300])
    volume_models: list[str] = field(default_factory=lambda: ["veloxseg"])
    overlap: float = 0.25
    sw_batch_size: int = 2
    skip: list[str] = field(default_factory=list)
    #: ``fp32`` rows always; ``bf16`` adds a bf16 row for each of :data:`~.models.BF16_MODELS` among the models
    #: (and the whole volume), and the bf16 conv ceiling
    precision: list[str] = field(default_factory=lambda: ["fp32"])

    def validate(self) -> None:
        """Check and normalise the options (one-line ``ValueError`` on a bad one)."""
        preset = get_preset(self.preset)
        self.preset = preset.name
        bad = [p for p in self.precision if p not in ("fp32", "bf16")]
        if bad or not self.precision:
            raise ValueError(f"--precision takes fp32 and/or bf16 (e.g. fp32,bf16), got {','.join(self.precision)}")
        if "fp32" not in self.precision:
            self.precision = ["fp32", *self.precision]  # the bf16 rows are read against fp32
        self.models = check_models(self.models)
        self.volume_models = check_models(self.volume_models) if self.volume_models else []
        if "bf16" in self.precision:
            self.models = check_models([*self.models, *(m + BF16 for m in self.models if m in BF16_MODELS)])
            self.volume_models = check_models([*self.volume_models, *(m + BF16 for m in self.volume_models
                                                                      if m in BF16_MODELS)])
        self.size = list(self.size or preset.patch_size)
        if len(self.size) == 1:
            self.size = self.size * 3
        if len(self.size) != 3 or min(self.size) < 1:
            raise ValueError(f"--size needs 1 or 3 positive integers, got {self.size}")
        channels = sum(preset.model["in_channels"])
        if len(self.volume) == 3:
            self.volume = [channels, *self.volume]
        if len(self.volume) != 4 or self.volume[0] != channels:
            raise ValueError(f"--volume must be DxHxW or {channels}xDxHxW for preset {preset.name!r}, "
                             f"got {self.volume}")
        if any(t < 1 for t in self.threads) or not self.threads or self.train_threads < 1:
            raise ValueError("thread counts must be positive integers")
        if self.seconds < 0 or min(self.min_reps, self.train_steps, self.train_batch, self.rounds) < 1:
            raise ValueError("--seconds must be >= 0, --min-reps, --train-steps, --train-batch and --rounds >= 1")
        if self.sw_batch_size < 1:
            raise ValueError(f"--sw-batch-size must be >= 1, got {self.sw_batch_size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"--overlap must be in [0, 1), got {self.overlap}")
        bad = [p for p in self.skip if p not in PARTS]
        if bad:
            raise ValueError(f"unknown --skip part {bad[0]!r}; choose from {', '.join(PARTS)}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")

    def command(self) -> str:
        """The explicit ``veloxseg bench`` command line that reproduces this configuration."""
        def join(xs: list[Any], sep: str = ",") -> str:
            return sep.join(str(x) for x in xs)
        models = [m for m in self.models if not m.endswith(BF16)]
        volume_models = [m for m in self.volume_models if not m.endswith(BF16)]
        parts = [f"veloxseg bench --preset {self.preset} --models {join(models)} --device {self.device}",
                 f"--threads {join(self.threads)} --seconds {self.seconds:g} --min-reps {self.min_reps} "
                 f"--rounds {self.rounds}",
                 f"--size {join(self.size or [], 'x')} --train-batch {self.train_batch}",
                 f"--train-steps {self.train_steps} --train-threads {self.train_threads}",
                 f"--volume {join(self.volume, 'x')} --overlap {self.overlap:g} --sw-batch-size {self.sw_batch_size}",
                 f"--volume-models {join(volume_models) or 'none'} --precision {join(self.precision)}"]
        if self.skip:
            parts.append(f"--skip {join(self.skip)}")
        return " ".join(parts)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, library versions and the date, for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import monai

    return {"cpu": cpu, "cores": default_threads(), "torch": torch.__version__, "monai": monai.__version__,
            "veloxseg": __version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh ``python -m veloxseg.bench.worker`` process; ``{"error": ...}`` on failure."""
    proc = subprocess.run([sys.executable, "-m", "veloxseg.bench.worker", json.dumps(job)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        if proc.returncode < 0:
            reason = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"error": reason}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tasks(cfg: BenchConfig) -> int:
    n = len(cfg.models)  # size and FLOPs
    if "ceiling" not in cfg.skip:
        n += len(cfg.threads) * (1 if "throughput" in cfg.skip else 2)
    if "throughput" not in cfg.skip:
        n += len(cfg.models) * (len(cfg.threads) + sum(t > 1 for t in cfg.threads)) * cfg.rounds
    if "train" not in cfg.skip:
        n += len(_trained(cfg.models))
    if "volume" not in cfg.skip:
        n += len(cfg.volume_models) * cfg.rounds
    return n


def _trained(models: list[str]) -> list[str]:
    """The models with a training-step row (a pt2 row trains as the eager network: not again)."""
    return [m for m in models if split_precision(m)[0] != PT2]


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Measure every model of ``cfg``; returns the JSON-able result (see docs/benchmarks.md)."""
    from tqdm import tqdm

    cfg.validate()
    assert cfg.size is not None
    if cfg.device == "cpu":
        tune_allocator()  # what `veloxseg train` and `predict` run with (veloxseg.runtime); every model alike
    preset = get_preset(cfg.preset)
    in_channels = sum(preset.model["in_channels"])
    input_shape = (1, in_channels, *cfg.size)
    bar = tqdm(total=_tasks(cfg), disable=not progress, unit="task", file=sys.stderr)

    def task(desc: str) -> None:
        bar.set_description(desc)

    result: dict[str, Any] = {"config": asdict(cfg), "command": cfg.command(), "machine": machine_info(),
                              "ceiling": {}, "models": {}}
    previous_threads = torch.get_num_threads()
    try:
        if "ceiling" not in cfg.skip:
            for t in cfg.threads:
                task(f"ceiling, {t} thread(s)")
                torch.set_num_threads(t)
                result["ceiling"][str(t)] = ceilings(cfg.seconds, cfg.min_reps, cfg.device,
                                                     bf16="bf16" in cfg.precision)
                bar.update()
        for name in cfg.models:
            task(f"{name}: size and FLOPs")
            torch.set_num_threads(max(cfg.threads))
            model = build_model(name, cfg.preset, cfg.size).to(cfg.device)
            flops, out_shape = count_flops(model, input_shape)
            result["models"][name] = {"params": count_parameters(model), "flops": flops,
                                      "input_shape": list(input_shape), "output_shape": list(out_shape),
                                      "throughput": {}, "train": None, "volume": None}
            del model
            bar.update()
        # inference timing in rounds over all models, keeping each model's best round: a slow spell of
        # the machine then hits one round of one model, not the figure (run-to-run reproducibility).
        # VeloxSeg is timed again right before every other model, and each model's time ratio is the
        # median over rounds of its ratio to that adjacent VeloxSeg time: both see the same machine state.
        ref = "veloxseg" if "veloxseg" in cfg.models else None
        timed = "throughput" not in cfg.skip
        ref_model = build_model(ref, cfg.preset, cfg.size).to(cfg.device) if ref and timed else None
        x = torch.randn(input_shape, device=cfg.device)

        def forward_time(model: torch.nn.Module) -> dict[str, Any]:
            with torch.inference_mode():  # as `veloxseg predict` runs every model
                return time_repeated(lambda: model(x), cfg.seconds, cfg.min_reps, device=cfg.device)

        for rnd in range(cfg.rounds if timed else 0):
            for name in cfg.models:
                model = ref_model if name == ref else build_model(name, cfg.preset, cfg.size).to(cfg.device)
                for t in cfg.threads:
                    task(f"{name}: inference, {t} thread(s), round {rnd + 1}/{cfg.rounds}")
                    torch.set_num_threads(t)
                    reference = forward_time(ref_model) if ref_model is not None and name != ref else None
                    if reference is not None:
                        _record(result["models"][ref]["throughput"], str(t), reference)
                    timing = forward_time(model)  # (its warm-up compiles a pt2 row's package)
                    if isinstance(model, CompiledPackage):
                        result["models"][name]["compile_seconds"] = model.engine.compile_seconds
                    ratio = None if reference is None else timing["median"] / reference["median"]
                    _record(result["models"][name]["throughput"], str(t), timing, ratio)
                    bar.update()
                    if t > 1:  # t windows at once, one per thread, as `veloxseg predict` spreads a batch
                        task(f"{name}: {t} windows side by side, round {rnd + 1}/{cfg.rounds}")
                        streamed, batch = WindowStreams(model), x.expand(t, *x.shape[1:]).contiguous()
                        with torch.inference_mode():
                            timing = time_repeated(lambda: streamed(batch), cfg.seconds, cfg.min_reps,
                                                   device=cfg.device)
                        _record(result["models"][name].setdefault("streams", {}), str(t), timing)
                        del streamed, batch
                        bar.update()
                if name != ref:
                    del model
                gc.collect()
        del ref_model
        worker_base = {"preset": cfg.preset, "size": cfg.size, "device": cfg.device, "threads": cfg.train_threads,
                       "in_channels": in_channels}
        if "train" not in cfg.skip:
            for name in _trained(cfg.models):
                task(f"{name}: training step")
                job = dict(worker_base, kind="train", model=name, batch=cfg.train_batch, steps=cfg.train_steps,
                           seconds=cfg.seconds)
                result["models"][name]["train"] = run_worker(job)
                bar.update()
        if "volume" not in cfg.skip:
            for name in cfg.volume_models:
                job = dict(worker_base, kind="volume", model=name, volume=cfg.volume, overlap=cfg.overlap,
                           mode="gaussian", sw_batch_size=cfg.sw_batch_size)
                runs = []
                for rnd in range(cfg.rounds):  # the fastest of the rounds, each in a fresh process
                    task(f"{name}: whole volume, round {rnd + 1}/{cfg.rounds}")
                    runs.append(run_worker(job))
                    bar.update()
                ok = [r for r in runs if "error" not in r]
                vol = dict(min(ok, key=lambda r: r["seconds"]), round_seconds=[r["seconds"] for r in ok]) \
                    if ok else runs[0]
                result["models"].setdefault(name, {"throughput": {}, "train": None})["volume"] = vol
        if "ceiling" not in cfg.skip and "throughput" not in cfg.skip:
            for t in cfg.threads:  # again after the models: the ceiling is the better of the two runs
                task(f"ceiling again, {t} thread(s)")
                torch.set_num_threads(t)
                again = ceilings(cfg.seconds, cfg.min_reps, cfg.device, bf16="bf16" in cfg.precision)
                for kind, best in result["ceiling"][str(t)].items():
                    best["runs_gflops"] = [best["gflops"], again[kind]["gflops"]]
                    if again[kind]["gflops"] > best["gflops"]:
                        best.update(gflops=again[kind]["gflops"], seconds=again[kind]["seconds"])
                bar.update()
    finally:
        torch.set_num_threads(previous_threads)
        bar.close()
    derive(result)
    return result


def _record(throughput: dict[str, Any], threads: str, timing: dict[str, Any], ratio: float | None = None) -> None:
    """Add one round's ``timing`` (and its ratio to the adjacent VeloxSeg time); the fastest round is the figure."""
    old = throughput.get(threads, {})
    entry = dict(timing if not old or timing["median"] < old["median"] else old)
    entry["round_medians"] = old.get("round_medians", []) + [timing["median"]]
    if ratio is not None:
        entry["ratio_rounds"] = old.get("ratio_rounds", []) + [ratio]
    throughput[threads] = entry


def derive(result: dict[str, Any]) -> None:
    """Add the derived figures: images/s, GFLOP/s, fractions of the ceilings, ratios to VeloxSeg."""
    models = result["models"]
    ref = models.get("veloxseg")
    cfg = result["config"]
    windows = num_windows(cfg["volume"][1:], cfg["size"], cfg["overlap"])
    result["volume_windows"] = windows
    for name, entry in models.items():
        for t, timing in entry.get("throughput", {}).items():
            timing["images_per_s"] = 1.0 / timing["median"]
            if entry.get("flops"):
                timing["gflops_per_s"] = entry["flops"] / timing["median"] / 1e9
                ceil = result["ceiling"].get(t)
                if ceil:  # a bf16 row against the bf16 conv ceiling
                    conv = ceil.get("conv_bf16", ceil["conv"]) if split_precision(name)[1] == "bf16" else ceil["conv"]
                    timing["conv_fraction"] = timing["gflops_per_s"] / conv["gflops"]
                    timing["matmul_fraction"] = timing["gflops_per_s"] / ceil["matmul"]["gflops"]
            if timing.get("ratio_rounds"):  # per round, against VeloxSeg timed right before
                timing["time_vs_veloxseg"] = statistics.median(timing["ratio_rounds"])
            elif ref and t in ref.get("throughput", {}):
                timing["time_vs_veloxseg"] = timing["median"] / ref["throughput"][t]["median"]
        tp = entry.get("throughput", {})
        if "1" in tp and "2" in tp:
            entry["scaling_2_vs_1"] = tp["1"]["median"] / tp["2"]["median"]
        for t, timing in entry.get("streams", {}).items():  # a call computes t windows
            timing["images_per_s"] = int(t) / timing["median"]
            if "1" in tp:
                timing["vs_1_thread"] = timing["images_per_s"] * tp["1"]["median"]
        train = entry.get("train")
        if train and "error" not in train and ref and ref.get("train") and "error" not in ref["train"]:
            train["time_vs_veloxseg"] = train["min"] / ref["train"]["min"]  # the fastest step: least disturbed
        t_work = str(cfg["train_threads"])
        if entry.get("volume") is None and t_work in tp:
            entry["volume_estimate_seconds"] = windows * tp[t_work]["median"]
