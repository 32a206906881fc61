"""The VeloxSeg trainer, modelled on nnU-Net v2's ``nnUNetTrainer``.

One object runs the whole job; every step is a method a subclass can override:
``initialize`` (dataset, plan, split, network, loss, optimizer, data loaders) ->
``run_training`` -> per epoch ``on_epoch_start`` / ``train_step`` / ``on_epoch_end`` /
``validate`` -> ``save_checkpoints``. Checkpoints are self-contained (see
:mod:`veloxseg.checkpoint`). Under ``torchrun`` the network is wrapped in
``DistributedDataParallel``, the training cases are sharded with a ``DistributedSampler``, the
validation cases are split between ranks, metrics are summed over ranks and only rank 0 writes.

With a time budget (``max_minutes``) the number of epochs is planned again after every epoch from
the measured costs (:mod:`.budget`, rank 0 decides) and the learning rate follows the plan step by
step (:mod:`.schedule`); ``checkpoint_best.pt`` holds the epoch the selection rule picks
(:mod:`.selection`).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt_io
from ..errors import InputError, VeloxSegError
from ..runtime import tune_allocator
from . import distributed as dist_utils
from . import selection as select
from .budget import BudgetTracker
from .logging import TensorBoardLogger, plot_curves, write_metrics_csv
from .recipes import Recipe, get_recipe
from .schedule import WarmupCosine, apply_current_lr, default_warmup


@dataclass
class TrainConfig:
    """Everything ``veloxseg train`` accepts; the defaults are veloxseg's recipe (docs/training.md)."""

    dataset: str
    output: str
    preset: str | None = None
    epochs: int = 300
    warmup_epochs: int | None = None  # None: 10 for 300 epochs, scaled for shorter runs
    patch_size: list[int] | None = None
    spacing: list[float] | None = None
    batch_size: int = 2  # volumes per step (each gives num_samples crops)
    num_samples: int = 2
    lr: float = 2.5e-4
    min_lr: float = 6e-6
    weight_decay: float = 0.01
    lambda_rc: float = 0.5
    lambda_sdkt: float = 2.0
    #: loss weights of the full-resolution output and the deep-supervision outputs (finest first), normalised;
    #: None: all equal, the paper's [1, 1, 1, 1]
    ds_weights: list[float] | None = None
    fold: int | None = None
    val_fraction: float = 0.2
    val_every: int = 5
    sw_overlap: float = 0.25
    sw_batch_size: int = 2
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    amp: bool = True  # only on CUDA
    precision: str = "fp32"  # "bf16": on a CPU, autocast to bfloat16 with float32 master weights (CUDA: see amp)
    cache: str = "memory"  # memory | disk | none
    num_workers: int = 0
    iterations: int | None = None  # optimizer steps per epoch; None: one pass over the training cases
    progress: bool = True
    max_minutes: float | None = None  # time budget: the run (and its lr schedule) is fitted to it (budget.py)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model: str = "veloxseg"  # or a MONAI baseline (veloxseg.baselines.BASELINES); see training.models
    variant: str | None = None  # an ablation variant of VeloxSeg (veloxseg.variants.VARIANTS)
    num_folds: int = 5  # folds of the k-fold split that ``fold`` picks from
    budget_clock: str = "wall"  # max_minutes of wall-clock time, or "cpu": of this process's CPU time
    selection: str = "auto"  # checkpoint_best.pt: auto | ema | best | last (training.selection)
    patch_voxels: int | None = None  # most voxels of a patch the plan chooses (None: data.plan's default)
    budget_recipe: dict[str, Any] = field(default_factory=dict)  # what --time-budget chose (budget_recipe.py)
    recipe: str = "default"  # schedule, augmentation, clipping, precision: veloxseg.training.recipes ("authors")
    split: str = "veloxseg"  # "authors": their rule, sorted cases 60 % train / 20 % validation (data.split)
    # the next four are implemented by ModelTrainer (what veloxseg train runs)
    init_from: str | None = None  # start from this checkpoint's weights (name and shape match; training.finetune)
    init_from_sha256: str | None = None  # SHA-256 of init_from's file, recorded when the run starts
    freeze: str | None = None  # "encoder": train the decoder and heads only
    modality_dropout: float = 0.0  # per sample, zero each channel group with this probability (training.modality)
    splits: str | None = None  # nnU-Net splits_final.json to take fold ``fold`` from (data.split.read_splits)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``dataclasses.asdict``, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise InputError(f"--device must be cpu, cuda or auto, got {name!r}")
    return torch.device("cpu")


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (and CUDA) RNG states as plain data (tuples, ints, tensors)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return plain_rng_state(state)


def plain_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with numpy's legacy tuple turned into a dict of plain values and a tensor."""
    out = dict(state)
    npst = state.get("numpy")
    if isinstance(npst, tuple):  # ('MT19937', uint32 keys, pos, has_gauss, cached_gaussian)
        out["numpy"] = {"bit_generator": str(npst[0]), "key": torch.from_numpy(np.asarray(npst[1], dtype=np.int64)),
                        "pos": int(npst[2]), "has_gauss": int(npst[3]), "gauss": float(npst[4])}
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["bit_generator"], np.asarray(npst["key"], dtype=np.int64).astype(np.uint32), npst["pos"],
                npst["has_gauss"], npst["gauss"])
    np.random.set_state(npst)
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingDiverged(VeloxSegError):
    """Non-finite loss or gradients: training stops; no non-finite weights are saved."""

    def __init__(self, what: str) -> None:
        super().__init__(f"training diverged: {what}; the last good weights are in checkpoint_best.pt / "
                         f"checkpoint_last.pt if any were saved. Try a lower --lr (e.g. half), or check the "
                         f"labels and intensities of the training cases")


class RepeatDataset(torch.utils.data.Dataset):
    """``dataset`` repeated ``times`` times, so an epoch can hold more steps than cases (small datasets)."""

    def __init__(self, dataset: Any, times: int) -> None:
        self.dataset = dataset
        self.times = max(1, int(times))

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % len(self.dataset)]


class Trainer:
    """Train VeloxSeg on an nnU-Net v2 raw dataset; see the module docstring for the hooks."""

    model_name = "veloxseg"

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.output = Path(config.output)
        self.device_kind = "cuda" if (config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())) else "cpu"
        self.rank, self.world_size, self.local_rank = dist_utils.init(self.device_kind)
        self.device = resolve_device(config.device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        get_recipe(config.recipe)  # an unknown recipe or split rule fails before any work
        if config.split not in ("veloxseg", "authors"):
            raise InputError(f"unknown split rule {config.split!r}; choose veloxseg or authors")
        if config.precision not in ("fp32", "bf16"):
            raise InputError(f"--precision must be fp32 or bf16, got {config.precision!r}")
        self.cpu_bf16 = config.precision == "bf16" and self.device.type == "cpu"
        self.start_epoch = 0
        self._epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.initialized = False
        self._bar: Any = None

    # ------------------------------------------------------------------ set-up hooks
    def log(self, msg: str) -> None:
        """Print ``msg`` (rank 0 only) and append it to ``RUN_DIR/training_log.txt``."""
        if not self.is_main:
            return
        if getattr(self, "_bar", None) is not None:
            self._bar.write(msg)
        else:
            print(msg, flush=True)
        with open(self.output / "training_log.txt", "a") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")

    def set_threads(self) -> None:
        """``--threads``, else the cores divided between the processes of this machine."""
        threads = self.config.threads
        if threads is None and self.world_size > 1 and self.device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
            threads = max(1, (os.cpu_count() or 1) // local)
        if threads:
            torch.set_num_threads(int(threads))
        if self.device.type == "cpu":
            tune_allocator()  # large activations stay in the heap: ~10 % faster steps (veloxseg.runtime)

    def load_resume_checkpoint(self) -> dict[str, Any]:
        """The ``checkpoint_last.pt`` to resume from (an :class:`InputError` if there is none)."""
        path = self.output / "checkpoint_last.pt"
        ckpt = ckpt_io.load_checkpoint(path, map_location="cpu")
        if "training_state" not in ckpt:
            raise InputError(f"{path}: has no training state to resume from")
        return ckpt

    def build_plan(self) -> tuple[Any, dict[str, Any]]:
        """Validate the dataset, compute its fingerprint (rank 0) and the plan."""
        from ..data.dataset import validate_dataset
        from ..data.plan import compute_fingerprint, make_plan

        ds = validate_dataset(self.config.dataset)
        spacing, patch = self.config.spacing, self.config.patch_size
        if self.config.preset:
            from ..presets import get_preset

            preset = get_preset(self.config.preset)
            spacing = spacing or list(preset.spacing)
            patch = patch or list(preset.patch_size)
        plan = None
        if self.is_main:
            fingerprint = compute_fingerprint(ds)
            limit = {"budget": int(self.config.patch_voxels)} if self.config.patch_voxels else {}
            plan = make_plan(ds, fingerprint, spacing=spacing, patch_size=patch, **limit)
        plan = dist_utils.broadcast_object(plan)
        return ds, plan

    def build_network(self, in_channels: list[int], out_channels: int, patch_size: list[int]) -> nn.Module:
        """The network to train (full VeloxSeg with texture teachers and deep supervision)."""
        from ..networks import VeloxSeg

        kwargs: dict[str, Any] = {}
        if self.config.preset:
            from ..presets import get_preset

            kwargs.update(get_preset(self.config.preset).model)
        kwargs.update(self.config.model_overrides)
        if "in_channels" in kwargs and sum(kwargs["in_channels"]) != sum(in_channels):
            raise InputError(f"preset {self.config.preset!r} expects {sum(kwargs['in_channels'])} channels, "
                             f"the dataset has {sum(in_channels)}")
        kwargs.setdefault("in_channels", in_channels)
        kwargs["out_channels"] = out_channels
        kwargs["img_size"] = list(patch_size)
        try:
            return VeloxSeg(**kwargs)
        except ValueError:
            if "window_sizes" not in kwargs:
                raise
            kwargs.pop("window_sizes")  # the preset's windows do not fit this patch: derive them
            return VeloxSeg(**kwargs)

    def build_loss(self) -> nn.Module:
        """The full VeloxSeg loss."""
        from ..losses import VeloxSegLoss

        return VeloxSegLoss(lambda_rc=self.config.lambda_rc, lambda_sdkt=self.config.lambda_sdkt,
                            ds_weights=self.config.ds_weights)

    @property
    def recipe(self) -> Recipe:
        """The training recipe (``--recipe``): schedule, augmentation, clipping, precision."""
        return get_recipe(self.config.recipe)

    def configure_optimizers(self) -> None:
        """AdamW with the recipe's per-epoch warm-up and cosine decay (and its precision)."""
        c = self.config
        self.use_amp = self.use_amp and self.recipe.amp
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        warmup = c.warmup_epochs if c.warmup_epochs is not None else default_warmup(c.epochs)
        self.scheduler = self.recipe.build_scheduler(self.optimizer, c.epochs, warmup, c.lr, c.min_lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def build_dataloaders(self) -> None:
        """Cached training data with random crops/rotations/flips, and cached validation cases."""
        from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
        from monai.transforms import Compose
        from torch.utils.data import DistributedSampler

        from ..data.preprocessing import training_transforms, validation_transforms

        cases = {c.name: c.as_dict() for c in self.dataset.cases}
        train = [cases[n] for n in self.split["train"]]
        val = [cases[n] for n in self.split["val"]][self.rank::self.world_size]
        recipe = self.recipe
        det, rnd = training_transforms(self.plan, num_samples=self.config.num_samples, flips=recipe.flips,
                                       rotate_about=2 if recipe.rotation_axis == "last" else None)
        self.train_random = rnd
        transform = Compose([*det.transforms, *rnd.transforms])
        cache = self.config.cache
        quiet = not self.progress_enabled()
        if cache == "memory":
            # one caching thread: loading several multi-file cases in parallel threads occasionally
            # returned a case with a channel missing (MONAI/nibabel loading is not thread-safe)
            self.train_ds = CacheDataset(train, transform, num_workers=0, progress=not quiet, copy_cache=True)
        elif cache == "disk":
            self.train_ds = PersistentDataset(train, transform, cache_dir=self.output / "cache")
        else:
            self.train_ds = Dataset(train, transform)
        if self.config.iterations:  # enough repeats for `iterations` steps on every rank (train_epoch stops there)
            needed = self.config.iterations * self.config.batch_size * self.world_size
            self.train_ds = RepeatDataset(self.train_ds, math.ceil(needed / max(1, len(train))))
        self.sampler = DistributedSampler(self.train_ds, num_replicas=self.world_size, rank=self.rank,
                                          shuffle=True, seed=self.config.seed, drop_last=False)
        self.train_loader = DataLoader(self.train_ds, batch_size=self.config.batch_size, sampler=self.sampler,
                                       num_workers=self.config.num_workers,
                                       pin_memory=self.device.type == "cuda")
        vt = validation_transforms(self.plan)
        self.val_ds = CacheDataset(val, vt, progress=False) if cache == "memory" and val else Dataset(val, vt)

    def initialize(self) -> None:
        """Everything before the first epoch: plan, split, network, loss, optimizer, data, resume state."""
        from ..data.dataset import validate_dataset
        from ..data.plan import default_modalities
        from ..data.split import authors_split, split_cases

        from ..extras import TRAIN_MODULES, require

        require(TRAIN_MODULES, "veloxseg train", "train")  # before anything is written
        # rank 0 decides before anything is written; the other ranks follow its verdict
        problem = self.check_run_folder() if self.is_main else None
        problem = dist_utils.broadcast_object(problem)
        if problem:
            raise InputError(problem)
        self.output.mkdir(parents=True, exist_ok=True)
        self.set_threads()
        resume_ckpt = self.load_resume_checkpoint() if self.resume else None
        if resume_ckpt is not None:
            state = resume_ckpt["training_state"]
            self.dataset = validate_dataset(self.config.dataset)
            self.plan = resume_ckpt["plan"]
            self.split = state["split"]
            if list(self.dataset.channel_names) != list(resume_ckpt["channel_names"]):
                raise InputError(f"{self.config.dataset}: channels {self.dataset.channel_names} differ from the "
                                 f"checkpoint's {resume_ckpt['channel_names']}")
            self.check_same_cases(resume_ckpt)
        else:
            self.dataset, self.plan = self.build_plan()
            names = [c.name for c in self.dataset.cases]
            if self.config.splits:  # a fold of a splits file (nnU-Net's splits_final.json; --fold all)
                from ..data.split import split_from_file

                train, val = split_from_file(self.config.splits, names, self.config.fold)
            elif self.config.split == "authors":
                train, val = authors_split(names)
            else:
                train, val = split_cases(names, self.config.fold, self.config.val_fraction,
                                         num_folds=self.config.num_folds)
            self.split = {"train": train, "val": val}
        if not self.split["train"]:
            raise InputError(f"{self.config.dataset}: no training cases left after the split")
        self.labels = dict(self.dataset.labels)
        random.seed(self.config.seed)
        np.random.seed(self.config.seed)
        torch.manual_seed(self.config.seed)  # same initial weights on every rank and every run
        if resume_ckpt is not None and resume_ckpt.get("model_name") == "veloxseg":
            # the network choices the run was started with (a run older than one of them: its old value)
            from ..networks.veloxseg import LEGACY_KWARGS

            kept = {k: resume_ckpt["model_kwargs"].get(k, v) for k, v in LEGACY_KWARGS.items()}
            self.config.model_overrides = {**self.config.model_overrides, **kept}
        self.network = self.build_network(default_modalities(self.dataset.channel_names), self.dataset.num_classes,
                                          self.plan["patch_size"]).to(self.device)
        self.loss_fn = self.build_loss()
        self.configure_optimizers()
        if resume_ckpt is not None:
            self.restore(resume_ckpt)
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = DDP(self.network, device_ids=ids)
        else:
            self.model = self.network
        if self.is_main:
            (self.output / "plan.json").write_text(json.dumps(self.plan, indent=2))
            (self.output / "splits.json").write_text(json.dumps(self.split, indent=2))
            (self.output / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
            self.tb = TensorBoardLogger(self.output / "tensorboard")
        self.build_dataloaders()
        self.initialized = True

    def check_run_folder(self) -> str | None:
        """Why ``output`` may not be used (another run's files, without ``--resume``/``--overwrite``), or None."""
        run_files = [n for n in ("checkpoint_last.pt", "checkpoint_best.pt", "config.json", "metrics.csv")
                     if (self.output / n).exists()]
        if self.output.exists() and not self.output.is_dir():
            return f"{self.output}: exists and is not a folder"
        if self.resume:
            return None if (self.output / "checkpoint_last.pt").exists() else \
                f"{self.output / 'checkpoint_last.pt'}: not found; nothing to --resume"
        if run_files and not self.overwrite:
            return (f"{self.output}: already holds a training run ({', '.join(run_files)}); pass --resume to "
                    f"continue it, --overwrite to replace it, or choose another --output")
        return None

    def check_same_cases(self, ckpt: dict[str, Any]) -> None:
        """A resumed run's dataset must hold the cases it was split into: an error naming the difference."""
        split = ckpt["training_state"]["split"]
        before = set(split["train"]) | set(split["val"])
        now = {c.name for c in self.dataset.cases}
        gone, new = sorted(before - now), sorted(now - before)
        if gone or new:
            parts = ([f"removed {', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''}"] if gone else []) + \
                    ([f"added {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}"] if new else [])
            raise InputError(f"{self.config.dataset}: the dataset changed since the run started ({'; '.join(parts)}); "
                             f"--resume continues the same cases: restore them, or start a new run")

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Load weights and the full training state of a "last" checkpoint."""
        state = ckpt["training_state"]
        self.network.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best_metric = state.get("best_metric")
        self.best_epoch = state.get("best_epoch")
        set_rng_state(state["rng"])
        self.log(f"resumed from {self.output / 'checkpoint_last.pt'} after epoch {self.start_epoch}")

    # ------------------------------------------------------------------ training hooks
    def progress_enabled(self) -> bool:
        """Progress bar on rank 0 only, when asked for and stdout is a terminal."""
        return bool(self.config.progress and self.is_main and sys.stdout.isatty())

    def seed_epoch(self, epoch: int) -> None:
        """Seed every RNG from (seed, epoch, rank), so a resumed run draws what an uninterrupted one would."""
        s = (self.config.seed * 1_000_003 + epoch * 7919 + self.rank * 104_729) % (2**31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        self.train_random.set_random_state(seed=s)
        self.sampler.set_epoch(epoch)

    def on_epoch_start(self, epoch: int) -> None:
        """Seed, switch to train mode."""
        self.seed_epoch(epoch)
        self.model.train()

    def autocast(self) -> torch.autocast:
        """Mixed precision of the forward: CUDA AMP (``amp``), or bfloat16 on a CPU (``precision="bf16"``); the
        weights, gradients and optimizer state stay float32."""
        if self.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=self.use_amp)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on a batch; returns the (local) loss parts."""
        x = batch["image"].to(self.device, non_blocking=True).float()
        y = batch["label"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.model(x)
            parts = self.loss_fn(out, y, x)
        if not torch.isfinite(parts.total.detach()):
            raise TrainingDiverged(f"the loss became {float(parts.total.detach())} at epoch {self._epoch + 1}")
        self.scaler.scale(parts.total).backward()
        self.scaler.unscale_(self.optimizer)
        if self.recipe.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(self.network.parameters(), self.recipe.grad_clip)
        else:  # the authors' recipe: the norm is measured (for the divergence check), not clipped
            norm = nn.utils.get_total_norm([p.grad for p in self.network.parameters() if p.grad is not None])
        if not self.use_amp and not torch.isfinite(norm):  # with AMP the scaler skips such steps itself
            raise TrainingDiverged(f"the gradients became non-finite at epoch {self._epoch + 1}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"train_loss": float(parts.total.detach()), "seg_loss": float(parts.segmentation),
                "rc_loss": float(parts.reconstruction), "sdkt_loss": float(parts.sdkt)}

    def steps_per_epoch(self) -> int:
        """Optimizer steps of a full epoch: ``iterations``, else one pass over the training cases."""
        return min(len(self.train_loader), self.config.iterations or len(self.train_loader))

    def train_epoch(self, epoch: int, steps: int | None = None) -> dict[str, float]:
        """The steps of one epoch (``steps``, else :meth:`steps_per_epoch`); losses averaged over steps and ranks.

        A run with a time budget steps its learning-rate schedule after every optimizer step.
        """
        self._epoch = epoch
        self.on_epoch_start(epoch)
        limit = self.steps_per_epoch() if steps is None else steps
        cosine = self.cosine()
        per_step = bool(cosine is not None and cosine.per_step)
        sums: dict[str, float] = {}
        n = 0
        for batch in self.train_loader:
            if n >= limit:
                break
            parts = self.train_step(batch)
            if per_step:
                self.scheduler.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if self._bar is not None:
                self._bar.update(1)
                self._bar.set_postfix(epoch=epoch + 1, loss=f"{parts['train_loss']:.4f}", refresh=False)
        keys = sorted(sums)
        totals = dist_utils.all_reduce_sum([sums[k] for k in keys] + [float(n)], self.device)
        count = max(totals[-1], 1.0)
        return {k: totals[i] / count for i, k in enumerate(keys)}

    @torch.no_grad()
    def validate(self) -> dict[str, float | None]:
        """Sliding-window Dice on the held-out cases (summed over ranks): mean and per label."""
        from monai.inferers import sliding_window_inference
        from monai.metrics import DiceMetric

        net = self.network
        net.eval()
        classes = self.dataset.num_classes
        metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        sums = [0.0] * (classes - 1)
        counts = [0.0] * (classes - 1)
        for item in self.val_ds:
            x = torch.as_tensor(item["image"])[None].to(self.device).float()
            y = torch.as_tensor(item["label"])[None].to(self.device).long()
            with self.autocast():
                logits = sliding_window_inference(x, self.plan["patch_size"], self.config.sw_batch_size, net,
                                                  overlap=self.config.sw_overlap, mode="gaussian")
            pred = logits.float().argmax(1, keepdim=True)
            onehot_p = torch.nn.functional.one_hot(pred[:, 0], classes).permute(0, 4, 1, 2, 3)
            onehot_y = torch.nn.functional.one_hot(y[:, 0].clamp(0, classes - 1), classes).permute(0, 4, 1, 2, 3)
            dice = metric(onehot_p, onehot_y)[0]
            metric.reset()
            for c in range(classes - 1):
                v = float(dice[c])
                if not math.isnan(v):
                    sums[c] += v
                    counts[c] += 1
        totals = dist_utils.all_reduce_sum(sums + counts, self.device)
        sums, counts = totals[: classes - 1], totals[classes - 1:]
        names = {v: k for k, v in self.labels.items()}
        result: dict[str, float | None] = {}
        per = []
        for c in range(classes - 1):
            d = sums[c] / counts[c] if counts[c] else None
            result[f"val_dice_{names.get(c + 1, c + 1)}"] = d
            if d is not None:
                per.append(d)
        result["val_dice"] = sum(per) / len(per) if per else None
        return result

    # ------------------------------------------------------------------ checkpoints
    def base_payload(self) -> dict[str, Any]:
        """Keys common to the best and last checkpoints."""
        return {"format": ckpt_io.FORMAT, "format_version": ckpt_io.FORMAT_VERSION, "model_name": self.model_name,
                "labels": dict(self.labels), "channel_names": list(self.dataset.channel_names),
                "plan": self.plan, "versions": ckpt_io.versions()}

    def save_last(self, epoch_done: int) -> None:
        """``checkpoint_last.pt``: full network and everything needed to resume."""
        payload = self.base_payload()
        payload.update(model_kwargs=dict(self.network.hparams), state_dict=self.network.state_dict())
        payload["training_state"] = {
            "epoch": epoch_done, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_amp else None, "rng": rng_state(),
            "history": self.history, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "split": self.split, "config": asdict(self.config), "world_size": self.world_size,
        }
        ckpt_io.save_checkpoint(self.output / "checkpoint_last.pt", payload)

    def save_best(self, epoch_done: int, metrics: dict[str, Any]) -> None:
        """``checkpoint_best.pt``: the deployable network (teachers and deep-supervision heads stripped)."""
        deployed = self.network.for_inference()
        payload = self.base_payload()
        payload.update(model_kwargs=dict(deployed.hparams), state_dict=deployed.state_dict(),
                       metrics={"epoch": epoch_done, **metrics}, split=self.split)
        ckpt_io.save_checkpoint(self.output / "checkpoint_best.pt", payload)
        self.network.train()

    # ------------------------------------------------------------------ the loop
    def cosine(self) -> WarmupCosine | None:
        """The :class:`WarmupCosine` behind the lr scheduler (None for another schedule)."""
        fn = (getattr(self.scheduler, "lr_lambdas", None) or [None])[0]
        return fn if isinstance(fn, WarmupCosine) else None

    def start_budget(self) -> None:
        """Before the first epoch of a budgeted run: count the lr schedule in steps, start the budget's clock.

        The warm-up is ``warmup_epochs`` epochs (one when not given); a resumed run continues the
        budget from what its epochs had used (``budget_seconds`` in the history).
        """
        c = self.config
        steps = self.steps_per_epoch()
        cosine = self.cosine()
        if cosine is not None and not cosine.per_step:
            if self.start_epoch:
                raise InputError(f"{self.output}: this run was started without --time-budget; "
                                 f"resume it without one")
            cosine.to_steps(steps, steps * (c.warmup_epochs if c.warmup_epochs is not None else 1))
            apply_current_lr(self.scheduler)
        spent = next((float(r["budget_seconds"]) for r in reversed(self.history)
                      if r.get("budget_seconds") is not None), 0.0)
        self.budget = BudgetTracker(float(c.max_minutes), c.budget_clock, spent)  # type: ignore[arg-type]
        self._next_steps = steps
        self._planned_steps: int | None = None

    def steps_done(self, epochs_done: int) -> int:
        """Optimizer steps taken so far."""
        cosine = self.cosine()
        if cosine is not None and cosine.per_step:
            return int(self.scheduler.last_epoch)
        return epochs_done * self.steps_per_epoch()

    def fit_time_budget(self, epoch: int, validating_now: bool = False) -> None:
        """With ``max_minutes``: fit the rest of the run to the budget left (see :mod:`.budget`).

        Called after every epoch's training steps; rank 0 decides and every rank follows. The plan
        may grow as well as shrink (up to ``epochs``); the run ends when not even a shorter final
        epoch fits, and the lr schedule is re-fitted to the new length without a jump.
        """
        c = self.config
        plan = None
        if self.is_main:
            plan = self.budget.plan(epoch + 1, self.steps_done(epoch + 1), self.steps_per_epoch(), c.val_every,
                                    bool(self.split["val"]), c.epochs, validating_now)
        plan = dist_utils.broadcast_object(plan)
        budget, spent = self.budget.budget, self.budget.spent()
        if plan.next_steps == 0:
            self.epochs = epoch + 1
            if epoch + 1 < c.epochs:
                self.log(f"time budget: {spent:.0f} of {budget:.0f} {c.budget_clock} s used; the next epoch "
                         f"would not fit, so epoch {epoch + 1} is the last")
            return
        before = self._planned_steps
        self.epochs, self._next_steps, self._planned_steps = plan.total_epochs, plan.next_steps, plan.total_steps
        cosine = self.cosine()
        if cosine is not None and cosine.per_step:
            cosine.refit(int(self.scheduler.last_epoch), plan.total_steps)
        if self._bar is not None:
            self._bar.total = plan.total_steps
        if before is None or abs(plan.total_steps - before) > 0.1 * before:
            self.budget.plans.append({"after_epoch": epoch + 1, "spent_seconds": round(spent, 1),
                                      "step_seconds": round(self.budget.step_cost(), 4),
                                      "validation_seconds": round(self.budget.val_cost(), 3),
                                      "planned_epochs": plan.total_epochs, "planned_steps": plan.total_steps})
            self.log(f"time budget: {spent:.0f} of {budget:.0f} {c.budget_clock} s used; a step costs "
                     f"{self.budget.step_cost():.3g} s, a validation {self.budget.val_cost():.3g} s: planned "
                     f"{plan.total_epochs} epochs ({plan.total_steps} steps)")

    def run_training(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train from ``start_epoch`` to ``epochs`` (or as far as the time budget goes).

        ``stop_after`` ends early after that epoch (for tests). Returns a summary: epochs done,
        the selected epoch and its validation Dice, the selection rule, checkpoint paths.
        """
        from tqdm.auto import tqdm

        if not self.initialized:
            self.initialize()
        c = self.config
        self.epochs = c.epochs
        budgeted = c.max_minutes is not None
        cosine = self.cosine()
        if not budgeted and cosine is not None:  # e.g. a resumed run given a new --epochs
            cosine.epochs = c.epochs
        steps = self.steps_per_epoch()
        self.selection = select.resolve_rule(c.selection, len(self.split["val"]))
        if budgeted:
            self.start_budget()
        per_step = bool(self.cosine() is not None and self.cosine().per_step)  # type: ignore[union-attr]
        self._t0 = time.time()
        self._bar = tqdm(total=None if budgeted else self.epochs * steps,
                         initial=self.steps_done(self.start_epoch), unit="step", dynamic_ncols=True,
                         disable=not self.progress_enabled(), leave=True) if self.progress_enabled() else None
        length = (f"{steps} steps per epoch for {c.max_minutes:g} min of {c.budget_clock} time "
                  f"(at most {c.epochs} epochs)" if budgeted else f"epochs {self.start_epoch}->{self.epochs}")
        self.log(f"training {len(self.split['train'])} cases, validating {len(self.split['val'])}; "
                 f"patch {self.plan['patch_size']} at spacing {self.plan['spacing']} mm; "
                 f"{self.world_size} process(es) on {self.device}; {length}")
        if c.budget_recipe:
            chosen = ", ".join(f"{k} {v}" for k, v in c.budget_recipe.items())
            self.log(f"time-budget recipe (chosen automatically; the flags given win): {chosen}")
        self.log(f"checkpoint_best.pt: {select.describe(self.selection, len(self.split['val']))}")
        epoch = self.start_epoch
        mark: float | None = None  # the budget clock when the previous epoch's measured work ended
        try:
            while epoch < self.epochs:
                n_steps = self._next_steps if budgeted else steps
                if budgeted and mark is not None:
                    self.budget.record_epoch_rest(self.budget.now() - mark)
                t = time.time()
                row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
                b0 = self.budget.now() if budgeted else 0.0
                row.update(self.train_epoch(epoch, n_steps))
                if not per_step:
                    self.scheduler.step()
                regular_val = bool(self.split["val"]) and (epoch + 1) % c.val_every == 0
                if budgeted:
                    self.budget.record_train(self.budget.now() - b0, n_steps)
                    self.fit_time_budget(epoch, regular_val)
                last = epoch + 1 >= self.epochs or (stop_after is not None and epoch + 1 >= stop_after)
                if self.split["val"] and (regular_val or epoch + 1 >= self.epochs):
                    bv = self.budget.now() if budgeted else 0.0
                    row.update(self.validate())
                    if budgeted:
                        self.budget.record_validation(self.budget.now() - bv)
                if budgeted:
                    row["steps"] = n_steps
                    row["budget_seconds"] = round(self.budget.spent(), 3)
                    mark = self.budget.now()
                row["epoch_time"] = round(time.time() - t, 3)
                self.on_epoch_end(epoch, row)
                epoch += 1
                if last:
                    break
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if self.is_main and (not self.split["val"] or not (self.output / "checkpoint_best.pt").exists()):
            self.save_best(epoch, {"val_dice": None, "note": "no validation: final weights"})
        if budgeted:
            used = self.budget.spent()
            self.log(f"time budget: used {used:.0f} of {self.budget.budget:.0f} {c.budget_clock} s "
                     f"({100 * used / max(self.budget.budget, 1e-9):.0f} %) in {epoch} epochs, "
                     f"{self.steps_done(epoch)} steps")
        dist_utils.barrier()
        if self.is_main and hasattr(self, "tb"):
            self.tb.close()
        selected = next((r for r in self.history if r["epoch"] == self.best_epoch), {})
        return {"epochs": epoch, "steps": self.steps_done(epoch), "best_val_dice": selected.get("val_dice"),
                "best_epoch": self.best_epoch, "selection": select.describe(self.selection, len(self.split["val"])),
                "selection_score": self.best_metric,
                "budget_seconds_used": round(self.budget.spent(), 1) if budgeted else None,
                "best_checkpoint": str(self.output / "checkpoint_best.pt"),
                "last_checkpoint": str(self.output / "checkpoint_last.pt"),
                "seconds": round(time.time() - self._t0, 1)}

    def selection_score(self, row: dict[str, Any]) -> float | None:
        """What :attr:`selection` ranks this epoch by (None: no validation); adds ``val_dice_ema`` to ``row``."""
        dice = row.get("val_dice")
        if dice is None:
            return None
        rule = getattr(self, "selection", "best")
        if rule == "ema":
            previous = next((r["val_dice_ema"] for r in reversed(self.history) if r.get("val_dice_ema") is not None),
                            None)
            row["val_dice_ema"] = select.ema_update(previous, dice)
            return float(row["val_dice_ema"])
        return float(dice)

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """Record metrics, keep the selected network, write CSV/TensorBoard/curves and the last checkpoint."""
        score = self.selection_score(row)
        self.history.append(row)
        improved = score is not None and (self.best_metric is None or score > self.best_metric
                                          or getattr(self, "selection", "best") == "last")
        if improved:
            self.best_metric, self.best_epoch = score, epoch + 1
        if not self.is_main:
            return
        if improved:
            self.save_best(epoch + 1, {**{k: v for k, v in row.items() if k.startswith("val_")},
                                       "selection": select.describe(self.selection, len(self.split["val"]))})
        write_metrics_csv(self.output / "metrics.csv", self.history)
        self.tb.log(row)
        if "val_dice" in row:
            plot_curves(self.output / "curves.png", self.history)
            msg = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and v is not None)
            self.log(f"epoch {epoch + 1}/{self.epochs}: loss {row['train_loss']:.4f}, {msg or 'val_dice n/a'}"
                     f" (selected {self.best_metric if self.best_metric is not None else float('nan'):.4f}"
                     f" at epoch {self.best_epoch})")
        elif not self.progress_enabled():
            self.log(f"epoch {epoch + 1}/{self.epochs}: loss {row['train_loss']:.4f} lr {row['lr']:.2e} "
                     f"({row['epoch_time']:.1f} s)")
        self.save_last(epoch + 1)

    def close(self) -> None:
        """End the process group (if any)."""
        dist_utils.cleanup()
