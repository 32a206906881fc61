"""``veloxseg train``: train VeloxSeg on an nnU-Net v2 raw dataset (one process or under torchrun)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .args import fraction, non_negative_float, positive_float, positive_int, probability


def fold_value(text: str) -> int | str:
    """``--fold``: an integer (``-1``: all cases, no validation) or ``all`` (every fold)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number, -1 or all, got {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be a fold number, -1 or all, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser("train", help="train on an nnU-Net v2 raw dataset (torchrun for several processes)",
                       description="Train VeloxSeg (veloxseg's recipe; --recipe authors: the authors' code's). "
                                   "Under `torchrun --nproc_per_node N -m veloxseg train ...` it runs "
                                   "DistributedDataParallel (gloo on CPU, nccl on GPU).")
    p.add_argument("dataset", help="dataset folder with dataset.json, imagesTr/ and labelsTr/")
    p.add_argument("--output", "-o", required=True, help="run folder (checkpoints, metrics.csv, curves.png, tensorboard/)")
    p.add_argument("--model", choices=("veloxseg", "unet", "unetr", "swinunetr", "segresnet", "dynunet"),
                   help="architecture (default veloxseg); the MONAI baselines train through the same pipeline "
                        "with Dice+CE")
    p.add_argument("--variant", help="an ablation variant of VeloxSeg (veloxseg summary --list-variants)")
    p.add_argument("--preset", help="reference configuration: network, spacing and patch size (autopet, hecktor, brats)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default 300); each epoch passes over every training case once; "
                                            "with --time-budget: at most this many epochs (default: no cap)")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("D", "H", "W"),
                   help="training patch, multiples of 32 (default: from the dataset fingerprint, at most 96^3 "
                        "voxels; with --time-budget at most 64x64x32)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="target spacing in mm, RAS order (default: from the dataset fingerprint)")
    p.add_argument("--batch-size", type=positive_int, help="volumes per step, each giving 2 crops (default 2)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--fold", type=fold_value,
                       help="cross-validation fold 0..K-1 of --num-folds (-1: train on all cases; all: train every "
                            "fold into RUN_DIR/fold_K/, resumable per fold)")
    split.add_argument("--val-fraction", type=fraction, help="fraction of cases held out for validation (default 0.2)")
    p.add_argument("--iterations", type=positive_int,
                   help="optimizer steps per epoch (default: one pass over the training cases; with "
                        "--time-budget 50; raise it for datasets with few cases)")
    p.add_argument("--num-folds", type=positive_int, help="folds of the cross-validation --fold picks from (default 5)")
    p.add_argument("--splits", metavar="SPLITS_JSON",
                   help="take the folds from this file in nnU-Net's splits_final.json format (a list of "
                        "{\"train\": [...], \"val\": [...]}), e.g. an existing nnU-Net run's")
    p.add_argument("--parallel", type=positive_int, metavar="N",
                   help="with --fold all: train N folds at once, as separate processes (default 1)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights: every tensor whose name and shape match is loaded "
                        "(a different class count re-initialises the head); recorded in run_info.json")
    p.add_argument("--freeze", choices=("encoder",),
                   help="with --init-from: keep the encoder fixed and train the decoder and heads (tiny datasets)")
    p.add_argument("--modality-dropout", type=probability, metavar="P",
                   help="per sample, zero each input channel group (a modality, or one sequence of an MRI "
                        "block) with probability P, never all; the model can then predict with a channel "
                        "missing (default 0)")
    p.add_argument("--ds-weights", type=non_negative_float, nargs=4, metavar="W",
                   help="VeloxSeg: loss weights of the full-resolution output and the three deep-supervision "
                        "outputs (finest first), normalised; default 1 1 1 1, the paper's")
    p.add_argument("--val-every", type=positive_int, help="validate every N epochs (default 5; with --time-budget 1)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default 2.5e-4; with --time-budget 2e-3)")
    p.add_argument("--selection", choices=("auto", "ema", "best", "last"),  # training.selection.RULES
                   help="what checkpoint_best.pt holds: the epoch of the best moving average of the validation "
                        "Dice (ema), of the best Dice (best), or the final weights (last); default auto: ema "
                        "with fewer than 5 validation cases, else best")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint_last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in RUN_DIR even though it holds another run's files (they are replaced)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--threads", type=positive_int, help="CPU threads per process")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--cache", choices=("memory", "disk", "none"), help="where preprocessed cases are kept (default memory)")
    p.add_argument("--workers", type=int, dest="num_workers", help="data-loader worker processes (default 0)")
    p.add_argument("--max-minutes", "--time-budget", type=positive_float, dest="max_minutes", metavar="MINUTES",
                   help="training budget in minutes: as many epochs as fit (re-planned after every epoch from "
                        "the recent epochs' cost, validation counted apart), the cosine schedule fitted to them; "
                        "the settings not given follow a recipe for minutes (50 steps per epoch, lr 2e-3, "
                        "validation every epoch, patch at most 64x64x32; see docs/training.md); the budget used, "
                        "the load and the hardware go to RUN_DIR/run_info.json")
    p.add_argument("--budget-clock", choices=("wall", "cpu"),
                   help="what --time-budget counts: wall-clock time (default) or this process's CPU time "
                        "(fair between runs on a shared, loaded machine)")
    p.add_argument("--recipe", choices=("default", "authors"),
                   help="training recipe: default (veloxseg's) or authors (their code's learning-rate curve, no "
                        "flips, rotation about the last axis, no gradient clipping, float32); docs/training.md")
    p.add_argument("--split", choices=("veloxseg", "authors"),
                   help="how cases are split: veloxseg (--fold / --val-fraction, default) or authors (sorted cases, "
                        "first 60 %% train, next 20 %% validation, the rest unused)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no mixed precision on CUDA")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="bf16: on a CPU, the forward and loss under bfloat16 autocast with float32 master weights "
                        "(CUDA keeps its AMP, see --no-amp) (default fp32)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.set_defaults(func=run)


OVERRIDABLE = ("model", "variant", "num_folds", "budget_clock", "preset", "epochs", "patch_size", "spacing",
               "batch_size", "fold", "val_fraction", "iterations", "val_every", "lr", "device", "threads", "seed",
               "cache", "num_workers", "max_minutes", "amp", "precision", "progress", "selection",
               "recipe", "split", "init_from", "freeze", "modality_dropout", "splits", "ds_weights")


def build_config(args: argparse.Namespace) -> Any:
    """A :class:`TrainConfig` from the arguments; with ``--resume`` the run's saved config fills the rest.

    A new run with ``--time-budget`` takes the settings not given from the budget recipe
    (:mod:`veloxseg.training.budget_recipe`); the flags given always win.
    """
    from ..errors import InputError
    from ..io import read_json_object
    from ..training import TrainConfig

    base: dict[str, Any] = {"dataset": args.dataset, "output": args.output}
    saved = Path(args.output) / "config.json"
    if args.resume:
        if not saved.is_file():
            raise InputError(f"{saved}: not found; --resume needs a run folder written by veloxseg train")
        base = {**read_json_object(saved, "run configuration"), **base}
    for key in OVERRIDABLE:
        value = getattr(args, key, None)
        if value is not None:
            base[key] = list(value) if isinstance(value, (list, tuple)) else value
    if not args.resume:
        with_budget_recipe(base, args)
    return TrainConfig.from_dict(base)


def with_budget_recipe(base: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``base`` with the budget recipe's settings that the flags leave open, when ``--time-budget`` is given
    (:mod:`veloxseg.training.budget_recipe`); the settings chosen are kept as ``base["budget_recipe"]``."""
    from ..training.budget_recipe import budget_recipe

    if args.max_minutes is None:
        return base
    chosen = budget_recipe({key: getattr(args, key, None) for key in OVERRIDABLE})
    if (args.recipe or base.get("recipe")) == "authors":  # their learning rates; the budget sets the rest
        chosen = {k: v for k, v in chosen.items() if k not in ("lr", "min_lr", "warmup_epochs")}
    base.update(chosen)
    base["budget_recipe"] = chosen
    return base


def run(args: argparse.Namespace) -> int:
    """Train; print the best validation Dice and where the checkpoints are."""
    from ..errors import InputError
    from ..training import ModelTrainer

    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite contradict each other: choose one")
    if args.freeze and not args.init_from and not args.resume:
        raise InputError("--freeze needs --init-from CHECKPOINT: a fixed, freshly initialised encoder learns nothing")
    if args.ds_weights is not None and args.model not in (None, "veloxseg"):
        raise InputError(f"--ds-weights: VeloxSeg only; --model {args.model} trains with its own loss")
    if args.ds_weights is not None and args.ds_weights[0] <= 0:
        raise InputError("--ds-weights: the full-resolution output's weight (the first) must be above 0, got "
                         + " ".join(f"{w:g}" for w in args.ds_weights))
    if args.fold == "all":
        return run_all_folds(args)
    if args.parallel is not None:
        raise InputError("--parallel applies to --fold all")
    config = build_config(args)
    trainer = ModelTrainer(config, resume=args.resume, overwrite=args.overwrite)
    try:
        summary = trainer.run_training()
    finally:
        trainer.close()
    if trainer.is_main:
        dice = summary["best_val_dice"]
        best = "n/a" if dice is None else f"epoch {summary['best_epoch']}, validation Dice {dice:.4f}"
        print(f"done: {summary['epochs']} epochs ({summary['steps']} steps) in {summary['seconds']:.0f} s; "
              f"selected {best} by {summary['selection']}")
        print(f"best checkpoint: {summary['best_checkpoint']}")
        print(f"last checkpoint: {summary['last_checkpoint']}")
    return 0


def run_all_folds(args: argparse.Namespace) -> int:
    """``--fold all``: every fold into ``RUN_DIR/fold_K/`` (:mod:`veloxseg.training.folds`); 1 if one failed."""
    from ..io import read_json_object
    from ..training import TrainConfig
    from ..training.folds import CONFIG_NAME, summary_lines, train_folds

    base: dict[str, Any] = {"dataset": args.dataset, "output": args.output}
    saved = Path(args.output) / CONFIG_NAME
    resumed = args.resume and saved.is_file()
    if resumed:
        base = {**read_json_object(saved, "cross-validation configuration"), **base}
    for key in OVERRIDABLE:
        value = getattr(args, key, None)
        if value is not None and key not in ("fold", "splits"):
            base[key] = list(value) if isinstance(value, (list, tuple)) else value
    if not resumed:  # every fold trains with the recipe a single run with --time-budget would
        with_budget_recipe(base, args)
    base["fold"], base["splits"] = None, None
    summary = train_folds(TrainConfig.from_dict(base), parallel=args.parallel or 1, resume=args.resume,
                          overwrite=args.overwrite, splits_file=args.splits)
    from ..training import distributed as dist_utils

    if dist_utils.env_world_size() <= 1 or int(os.environ.get("RANK", "0")) == 0:
        for line in summary_lines(summary):
            print(line)
        print(f"folds: {Path(args.output)}/fold_K/checkpoint_best.pt; ensemble them with "
              f"veloxseg predict -m {args.output} -i INPUT -o OUTPUT")
    return 1 if any(s["status"] == "failed" for s in summary) else 0
