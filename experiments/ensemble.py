"""Issue 20's ensemble measurement on HecktorMini: a 4-fold cross-validation ensemble against its single folds.

Two cases are held out (the first validation pair of ``kfold_splits(cases, 3, seed=0)``: CHGJ010 and
CHGJ013). The other four are cross-validated with the commands a user runs::

    veloxseg train VIEW --output RUN --fold all --num-folds 4 --time-budget 4 --budget-clock cpu --parallel 2
    veloxseg predict -m RUN ...            # the ensemble (mean of the folds' softmax probabilities)
    veloxseg predict -m RUN/fold_K/checkpoint_best.pt ...   # each fold alone

(VIEW: the four cases, as symlinks in the work folder; nothing is copied.) Each model predicts the two
held-out cases; Dice per case and seconds per case (median of 3 after a warm-up, 1 thread) go to
``experiments/results/ensemble/hecktor.json``. For reference, each held-out case's Dice from
``results.md`` section 6 is kept too: one model trained for 8 CPU-minutes on 4 other cases (the
3-fold split there differs from this one, so those 4 are not exactly the ensemble's 4).

    python experiments/ensemble.py [--budget 4] [--work /tmp/veloxseg-exp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_experiments import HECKTOR, RESULTS, _commit, _num  # noqa: E402


def case_view(dataset: Path, keep: list[str], view: Path) -> Path:
    """``dataset`` restricted to the cases ``keep``, as symlinks at ``view``."""
    if (view / "dataset.json").exists():
        return view
    for sub in ("imagesTr", "labelsTr"):
        (view / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((dataset / sub).iterdir()):
            if any(f.name.startswith(c + "_") or f.name == c + ".nii.gz" for c in keep):
                (view / sub / f.name).symlink_to(f.resolve())
    meta = json.loads((dataset / "dataset.json").read_text())
    (view / "dataset.json").write_text(json.dumps({**meta, "numTraining": len(keep)}, indent=2))
    return view


def timed_scores(model: list[str], cases: list, labels: Path, out: Path, threads: int) -> dict:
    """Predict ``cases`` with ``model`` (one checkpoint, or a run folder of folds), score, time per case."""
    import torch

    from veloxseg.evaluation import evaluate_folders
    from veloxseg.inference.ensemble import load_predictor
    from veloxseg.inference.runner import predict_cases

    torch.set_num_threads(threads)
    predictor = load_predictor(model if len(model) > 1 else model[0], device="cpu", threads=threads, overlap=0.25)
    summary = predict_cases(predictor, cases, out, progress=False, overwrite=True)
    ev = evaluate_folders(out, labels, cases=[c.name for c in cases])
    seconds = {}
    for c in cases:
        predictor.predict_case(c)  # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            predictor.predict_case(c)
            times.append(time.perf_counter() - t)
        seconds[c.name] = round(statistics.median(times), 4)
    assert not summary.failed, summary.failed
    return {"dice": {s.case: _num(s.dice) for s in ev.scores}, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=4.0, help="CPU-minutes per fold (default 4)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/veloxseg-exp"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=2, help="folds trained at once (default 2)")
    a = ap.parse_args()
    from veloxseg.data.split import kfold_splits
    from veloxseg.inference.cases import Case

    names = sorted(p.name[: -len(".nii.gz")] for p in (HECKTOR / "labelsTr").glob("*.nii.gz"))
    held = kfold_splits(names, 3, 0)[0]["val"]
    rest = [n for n in names if n not in held]
    work = a.work / "ensemble"
    view = case_view(HECKTOR, rest, a.work / "views" / "Dataset501_HecktorMini_4cases")
    run = work / f"run_{a.budget:g}min"
    cmd = ["veloxseg", "train", str(view), "--output", str(run), "--model", "veloxseg", "--fold", "all",
           "--num-folds", "4", "--time-budget", f"{a.budget:g}", "--budget-clock", "cpu", "--threads",
           str(a.threads), "--parallel", str(a.parallel), "--device", "cpu", "--no-progress"]
    t0 = time.time()
    if not all((run / f"fold_{k}" / "checkpoint_last.pt").exists() for k in range(4)):
        subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:],
                        *(["--resume"] if run.exists() else [])], check=True)
    train_wall = time.time() - t0
    cases = [Case(c, tuple(HECKTOR / "imagesTr" / f"{c}_{i:04d}.nii.gz" for i in range(2))) for c in held]
    labels = HECKTOR / "labelsTr"
    rows = {"ensemble (4 folds)": timed_scores([str(run)], cases, labels, work / "pred_ensemble", a.threads)}
    for k in range(4):
        ckpt = run / f"fold_{k}" / "checkpoint_best.pt"
        rows[f"fold {k}"] = timed_scores([str(ckpt)], cases, labels, work / f"pred_fold{k}", a.threads)
    infos = {k: json.loads((run / f"fold_{k}" / "run_info.json").read_text()) for k in range(4)}
    section6 = {}  # each held-out case's Dice from the fold of section 6 that held it out
    for f in sorted((RESULTS / "authors").glob("veloxseg_fold*_seed0.json")):
        rec = json.loads(f.read_text())
        section6.update({c: v["labels"]["1"]["dice"] for c, v in rec["cases"].items() if c in held})
    record = {
        "held_out": held, "cross_validated": rest, "command": " ".join(cmd),
        "predict": "load_predictor(RUN or RUN/fold_K/checkpoint_best.pt), overlap 0.25, "
                   f"{a.threads} thread(s); seconds: median of 3 predict_case calls after a warm-up",
        "rows": rows,
        "folds": {k: {"steps": i["steps"], "process_cpu_seconds": i["process_cpu_seconds"],
                      "selection": i["selection"]} for k, i in infos.items()},
        "single_model_8min": ({"source": "experiments/results/authors/veloxseg_fold*_seed0.json (section 6): "
                                         "one model per case, trained for 8 CPU-minutes on 4 other cases",
                               "dice": section6} if section6 else None),
        "train_wall_seconds": round(train_wall, 1), "load_average": list(os.getloadavg()),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code_commit": _commit(),
    }
    out = RESULTS / "ensemble" / "hecktor.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name}: Dice {r['dice']}, s/case {r['seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
