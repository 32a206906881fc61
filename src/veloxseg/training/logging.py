"""Run outputs written by rank 0: ``metrics.csv``, TensorBoard events and ``curves.png``."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_path, save_figure


def write_metrics_csv(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite ``path`` from the whole history (so a resumed run stays one consistent table)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})


def plot_curves(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """PNG of the training losses (left) and the validation Dice (right) against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "total"), ("seg_loss", "Dice+CE"), ("rc_loss", "reconstruction"),
                       ("sdkt_loss", "SDKT")):
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            ax1.plot(epochs, [math.nan if y is None else y for y in ys], label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    ax1.legend()
    val = [(r["epoch"], r["val_dice"]) for r in history if r.get("val_dice") is not None]
    if val:
        ax2.plot([e for e, _ in val], [d for _, d in val], "o-", label="mean foreground Dice")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Dice")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


class TensorBoardLogger:
    """Scalars per epoch into ``RUN_DIR/tensorboard`` (silently off when tensorboard is missing)."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            self.writer = None
            return
        self.writer = SummaryWriter(str(log_dir))

    def log(self, row: Mapping[str, Any]) -> None:
        """Write every numeric value of ``row`` at step ``row["epoch"]``."""
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                group = "val" if key.startswith("val_") else "train"
                self.writer.add_scalar(f"{group}/{key}", value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
