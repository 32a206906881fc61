"""Cross-validation: train every fold into ``RUN_DIR/fold_K/`` (``veloxseg train --fold all``).

``RUN_DIR/splits.json`` (nnU-Net's ``splits_final.json`` format) is written once, before the first
fold, from ``--splits FILE`` or the k-fold split of ``--num-folds``; every fold reads its cases from
it. Folds run one after another, or ``parallel`` at a time as separate processes (``spawn``, each
with ``cores / parallel`` threads unless ``--threads``). Each fold is an ordinary run folder, so
``--time-budget`` applies to each fold and a fold can be continued on its own
(``veloxseg train ... --output RUN_DIR/fold_K --fold K --splits RUN_DIR/splits.json --resume``).

With ``resume`` a finished fold (``run_info.json`` written) is skipped, an interrupted one
(``checkpoint_last.pt`` but no ``run_info.json``) is resumed and one not started yet is started.
``RUN_DIR/cv_config.json`` keeps the options the folds were started with (``--resume`` reuses them),
``RUN_DIR/folds.json`` the outcome of each fold. ``veloxseg predict -m RUN_DIR`` ensembles the folds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import InputError, VeloxSegError
from . import distributed as dist_utils
from .models import ModelTrainer
from .trainer import TrainConfig

SPLITS_NAME = "splits.json"
CONFIG_NAME = "cv_config.json"
SUMMARY_NAME = "folds.json"
#: files of an ordinary (single) run, refused at the top of a cross-validation folder
RUN_FILES: tuple[str, ...] = ("checkpoint_last.pt", "checkpoint_best.pt", "config.json", "metrics.csv")


def fold_dir(run: str | os.PathLike, fold: int) -> Path:
    """``RUN_DIR/fold_K``."""
    return Path(run) / f"fold_{fold}"


def fold_state(folder: str | os.PathLike) -> str:
    """``"finished"`` (run_info.json), ``"interrupted"`` (checkpoint_last.pt only) or ``"new"``."""
    folder = Path(folder)
    if (folder / "run_info.json").is_file():
        return "finished"
    if (folder / "checkpoint_last.pt").is_file():
        return "interrupted"
    return "new"


class FoldTrainer(ModelTrainer):
    """:class:`ModelTrainer` whose log lines name the fold (parallel folds share one console)."""

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
        super().__init__(config, resume=resume, overwrite=overwrite)
        self.log_prefix = f"[fold {config.fold}] "

    def log(self, msg: str) -> None:
        super().log(self.log_prefix + msg)


def check_cv_folder(run: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding a single run, or another cross-validation run without ``resume``/``overwrite``."""
    if run.exists() and not run.is_dir():
        raise InputError(f"{run}: exists and is not a folder")
    single = [n for n in RUN_FILES if (run / n).exists()]
    if single and not overwrite:
        raise InputError(f"{run}: holds a single training run ({', '.join(single)}); --fold all trains into "
                         f"RUN_DIR/fold_K/: choose another --output, or pass --overwrite")
    held = ([n for n in (SPLITS_NAME, CONFIG_NAME) if (run / n).exists()]
            + sorted(p.name for p in run.glob("fold_*") if p.is_dir())) if run.is_dir() else []
    if resume and not held:
        raise InputError(f"{run}: holds no cross-validation run to --resume ({SPLITS_NAME} not found)")
    if held and not resume and not overwrite:
        raise InputError(f"{run}: already holds a cross-validation run ({', '.join(held[:4])}); pass --resume to "
                         f"continue it (finished folds are skipped), --overwrite to replace it, or choose "
                         f"another --output")


def prepare_splits(config: TrainConfig, run: Path, splits_file: str | None, resume: bool) -> list[dict[str, list[str]]]:
    """The folds' splits: ``RUN_DIR/splits.json`` when resuming, else from ``splits_file`` or k-fold; written once."""
    from ..data.dataset import load_dataset
    from ..data.split import check_splits, kfold_splits, read_splits, write_splits

    names = [c.name for c in load_dataset(config.dataset).cases]
    existing = run / SPLITS_NAME
    if resume and existing.is_file():
        splits = read_splits(existing, names)
        if splits_file and read_splits(splits_file, names) != splits:
            raise InputError(f"{splits_file}: differs from the run's {existing}; a resumed run keeps its folds")
        return splits
    if splits_file:
        splits = read_splits(splits_file, names)
    else:
        if len(names) < config.num_folds:
            raise InputError(f"{config.dataset}: {config.num_folds}-fold cross-validation needs at least "
                             f"{config.num_folds} cases, the dataset has {len(names)}; lower --num-folds")
        splits = kfold_splits(names, config.num_folds)
    splits = check_splits(splits, names, str(splits_file or existing))
    run.mkdir(parents=True, exist_ok=True)
    write_splits(existing, splits)
    return splits


def train_fold(config: dict[str, Any], resume: bool, overwrite: bool) -> dict[str, Any]:
    """Train one fold (in this process or a worker); its summary, or ``{"error": ...}`` for a failure."""
    fold = config["fold"]
    if overwrite and not resume:  # a stale run_info.json would mark an interrupted new start as finished
        (Path(config["output"]) / "run_info.json").unlink(missing_ok=True)
    try:
        trainer = FoldTrainer(TrainConfig.from_dict(config), resume=resume, overwrite=overwrite)
        try:
            summary = trainer.run_training()
        finally:
            if dist_utils.env_world_size() <= 1:
                trainer.close()
    except (VeloxSegError, ValueError, RuntimeError, OSError) as err:  # one fold failing never stops the others
        if dist_utils.env_world_size() > 1:  # ... except under torchrun: every rank must stop together
            raise
        return {"fold": fold, "status": "failed", "error": " ".join(str(err).split()) or type(err).__name__}
    return {"fold": fold, "status": "resumed" if resume else "trained", "epochs": summary["epochs"],
            "best_val_dice": summary["best_val_dice"], "best_epoch": summary["best_epoch"],
            "best_checkpoint": summary["best_checkpoint"]}


def _finished(run: Path, fold: int) -> dict[str, Any]:
    info = json.loads((fold_dir(run, fold) / "run_info.json").read_text())
    return {"fold": fold, "status": "skipped (finished earlier)", "epochs": info.get("epochs_reached"),
            "best_val_dice": info.get("best_val_dice"), "best_epoch": info.get("best_epoch"),
            "best_checkpoint": str(fold_dir(run, fold) / "checkpoint_best.pt")}


def train_folds(config: TrainConfig, folds: Sequence[int] | None = None, parallel: int = 1, resume: bool = False,
                overwrite: bool = False, splits_file: str | None = None) -> list[dict[str, Any]]:
    """Train the folds of a cross-validation into ``config.output/fold_K``; one summary dict per fold.

    ``folds`` defaults to all of them. See the module docstring for ``resume`` and ``parallel``.
    """
    run = Path(config.output)
    kind = "cuda" if config.device == "cuda" else "cpu"
    rank, world, _ = dist_utils.init(kind)
    if parallel > 1 and world > 1:
        raise InputError("--parallel and torchrun exclude each other: torchrun already runs each fold on several processes")
    problem, splits = None, None
    if rank == 0:
        try:
            check_cv_folder(run, resume, overwrite)
            splits = prepare_splits(config, run, splits_file, resume)
            (run / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2))
        except InputError as err:
            problem = str(err)
    problem, splits = dist_utils.broadcast_object((problem, splits))
    if problem:
        raise InputError(problem)
    todo = list(range(len(splits))) if folds is None else list(folds)
    bad = [k for k in todo if not 0 <= k < len(splits)]
    if bad:
        raise InputError(f"{run / SPLITS_NAME}: holds {len(splits)} fold(s), no fold {bad[0]}")
    results: dict[int, dict[str, Any]] = {}
    jobs = []
    for k in todo:
        state = fold_state(fold_dir(run, k))
        if resume and state == "finished":
            results[k] = _finished(run, k)
            continue
        cfg = replace(config, output=str(fold_dir(run, k)), fold=k, splits=str(run / SPLITS_NAME),
                      num_folds=len(splits))
        if parallel > 1:
            threads = cfg.threads or max(1, (os.cpu_count() or 1) // min(parallel, len(todo)))
            cfg = replace(cfg, threads=threads, progress=False)
        # a fold folder without a checkpoint is an aborted start of this run: started again
        jobs.append((asdict(cfg), resume and state == "interrupted", overwrite or (resume and state == "new")))
    if parallel > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(parallel, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            for result in pool.map(train_fold, *zip(*jobs)):
                results[result["fold"]] = result
    else:
        for job in jobs:
            result = train_fold(*job)
            results[result["fold"]] = result
    dist_utils.cleanup()
    summary = [results[k] for k in sorted(results)]
    if rank == 0:
        write_summary(run, summary)
    return summary


def write_summary(run: Path, summary: list[dict[str, Any]]) -> Path:
    """``RUN_DIR/folds.json``: each fold's outcome and the mean of the best validation Dice."""
    dices = [s["best_val_dice"] for s in summary if s.get("best_val_dice") is not None]
    path = run / SUMMARY_NAME
    path.write_text(json.dumps({"folds": summary, "mean_best_val_dice": sum(dices) / len(dices) if dices else None},
                               indent=2))
    return path


def summary_lines(summary: list[dict[str, Any]]) -> list[str]:
    """One line per fold for the console."""
    out = []
    for s in summary:
        if s["status"] == "failed":
            out.append(f"fold {s['fold']}: FAILED: {s['error']}")
            continue
        dice = s.get("best_val_dice")
        best = "n/a" if dice is None else f"{dice:.4f} (epoch {s['best_epoch']})"
        out.append(f"fold {s['fold']}: {s['status']}, {s['epochs']} epochs, best validation Dice {best}")
    dices = [s["best_val_dice"] for s in summary if s.get("best_val_dice") is not None]
    if dices:
        out.append(f"mean best validation Dice over {len(dices)} fold(s): {sum(dices) / len(dices):.4f}")
    return out
