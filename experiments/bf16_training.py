"""Issue 19: training in bf16 on a CPU (``train --precision bf16``) against fp32, on the demo's data.

The same run twice (the demo's recipe, the same seed, a fixed number of epochs, 1 thread), once in
float32 and once under bfloat16 autocast with float32 master weights; per-epoch training loss,
validation Dice, CPU seconds per step, and the held-out test cases' Dice of the final weights go to
``experiments/results/bf16/demo.json``.

    python experiments/bf16_training.py [--epochs 40] [--work /tmp/veloxseg-exp]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_experiments import RESULTS, _commit  # noqa: E402


def train(data: Path, out: Path, precision: str, epochs: int) -> dict:
    import torch

    from veloxseg.cli.demo import DEMO_PATCH
    from veloxseg.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    cfg = TrainConfig(dataset=str(data), output=str(out), epochs=epochs, patch_size=list(DEMO_PATCH), lr=2e-3,
                      min_lr=1e-5, warmup_epochs=2, val_fraction=0.125, val_every=5, device="cpu", threads=1,
                      seed=0, progress=False, precision=precision)
    trainer = Trainer(cfg)
    cpu0 = time.process_time()
    try:
        summary = trainer.run_training()
    finally:
        trainer.close()
    cpu = time.process_time() - cpu0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return {"summary": {k: summary[k] for k in summary if isinstance(summary[k], (int, float, str))},
            "train_loss": [float(r["train_loss"]) for r in rows],
            "val_dice": {int(r["epoch"]): float(r["val_dice"]) for r in rows if r.get("val_dice")},
            "cpu_seconds": round(cpu, 1), "steps": summary.get("steps")}


def test_dice(data: Path, ckpt: Path) -> dict[str, float]:
    import numpy as np

    from veloxseg.checkpoint import build_model, load_checkpoint
    from veloxseg.io import read_nifti
    from veloxseg.training.inference import predict_case

    c = load_checkpoint(ckpt)
    model = build_model(c)
    out = {}
    for lab in sorted((data / "labelsTs").glob("*.nii.gz")):
        case = lab.name[: -len(".nii.gz")]
        images = [str(data / "imagesTs" / f"{case}_{k:04d}.nii.gz") for k in range(len(c["channel_names"]))]
        pred, _ = predict_case(model, c["plan"], images, "cpu")
        truth = read_nifti(lab, dtype=np.uint8)[0] > 0
        p = pred > 0
        out[case] = round(2.0 * int((truth & p).sum()) / max(int(truth.sum() + p.sum()), 1), 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--work", type=Path, default=Path("/tmp/veloxseg-exp"))
    a = ap.parse_args()
    from veloxseg.data.demo import write_demo_dataset

    root = a.work / "bf16"
    data = root / "Dataset900_DemoPETCT"
    if not (data / "dataset.json").exists():
        write_demo_dataset(data, cases=16, seed=0, test_cases=4)
    record = {"epochs": a.epochs, "data": "veloxseg demo phantoms, 16 training (2 validation) + 4 test cases",
              "recipe": "the demo's: patch 64x64x32, lr 2e-3, warm-up 2 epochs, cosine, 1 thread, seed 0",
              "runs": {}, "load_average_start": list(os.getloadavg())}
    for precision in ("fp32", "bf16"):
        run = root / precision
        result = train(data, run, precision, a.epochs)
        result["test_dice"] = test_dice(data, run / "checkpoint_last.pt")
        record["runs"][precision] = result
        print(f"{precision}: final loss {result['train_loss'][-1]:.4f}, {result['cpu_seconds']} CPU s, "
              f"test Dice {result['test_dice']}", flush=True)
    import platform

    record.update(machine=next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                                if ln.startswith("model name")), platform.processor()),
                  flags=[f for f in ("avx512_bf16", "amx_bf16") if f in open("/proc/cpuinfo").read()],
                  load_average_end=list(os.getloadavg()), code_commit=_commit(),
                  finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out = RESULTS / "bf16" / "demo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
