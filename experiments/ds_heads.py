"""Issue 22: how well each output of a trained VeloxSeg fits its training crops (Dice+CE per output).

VeloxSeg's loss averages Dice+CE over the full-resolution output and three deep-supervision outputs
(equal weights, the paper's). This loads a finished run's ``checkpoint_last.pt`` (teachers and
deep-supervision heads included), draws training batches as the run did, and writes the Dice+CE of
each output (training mode, no gradient) to ``experiments/results/ds-heads/<run>.json``.

    python experiments/ds_heads.py /tmp/veloxseg-exp/authors/veloxseg_fold0_seed0 [--batches 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_experiments import RESULTS, _commit  # noqa: E402


def per_output_loss(run: Path, batches: int) -> list[float]:
    """Mean Dice+CE of each output (full resolution first) over ``batches`` training batches."""
    import torch

    from veloxseg.losses import DeepSupervisionDiceCE
    from veloxseg.training import ModelTrainer, TrainConfig

    config = json.loads((run / "config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        config.update(output=str(Path(tmp) / "run"), progress=False, threads=1)
        trainer = ModelTrainer(TrainConfig.from_dict(config))
        trainer.initialize()
        ckpt = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=True)
        trainer.network.load_state_dict(ckpt["state_dict"])
        trainer.network.train()
        dice_ce = DeepSupervisionDiceCE(False)
        torch.manual_seed(0)
        sums: list[float] = []
        drawn = 0
        try:
            with torch.no_grad():
                for batch in trainer.train_loader:
                    if drawn == batches:
                        break
                    logits = trainer.network(batch["image"].float()).logits
                    losses = [float(dice_ce([lg], batch["label"], [1.0])) for lg in logits]
                    sums = losses if not sums else [a + b for a, b in zip(sums, losses)]
                    drawn += 1
        finally:
            trainer.close()
    return [s / drawn for s in sums]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished VeloxSeg run folder (checkpoint_last.pt, config.json)")
    ap.add_argument("--batches", type=int, default=8)
    a = ap.parse_args()
    losses = per_output_loss(a.run, a.batches)
    out = RESULTS / "ds-heads" / f"{a.run.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = {"run": a.run.name, "command": f"python experiments/ds_heads.py {a.run} --batches {a.batches}",
           "outputs": ["full resolution", "u2 head", "u3 head", "enc4 head"][: len(losses)],
           "dice_ce": losses, "batches": a.batches, "code_commit": _commit()}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, out)
    print(f"{out}: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(rec["outputs"], losses)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
