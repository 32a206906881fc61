"""Issue 22's check of the CPU budget under load: the same training command on a quiet and on a loaded machine.

The command is the one a user runs (``veloxseg train ... --time-budget 8 --budget-clock cpu``, the recipe
the CLI picks), on HecktorMini's fold 0 of 3 (2 held-out cases). ``--load`` starts two CPU-bound
processes beside the run for its first 150 s (as in the issue). The run's ``checkpoint_best.pt`` (what
we tell users to deploy) predicts the held-out cases; steps, the share of the budget used, the load
averages and the Dice go to ``experiments/results/budget/<quiet|loaded>.json``.

    python experiments/loaded_pair.py            # quiet
    python experiments/loaded_pair.py --load     # two CPU hogs for the first 150 s
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_experiments import HECKTOR, RESULTS, _commit, _num  # noqa: E402


def hog(seconds: float) -> None:
    """Spin one CPU for ``seconds``."""
    end = time.time() + seconds
    while time.time() < end:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", action="store_true", help="two CPU-bound processes beside the run for 150 s")
    ap.add_argument("--budget", type=float, default=8.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/veloxseg-exp"))
    a = ap.parse_args()
    name = "loaded" if a.load else "quiet"
    run = a.work / "budget" / name
    cmd = ["veloxseg", "train", str(HECKTOR), "--output", str(run), "--model", "veloxseg", "--time-budget",
           f"{a.budget:g}", "--budget-clock", "cpu", "--num-folds", "3", "--fold", "0", "--no-progress"]
    hogs = [mp.Process(target=hog, args=(150.0,)) for _ in range(2 if a.load else 0)]
    load_before = list(os.getloadavg())
    t0 = time.time()
    for h in hogs:
        h.start()
    subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:], "--overwrite"], check=True)
    wall = time.time() - t0
    for h in hogs:
        h.join()
    info = json.loads((run / "run_info.json").read_text())
    split = json.loads((run / "splits.json").read_text())

    import torch

    from veloxseg.evaluation import evaluate_folders
    from veloxseg.inference import Predictor
    from veloxseg.inference.cases import Case
    from veloxseg.inference.runner import predict_cases

    torch.set_num_threads(1)
    cases = [Case(c, tuple(HECKTOR / "imagesTr" / f"{c}_{i:04d}.nii.gz" for i in range(2))) for c in split["val"]]
    predictor = Predictor.from_checkpoint(run / "checkpoint_best.pt", device="cpu", threads=1, overlap=0.25)
    predict_cases(predictor, cases, run / "pred", progress=False, overwrite=True)
    ev = evaluate_folders(run / "pred", HECKTOR / "labelsTr", cases=split["val"])
    budget = info["budget"]
    record = {
        "name": name, "command": " ".join(cmd), "load": "two CPU-bound processes for the first 150 s" if a.load else
        "none added (nothing else was started; see the load average)",
        "load_average_before": load_before, "train_wall_seconds": round(wall, 1),
        "steps": info["steps"], "epochs_reached": info["epochs_reached"],
        "budget_used_seconds": budget["used_seconds"], "budget_used_fraction": budget["used_fraction"],
        "plans": budget["plans"], "selection": info["selection"],
        "hardware": info["hardware"], "val_cases": split["val"],
        "dice": {s.case: _num(s.dice) for s in ev.scores},
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code_commit": _commit(),
    }
    out = RESULTS / "budget" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: {info['steps']} steps, {budget['used_fraction']:.1%} of the budget, Dice {record['dice']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
