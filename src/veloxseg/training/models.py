"""One trainer for every architecture: VeloxSeg, its ablation variants and the MONAI baselines.

:class:`ModelTrainer` is :class:`~veloxseg.training.Trainer` with two hooks overridden, so the data
pipeline, split, optimiser, schedule, time budget and sliding-window validation are exactly the
same for every model and a comparison measures the architecture only:

* ``build_network`` -- ``config.model == "veloxseg"``: VeloxSeg (with ``config.variant``'s
  constructor arguments applied on top of the preset and before ``model_overrides``); otherwise the
  MONAI baseline of that name (:class:`~veloxseg.baselines.BaselineNet`).
* ``build_loss`` -- VeloxSeg: the full VeloxSeg loss (the variant's loss arguments, e.g.
  ``lambda_sdkt=0``, win over the config's); baselines: Dice+CE (nnU-Net deep supervision for
  ``dynunet``), with no reconstruction or SDKT terms.

Checkpoints record ``model_name`` (``"veloxseg"`` or the baseline's name), ``model_kwargs`` and,
for variants, ``variant``; :data:`veloxseg.checkpoint.MODEL_BUILDERS` rebuilds every one of them, so
``veloxseg predict`` and ``veloxseg evaluate`` work unchanged. At the end of a run rank 0 writes
``RUN_DIR/run_info.json``: model, variant, time budget (and how much of it was used, with every
plan), epochs and steps reached, seconds (wall and process CPU), the selection rule, parameters and
the hardware (CPU model, cores, threads, load at the start and end, OpenMP wait policy,
torch/monai versions).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError
from .budget import cpu_seconds
from .trainer import TrainConfig, Trainer

#: every ``--model`` value
MODELS: tuple[str, ...] = ("veloxseg", "unet", "unetr", "swinunetr", "segresnet", "dynunet")


def check_model(config: TrainConfig) -> None:
    """An :class:`InputError` for an unknown model or variant, or a variant of a baseline."""
    from ..variants import VARIANTS

    model = (config.model or "veloxseg").lower()
    if model not in MODELS:
        raise InputError(f"unknown model {config.model!r}; choose one of {', '.join(MODELS)}")
    if config.variant is not None:
        if model != "veloxseg":
            raise InputError(f"--variant applies to --model veloxseg only, not {model!r}")
        if config.variant.lower() not in VARIANTS:
            raise InputError(f"unknown variant {config.variant!r}; choose one of {', '.join(VARIANTS)}")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """The machine a run trained on: CPU model, logical cores, cores usable, torch threads, load, versions."""
    import monai
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1_5_15min": load, "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


class ModelTrainer(Trainer):
    """:class:`Trainer` for ``config.model`` / ``config.variant`` (see the module docstring)."""

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
        check_model(config)
        super().__init__(config, resume=resume, overwrite=overwrite)
        self.model_name = (config.model or "veloxseg").lower()
        self.variant = config.variant.lower() if config.variant else None

    @property
    def is_baseline(self) -> bool:
        return self.model_name != "veloxseg"

    def build_network(self, in_channels: list[int], out_channels: int, patch_size: list[int]) -> nn.Module:
        """:meth:`build_model_network`, then ``--init-from`` weights and ``--freeze`` (:mod:`.finetune`)."""
        source = self.read_init_source(list(patch_size))
        self.record_modality_dropout(in_channels)
        network = self.build_model_network(in_channels, out_channels, patch_size)
        if source is not None:
            self.init_weights(network, *source)
        if self.config.freeze:
            from .finetune import freeze

            count = freeze(network, self.config.freeze)
            self.log(f"--freeze {self.config.freeze}: {count:,} parameters fixed; "
                     f"{sum(p.numel() for p in network.parameters() if p.requires_grad):,} trained")
        return network

    def record_modality_dropout(self, in_channels: list[int]) -> None:
        """``--modality-dropout``: check it, keep the channel groups, and record both in the plan (checkpoints)."""
        from .modality import channel_groups

        p = float(self.config.modality_dropout or 0.0)
        self.modality_in_channels = list(in_channels)
        self.modality_groups = channel_groups(in_channels)
        if not p:
            self.plan.pop("modality_dropout", None)
            self.plan.pop("modality_groups", None)
            return
        if not 0.0 < p < 1.0:
            raise InputError(f"--modality-dropout must be in [0, 1), got {p}")
        if len(self.modality_groups) < 2:
            raise InputError(f"--modality-dropout: {self.config.dataset} has a single input channel; there is "
                             f"nothing to drop")
        self.plan["modality_dropout"] = p
        self.plan["modality_groups"] = self.modality_groups
        names = self.dataset.channel_names
        self.log(f"modality dropout {p}: per sample, each of "
                 f"{', '.join('+'.join(names[c] for c in g) for g in self.modality_groups)} zeroed with probability "
                 f"{p}, never all")

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """:meth:`Trainer.train_step`; with ``--modality-dropout`` on a batch with channel groups zeroed.

        The loss's teacher terms then count only the present channels and blocks (:meth:`VeloxSegLoss.presence`).
        """
        p = float(self.config.modality_dropout or 0.0)
        if not p:
            return super().train_step(batch)
        from .modality import blocks_present, draw_keep, drop_channels

        image = batch["image"]
        keep = draw_keep(image.shape[0], self.modality_groups, p)
        batch = {**batch, "image": drop_channels(image, keep)}
        presence = getattr(self.loss_fn, "presence", None)
        if presence is None:  # a baseline's loss has no teacher terms
            return super().train_step(batch)
        device = self.device
        with presence(keep.to(device), blocks_present(keep, self.modality_in_channels).to(device)):
            return super().train_step(batch)

    def read_init_source(self, patch_size: list[int]) -> tuple[dict[str, Any], str] | None:
        """The ``--init-from`` checkpoint and its file's SHA-256 (a new run only; a resumed one has its weights).

        A VeloxSeg source of a run without ``--preset``/``--variant`` also gives the architecture (widths,
        heads, ...: :func:`.finetune.source_architecture`), kept in ``config.model_overrides`` so that
        ``--resume`` rebuilds the same network.
        """
        if not self.config.init_from or self.resume:
            return None
        from .finetune import read_source, source_architecture

        ckpt, sha = read_source(self.config.init_from)
        self.config.init_from = str(Path(self.config.init_from).resolve())
        self.config.init_from_sha256 = sha
        if (ckpt.get("model_name") == self.model_name == "veloxseg" and not self.config.preset
                and self.variant is None):
            arch = source_architecture(ckpt, patch_size)
            self.config.model_overrides = {**arch, **self.config.model_overrides}
        return ckpt, sha

    def init_weights(self, network: nn.Module, ckpt: dict[str, Any], sha256: str) -> None:
        """Copy the matching tensors of ``ckpt`` into ``network``; log the report, write ``init_from.json``."""
        from .finetune import init_from_checkpoint, write_report

        report = init_from_checkpoint(network, self.config.init_from or "", ckpt, sha256)
        report.frozen = self.config.freeze
        self.init_report = report.summary()
        for line in report.lines():
            self.log(line)
        if self.is_main:
            write_report(report, self.output)

    def build_model_network(self, in_channels: list[int], out_channels: int, patch_size: list[int]) -> nn.Module:
        """The baseline, or VeloxSeg with the variant's arguments applied."""
        if self.is_baseline:
            from ..baselines import BaselineNet

            return BaselineNet(self.model_name, sum(in_channels), out_channels, list(patch_size))
        if self.variant is None:
            return super().build_network(in_channels, out_channels, patch_size)
        from ..variants import get_variant

        saved = self.config.model_overrides
        self.config.model_overrides = {**get_variant(self.variant).model, **saved}
        try:
            return super().build_network(in_channels, out_channels, patch_size)
        finally:
            self.config.model_overrides = saved

    def build_loss(self) -> nn.Module:
        """Dice+CE for a baseline; the VeloxSeg loss (with the variant's arguments) otherwise."""
        if self.is_baseline:
            from ..baselines import BaselineLoss

            if self.config.ds_weights is not None:  # e.g. --resume of a baseline run with --ds-weights
                raise InputError(f"--ds-weights: VeloxSeg only; this run trains {self.model_name} with its own loss")
            return BaselineLoss(self.model_name)
        from ..losses import VeloxSegLoss

        kwargs: dict[str, Any] = {"lambda_rc": self.config.lambda_rc, "lambda_sdkt": self.config.lambda_sdkt,
                                  "ds_weights": self.config.ds_weights}
        if self.variant is not None:
            from ..variants import get_variant

            kwargs.update(get_variant(self.variant).loss)
        return VeloxSegLoss(**kwargs)

    def base_payload(self) -> dict[str, Any]:
        payload = super().base_payload()
        if self.variant is not None:
            payload["variant"] = self.variant
        return payload

    def run_training(self, stop_after: int | None = None) -> dict[str, Any]:
        """:meth:`Trainer.run_training`, then ``run_info.json`` (budget, epochs reached, hardware)."""
        if self.config.budget_clock not in ("wall", "cpu"):
            raise InputError(f"budget_clock must be wall or cpu, got {self.config.budget_clock!r}")
        if not self.initialized:
            self.initialize()
        cpu0 = cpu_seconds()
        load0 = _load()
        summary = super().run_training(stop_after=stop_after)
        if self.is_main:
            self.write_run_info(summary, cpu_seconds() - cpu0, load0)
        return summary

    def write_run_info(self, summary: dict[str, Any], cpu_used: float, load_start: Any) -> None:
        """``RUN_DIR/run_info.json``: what was trained, for how long, on what, under which load."""
        from ..runtime import omp_wait_policy

        c = self.config
        budget = c.max_minutes
        budget_info = None
        if budget is not None:
            used = summary["budget_seconds_used"]
            budget_info = {"seconds": budget * 60.0, "clock": c.budget_clock, "used_seconds": used,
                           "used_fraction": round(used / (budget * 60.0), 3) if budget > 0 else None,
                           "plans": list(self.budget.plans), "recipe": dict(c.budget_recipe)}
        info = {
            "model": self.model_name, "variant": self.variant,
            "parameters": sum(p.numel() for p in self.network.parameters()),
            "time_budget_minutes": budget, "budget_clock": c.budget_clock, "epochs_max": c.epochs,
            "epochs_reached": summary["epochs"], "steps": summary["steps"],
            "stopped_by_time_budget": bool(budget is not None and summary["epochs"] < c.epochs),
            "budget": budget_info,
            "iterations_per_epoch": self.steps_per_epoch(), "batch_size": c.batch_size,
            "crops_per_volume": c.num_samples, "lr": c.lr,
            "train_wall_seconds": summary["seconds"], "process_cpu_seconds": round(cpu_used, 1),
            "selection": summary["selection"], "selection_score": summary["selection_score"],
            "best_val_dice": summary["best_val_dice"], "best_epoch": summary["best_epoch"],
            "last_val_dice": next((r["val_dice"] for r in reversed(self.history) if r.get("val_dice") is not None),
                                  None),
            "fold": c.fold, "num_folds": c.num_folds, "seed": c.seed, "patch_size": self.plan["patch_size"],
            "spacing": self.plan["spacing"], "processes": self.world_size, "device": str(self.device),
            "init_from": getattr(self, "init_report", None) or (
                {"path": c.init_from, "sha256": c.init_from_sha256, "frozen": c.freeze} if c.init_from else None),
            "modality_dropout": c.modality_dropout or None,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "hardware": {**hardware_info(), "load_average_at_start": load_start, "load_average_at_end": _load(),
                         "omp_wait_policy": omp_wait_policy()},
        }
        (self.output / "run_info.json").write_text(json.dumps(info, indent=2))
        self.log(f"run info: {self.model_name}{' / ' + self.variant if self.variant else ''}, "
                 f"{summary['epochs']} epochs, budget {budget if budget is not None else 'none'} min ({c.budget_clock}), "
                 f"{info['process_cpu_seconds']:.0f} CPU s on {info['hardware']['cpu_model']} "
                 f"({info['hardware']['torch_threads']} thread(s))")


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
