"""``veloxseg demo``: synthetic PET/CT data -> a few minutes of CPU training -> Dice on held-out cases."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

DEMO_PATCH = [64, 64, 32]
#: minutes kept for predicting and scoring the held-out cases
PREDICT_RESERVE_MIN_PER_CASE = 0.15  # minutes kept for predicting each held-out case (plus 0.1)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="end-to-end demo: synthetic PET/CT, CPU training, Dice on held-out cases")
    p.add_argument("--output", "-o", default="demo_run", help="folder for data, run and predictions "
                                                              "(default ./demo_run)")
    p.add_argument("--minutes", type=float, default=8.0,
                   help="wall-clock budget of the whole demo in minutes (default 8); training gets what data "
                        "generation and prediction leave")
    p.add_argument("--cases", type=int, default=16, help="training cases (default 16)")
    p.add_argument("--test-cases", type=int, default=4, help="held-out test cases (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: the cores not already busy, at least 1; an oversubscribed CPU "
                        "trains several times slower than one thread per free core)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def free_cores() -> int:
    """CPU cores not already busy (1-minute load average), at least 1."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, cores - int(load + 0.5)))


DEMO_MARKER = ".veloxseg-demo"


def run(args: argparse.Namespace) -> int:
    """Generate, train, predict, score; print the Dice and where everything is."""
    import numpy as np
    import torch

    from ..checkpoint import build_model, load_checkpoint
    from ..data.demo import write_demo_dataset
    from ..errors import InputError
    from ..io import read_nifti, write_nifti
    from ..training import TrainConfig, Trainer
    from ..training.inference import predict_case

    t0 = time.time()
    threads = args.threads or free_cores()
    out = Path(args.output)
    data = out / "Dataset900_DemoPETCT"
    subs = [data, out / "run", out / "predictions"]
    marker = out / DEMO_MARKER  # the demo deletes only folders it wrote itself (they sit beside its marker)
    if any(s.exists() for s in subs) and not marker.is_file():
        first = next(s for s in subs if s.exists())
        raise InputError(f"{first}: exists and was not written by veloxseg demo; choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("folders written by veloxseg demo; a new demo run replaces them\n")
    for sub in subs:  # the demo's own folders: start afresh
        if sub.exists():
            shutil.rmtree(sub)
    print(f"[1/3] writing {args.cases} training + {args.test_cases} test phantoms to {data}", flush=True)
    write_demo_dataset(data, cases=args.cases, seed=args.seed, test_cases=args.test_cases)
    reserve = 0.1 + PREDICT_RESERVE_MIN_PER_CASE * args.test_cases
    train_minutes = args.minutes - (time.time() - t0) / 60 - reserve
    if train_minutes <= 0.1:
        raise InputError(f"--minutes {args.minutes:g} leaves no time to train")
    print(f"[2/3] training for at most {train_minutes:.1f} min with {threads} thread(s)", flush=True)
    config = TrainConfig(dataset=str(data), output=str(out / "run"), epochs=400, patch_size=list(DEMO_PATCH),
                         lr=2e-3, min_lr=1e-5, warmup_epochs=2, val_fraction=0.125, val_every=10,
                         device=args.device, threads=threads, seed=args.seed, progress=args.progress,
                         max_minutes=train_minutes)
    trainer = Trainer(config)
    try:
        summary = trainer.run_training()
    finally:
        trainer.close()
    print(f"[3/3] predicting the {args.test_cases} held-out cases", flush=True)
    ckpt = load_checkpoint(summary["best_checkpoint"])
    device = trainer.device
    model = build_model(ckpt).to(device)
    results = {}
    for lab in sorted((data / "labelsTs").glob("*.nii.gz")):
        case = lab.name[: -len(".nii.gz")]
        images = [str(data / "imagesTs" / f"{case}_{c:04d}.nii.gz") for c in range(len(ckpt["channel_names"]))]
        pred, affine = predict_case(model, ckpt["plan"], images, device)
        write_nifti(out / "predictions" / f"{case}.nii.gz", pred, affine)
        truth = read_nifti(lab, dtype=np.uint8)[0] > 0
        p = pred > 0
        denom = int(truth.sum() + p.sum())
        results[case] = 1.0 if denom == 0 else 2.0 * int((truth & p).sum()) / denom
        print(f"  {case}: lesion Dice {results[case]:.3f}", flush=True)
    mean = float(np.mean(list(results.values()))) if results else float("nan")
    minutes = (time.time() - t0) / 60
    (out / "demo_result.json").write_text(json.dumps(
        {"mean_dice": mean, "per_case": results, "minutes": round(minutes, 2), "train": summary,
         "threads": torch.get_num_threads()}, indent=2))
    print(f"held-out lesion Dice {mean:.3f} (mean of {len(results)} cases) in {minutes:.1f} min")
    print(f"data: {data}\nrun: {out / 'run'} (checkpoint_best.pt, metrics.csv, curves.png)\n"
          f"predictions: {out / 'predictions'}")
    return 0
