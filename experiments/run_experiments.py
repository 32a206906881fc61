"""Accuracy experiments: VeloxSeg against the MONAI baselines at equal CPU time, and the ablation.

Every run is ``veloxseg train`` (the same command users run) with ``--time-budget`` counted in the
run's own CPU seconds (``--budget-clock cpu``, so runs in parallel on a loaded machine still get
equal compute), followed by
prediction of the fold's held-out cases with :class:`veloxseg.inference.Predictor` and scoring with
:func:`veloxseg.evaluation.evaluate_folders` (the functions behind ``veloxseg predict`` and
``veloxseg evaluate``; used in Python so each case's inference time is measured on its own).

Resumable: a run whose result file ``experiments/results/<group>/<run>.json`` exists is skipped; a
run folder without a result (an interrupted run) is trained afresh. Results are written as each run
finishes and ``docs/results.md`` is regenerated (``experiments/make_results.py``) after every run.

    python experiments/run_experiments.py                        # everything, 2 runs at a time
    python experiments/run_experiments.py --groups hecktor ablation --parallel 2 --budget 2
    python experiments/run_experiments.py --list                 # the runs and whether they are done
    python experiments/run_experiments.py --groups curve         # Dice per CPU-minute (about 8 CPU-hours)

The ``curve`` group is the time-to-accuracy comparison: exactly the command a user runs
(``veloxseg train --time-budget M --budget-clock cpu``, the recipe the CLI chooses by itself, no
per-model flags), VeloxSeg and UNet at 2, 8 and 30 CPU-minutes and SegResNet and DynUNet at 8 on
HecktorMini (3 folds), VeloxSeg and UNet at 8 and VeloxSeg at 30 on BratsMini (leave-one-out, 3 mm).

Run folders (checkpoints, logs, predictions) go to ``--work`` (default ``/tmp/veloxseg-exp``),
outside the repository; the data sets are read in place from ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = Path(os.environ.get("VELOXSEG_EXP_RESULTS", HERE / "results"))  # override for trials
DATA = REPO.parent / "shared" / "data"
HECKTOR = DATA / "Dataset501_HecktorMini"
BRATS = DATA / "Dataset502_BratsMini"

#: the same recipe for every run: the paper's, except a higher peak lr (2e-3, as the demo uses) for runs of
#: minutes, a 32x32x64 patch (positive crops hold 4x more tumour and steps cost 4x less than the 64^3 plan),
#: and a budget of CPU time (``--budget-clock cpu``), the same for every run however loaded the machine is
COMMON = ["--epochs", "200", "--lr", "2e-3", "--val-every", "10", "--patch-size", "32", "32", "64",
          "--budget-clock", "cpu", "--device", "cpu", "--no-progress"]
MAIN_MODELS = ("veloxseg", "unet", "segresnet", "swinunetr", "dynunet")
#: the ``curve`` group: only what every run needs; the CLI's --time-budget recipe chooses the rest
CURVE_COMMON = ["--budget-clock", "cpu", "--device", "cpu", "--no-progress"]
#: (model, budget in CPU-minutes) of the ``curve`` group, per data set
CURVE_HECKTOR = [("veloxseg", 2), ("unet", 2), ("veloxseg", 8), ("unet", 8), ("segresnet", 8), ("dynunet", 8),
                 ("veloxseg", 30), ("unet", 30)]
CURVE_BRATS = [("veloxseg", 8), ("unet", 8), ("veloxseg", 30)]
ABLATION = ("conv-only", "multiscale", "jl-groups", "pwa", "unified-upsampling", "groups-8-16-16-32",
            "teachers-no-gram")  # "full" is the plain veloxseg run of the main comparison
HEAVY = ("swinunetr", "dynunet")  # at most --max-heavy of these at once (memory)


@dataclass
class Job:
    """One training run plus the prediction and scoring of its held-out cases."""

    group: str  # hecktor | ablation | seeds | brats
    dataset: str
    model: str
    variant: str | None
    fold: int
    num_folds: int
    seed: int
    budget_min: float
    threads: int
    extra: list[str] = field(default_factory=list)
    tag: str | None = None  # names a run whose flags (extra) change it, e.g. ``--recipe authors``
    #: train on a view of the data set holding only these channels (symlinks in the work folder), e.g. PET only
    channels: list[int] | None = None
    #: besides all channels present, predict the held-out cases again with each of these channel sets absent
    #: (a model trained with ``--modality-dropout``)
    missing: list[list[int]] | None = None

    @property
    def name(self) -> str:
        arch = self.tag or self.variant or self.model
        if self.group.startswith("curve"):  # several budgets per model
            return f"{arch}_{self.budget_min:g}min_fold{self.fold}_seed{self.seed}"
        return f"{arch}_fold{self.fold}_seed{self.seed}"

    @property
    def result_path(self) -> Path:
        return RESULTS / self.group / f"{self.name}.json"

    def train_args(self, run_dir: Path) -> list[str]:
        args = ["train", self.dataset, "--output", str(run_dir), "--model", self.model]
        if self.variant:
            args += ["--variant", self.variant]
        args += ["--num-folds", str(self.num_folds), "--fold", str(self.fold), "--seed", str(self.seed),
                 "--time-budget", f"{self.budget_min:g}", "--threads", str(self.threads),
                 *(CURVE_COMMON if self.group.startswith(("curve", "authors", "modality")) else COMMON), *self.extra]
        return args


def all_jobs(budget: float, threads: int, groups: list[str]) -> list[Job]:
    """The runs of the chosen groups, in priority order (fold-major, so load is spread over the models)."""
    jobs: list[Job] = []
    h = str(HECKTOR)
    if "hecktor" in groups:
        jobs += [Job("hecktor", h, m, None, k, 3, 0, budget, threads) for k in range(3) for m in MAIN_MODELS]
    if "ablation" in groups:
        jobs += [Job("ablation", h, "veloxseg", v, k, 3, 0, budget, threads) for k in range(3) for v in ABLATION]
    if "seeds" in groups:  # a second seed for the headline pair
        jobs += [Job("seeds", h, m, None, k, 3, 1, budget, threads) for k in range(3) for m in ("veloxseg", "unet")]
    if "brats" in groups:  # 4 cases, leave-one-out, at 3 mm (about 27x fewer voxels than 1 mm)
        jobs += [Job("brats", str(BRATS), m, None, k, 4, 0, budget, threads, ["--spacing", "3", "3", "3"])
                 for k in range(4) for m in MAIN_MODELS]
    if "authors" in groups:  # issue 18: our default, the authors' recipe, the network before it matched theirs
        jobs += [j for k in range(3) for j in (
            Job("authors", h, "veloxseg", None, k, 3, 0, 8, threads),
            Job("authors", h, "veloxseg", None, k, 3, 0, 8, threads, ["--recipe", "authors"], tag="recipe-authors"),
            Job("authors", h, "veloxseg", "pre-authors", k, 3, 0, 8, threads),
            # issue 22: the full-resolution output weighted above the coarse deep-supervision outputs
            Job("authors", h, "veloxseg", None, k, 3, 0, 8, threads, ["--ds-weights", "1", "0.5", "0.25", "0.125"],
                tag="ds-halving"),
            default_rerun(k, threads))]
    if "modality" in groups:  # issue 20: modality dropout against single-modality models, 8 CPU-min, 3 folds
        # (a), the full model with both modalities, is the ``authors`` group's default run (the same command)
        jobs += [j for k in range(3) for j in (
            Job("modality", h, "veloxseg", None, k, 3, 0, 8, threads, ["--modality-dropout", "0.3"], tag="dropout",
                missing=[[0], [1]]),
            Job("modality", h, "veloxseg", None, k, 3, 0, 8, threads, tag="pet-only", channels=[1]),
            Job("modality", h, "veloxseg", None, k, 3, 0, 8, threads, tag="ct-only", channels=[0]))]
    if "modality-brats" in groups:  # the same on BratsMini (FLAIR + T1c, one MRI block: single channels dropped)
        # (a), the full model, is the ``curve-brats`` group's VeloxSeg run at 8 CPU-minutes (the same command)
        b, sp = str(BRATS), ["--spacing", "3", "3", "3"]
        jobs += [j for k in range(4) for j in (
            Job("curve-brats", b, "veloxseg", None, k, 4, 0, 8, threads, sp),
            Job("modality-brats", b, "veloxseg", None, k, 4, 0, 8, threads, [*sp, "--modality-dropout", "0.3"],
                tag="dropout", missing=[[0], [1]]),
            Job("modality-brats", b, "veloxseg", None, k, 4, 0, 8, threads, sp, tag="flair-only", channels=[0]),
            Job("modality-brats", b, "veloxseg", None, k, 4, 0, 8, threads, sp, tag="t1c-only", channels=[1]))]
    if "curve" in groups:  # budgets of its own; short runs first, fold-major
        # VeloxSeg at 8 is the ``authors`` group's default rerun: the same command, with today's code
        jobs += [default_rerun(k, threads) if (m, b) == ("veloxseg", 8)
                 else Job("curve", h, m, None, k, 3, 0, b, threads)
                 for b in (2, 8, 30) for k in range(3) for m, mb in CURVE_HECKTOR if mb == b]
        jobs += [Job("curve-brats", str(BRATS), m, None, k, 4, 0, b, threads, ["--spacing", "3", "3", "3"])
                 for b in (8, 30) for k in range(4) for m, mb in CURVE_BRATS if mb == b]
    unique: dict[Path, Job] = {}  # a run two groups share is run once
    for j in jobs:
        if unique.setdefault(j.result_path, j) != j:
            raise ValueError(f"two different runs would write {j.result_path}: {unique[j.result_path]} and {j}")
    return list(unique.values())


def default_rerun(fold: int, threads: int) -> Job:
    """VeloxSeg's default at 8 CPU-minutes on HecktorMini with today's code (section 6's rerun; the curve's point)."""
    return Job("authors", str(HECKTOR), "veloxseg", None, fold, 3, 0, 8, threads, tag="default-rerun")


def run_job(job: Job, work: Path) -> dict:
    """Train, predict the held-out cases, score them; write and return the result record."""
    import torch

    from veloxseg.cli import main as cli_main
    from veloxseg.evaluation import evaluate_folders
    from veloxseg.inference import Predictor
    from veloxseg.inference.cases import Case
    from veloxseg.inference.runner import predict_cases

    run_dir = work / job.group / job.name
    orig = job
    if job.channels is not None:
        job = Job(**{**asdict(job), "dataset": str(channel_view(Path(job.dataset), job.channels, work / "views"))})
    marker = job.result_path.with_suffix(".running")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))  # another scheduler leaves this run alone while the process lives
    if run_dir.exists():  # interrupted earlier: start afresh
        shutil.rmtree(run_dir)
    args = job.train_args(run_dir)
    t0 = time.time()
    rc = cli_main(args)
    if rc != 0:
        raise SystemExit(f"veloxseg {' '.join(args)} failed with exit code {rc}")
    train_wall = time.time() - t0
    info = json.loads((run_dir / "run_info.json").read_text())
    split = json.loads((run_dir / "splits.json").read_text())
    ds = Path(job.dataset)
    channels = len(json.loads((ds / "dataset.json").read_text())["channel_names"])
    # the final weights (checkpoint_last), so the held-out cases never choose the model
    ckpt = run_dir / "checkpoint_last.pt"
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", threads=job.threads, overlap=0.25)
    torch.set_num_threads(job.threads)

    def scored(absent: tuple[int, ...], pred_dir: Path) -> dict:
        cases = [Case(c, tuple(ds / "imagesTr" / f"{c}_{i:04d}.nii.gz" for i in range(channels) if i not in absent),
                      absent) for c in split["val"]]
        summary = predict_cases(predictor, cases, pred_dir, progress=False)
        if summary.failed:
            raise SystemExit(f"prediction failed for {summary.failed}")
        ev = evaluate_folders(pred_dir, ds / "labelsTr", cases=split["val"])
        per_case: dict = {}
        for s in ev.scores:
            entry = per_case.setdefault(s.case, {"seconds": round(summary.seconds[s.case], 3), "labels": {}})
            entry["labels"][str(s.label)] = {"dice": _num(s.dice), "hd95_mm": _num(s.hd95_mm),
                                             "reference_voxels": s.reference_voxels,
                                             "predicted_voxels": s.predicted_voxels}
        return per_case

    per_case = scored((), run_dir / "pred")
    missing = {",".join(map(str, m)): scored(tuple(m), run_dir / f"pred_missing{'-'.join(map(str, m))}")
               for m in job.missing or []}
    record = {
        "job": asdict(job), "name": job.name,
        "command": "veloxseg " + " ".join(args),
        "predict": {"checkpoint": "checkpoint_last.pt", "overlap": 0.25, "threads": job.threads,
                    "seconds_note": "per case: reading, preprocessing, sliding window, writing"},
        "run_info": info, "train_wall_seconds_incl_setup": round(train_wall, 1),
        "val_cases": split["val"], "cases": per_case,
        **({"cases_missing": missing, "missing_note": "key: the absent channel indices; each zeroed after "
            "normalisation (veloxseg.inference.missing)"} if missing else {}),
        **({"channels": job.channels, "dataset_view_of": asdict(orig)["dataset"]} if job.channels is not None else {}),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_commit": _commit(),
    }
    job.result_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, job.result_path)
    marker.unlink(missing_ok=True)
    return record


def channel_view(dataset: Path, channels: list[int], root: Path) -> Path:
    """A data set holding only ``channels`` of ``dataset`` (renumbered from 0), as symlinks under ``root``.

    The case names are the original ones, so ``--num-folds``/``--seed`` give the same folds.
    """
    meta = json.loads((dataset / "dataset.json").read_text())
    names = meta["channel_names"]
    view = root / f"{dataset.name}_ch{'-'.join(map(str, channels))}"
    if (view / "dataset.json").exists():
        return view
    tmp = view.with_name(view.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").symlink_to((dataset / "labelsTr").resolve())
    for f in sorted((dataset / "imagesTr").iterdir()):
        case, _, rest = f.name.rpartition("_")
        idx = int(rest.split(".")[0])
        if idx in channels:
            (tmp / "imagesTr" / f"{case}_{channels.index(idx):04d}.nii.gz").symlink_to(f.resolve())
    new = {str(i): names[str(c)] for i, c in enumerate(channels)}
    (tmp / "dataset.json").write_text(json.dumps({**meta, "channel_names": new}, indent=2))
    try:
        tmp.rename(view)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return view


def running_elsewhere(job: Job) -> bool:
    """A live process (of another scheduler) is running ``job``."""
    marker = job.result_path.with_suffix(".running")
    try:
        pid = int(marker.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _commit() -> str | None:
    """The repository's HEAD commit (the code a run used), or None outside a git checkout."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _num(v: float) -> float | None:
    return None if v is None or v != v else round(float(v), 5)


def retime(work: Path, threads: int = 1, repeats: int = 3, shard: tuple[int, int] = (0, 1)) -> None:
    """Time each finished run's inference per case again, one run after another (a quieter machine).

    During the experiments inference shared the CPU with other runs; this re-measures it for every
    result the same way (warm-up, then the median of ``repeats`` predictions of each held-out case,
    ``threads`` threads) and stores it as ``seconds_retimed`` beside the original ``seconds``.
    """
    import statistics as st

    import torch

    from veloxseg.inference import Predictor
    from veloxseg.inference.cases import Case

    torch.set_num_threads(threads)
    for index, path in enumerate(sorted(RESULTS.glob("*/*.json"))):
        if index % shard[1] != shard[0]:  # several retiming processes split the runs
            continue
        rec = json.loads(path.read_text())
        if "job" not in rec or all("seconds_retimed" in c for c in rec["cases"].values()):  # not a run, or done
            continue
        job = Job(**rec["job"])
        ckpt = work / job.group / job.name / "checkpoint_last.pt"
        if not ckpt.exists():
            print(f"{path.name}: no checkpoint in {ckpt.parent}; not retimed", flush=True)
            continue
        predictor = Predictor.from_checkpoint(ckpt, device="cpu", threads=threads, overlap=0.25)
        ds = Path(job.dataset)
        channels = len(json.loads((ds / "dataset.json").read_text())["channel_names"])
        for case, entry in rec["cases"].items():
            c = Case(case, tuple(ds / "imagesTr" / f"{case}_{i:04d}.nii.gz" for i in range(channels)))
            predictor.predict_case(c)  # warm-up
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                predictor.predict_case(c)
                times.append(time.perf_counter() - t)
            entry["seconds_retimed"] = round(st.median(times), 4)
        rec["retimed"] = {"threads": threads, "repeats": repeats, "load_average": list(os.getloadavg()),
                          "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "shard": list(shard),
                          "note": "predict_case (read, preprocess, sliding window, back to the input grid), "
                                  "no writing; median of repeats after a warm-up"}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=2))
        os.replace(tmp, path)
        print(f"retimed {path.parent.name}/{path.name}", flush=True)


def regenerate_doc() -> None:
    subprocess.run([sys.executable, str(HERE / "make_results.py")], check=False)


def schedule(jobs: list[Job], work: Path, parallel: int, logs: Path, stop_at: float | None,
             max_heavy: int = 1) -> None:
    """Run the jobs that have no result yet, ``parallel`` at a time (at most ``max_heavy`` heavy models)."""
    todo = [j for j in jobs if not j.result_path.exists()]
    elsewhere = [j for j in todo if running_elsewhere(j)]  # count towards --parallel until they end
    todo = [j for j in todo if j not in elsewhere]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already done; {len(todo)} to run, {parallel} at a time",
          flush=True)
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[subprocess.Popen, Job] = {}
    while todo or running or elsewhere:
        elsewhere = [j for j in elsewhere if running_elsewhere(j)]
        for proc, job in list(running.items()):
            if proc.poll() is not None:
                del running[proc]
                ok = proc.returncode == 0 and job.result_path.exists()
                print(f"{time.strftime('%H:%M:%S')} {'done' if ok else 'FAILED'} {job.group}/{job.name} "
                      f"(rc {proc.returncode})", flush=True)
                regenerate_doc()
        past = stop_at is not None and time.time() >= stop_at
        while todo and len(running) + len(elsewhere) < parallel and not past:
            heavy_running = sum(j.model in HEAVY for j in [*running.values(), *elsewhere]) >= max_heavy
            pick = next((j for j in todo if not (heavy_running and j.model in HEAVY)), None)
            if pick is None:
                break
            todo.remove(pick)
            log = open(logs / f"{pick.group}_{pick.name}.log", "w")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(asdict(pick)),
                   "--work", str(work)]
            env = {"OMP_WAIT_POLICY": "PASSIVE",  # the run imports torch before the CLI could set it (runtime.py)
                   **os.environ, "OMP_NUM_THREADS": str(pick.threads), "MKL_NUM_THREADS": str(pick.threads)}
            running[subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)] = pick
            print(f"{time.strftime('%H:%M:%S')} start {pick.group}/{pick.name}", flush=True)
        if past and not running and not elsewhere:
            print(f"stop time reached; {len(todo)} run(s) not started", flush=True)
            break
        time.sleep(2)
    regenerate_doc()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", nargs="+", default=["hecktor", "ablation", "seeds", "brats"],
                    choices=["hecktor", "ablation", "seeds", "brats", "curve", "authors", "modality", "modality-brats"],
                    help="default: all but curve (the Dice-per-CPU-minute runs, which bring their own budgets)")
    ap.add_argument("--budget", type=float, default=1.5,
                    help="training budget per run, minutes of the run's own CPU time (default 1.5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--parallel", type=int, default=3,
                    help="runs at a time (default 3; the budget is CPU time, so this does not change a run's share)")
    ap.add_argument("--max-heavy", type=int, default=1, help="SwinUNETR/DynUNet runs at a time (default 1)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/veloxseg-exp"), help="run folders (outside the repo)")
    ap.add_argument("--stop-at", help="start no run after this UTC time (HH:MM)")
    ap.add_argument("--list", action="store_true", help="list the runs and whether they are done")
    ap.add_argument("--retime", action="store_true",
                    help="re-measure the inference time of every finished run, one at a time, then regenerate the doc")
    ap.add_argument("--repeats", type=int, default=3, help="--retime: timed predictions per case (default 3)")
    ap.add_argument("--shard", default="0/1", help="--retime: this process re-times runs i, i+n, ... (I/N)")
    ap.add_argument("--only", nargs="+", metavar="GLOB",
                    help="only the runs whose GROUP/NAME matches one of these patterns, e.g. 'curve/*_2min_*'")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        job = Job(**json.loads(a.one))
        rec = run_job(job, a.work)
        dice = [c["labels"][k]["dice"] for c in rec["cases"].values() for k in c["labels"]]
        print(f"{job.name}: Dice {dice}")
        return 0
    if a.retime:
        i, n = (int(x) for x in a.shard.split("/"))
        retime(a.work, a.threads, a.repeats, (i, n))
        regenerate_doc()
        return 0
    jobs = all_jobs(a.budget, a.threads, a.groups)
    if a.only:
        import fnmatch

        jobs = [j for j in jobs if any(fnmatch.fnmatch(f"{j.group}/{j.name}", pat) for pat in a.only)]
    if a.list:
        for j in jobs:
            print(f"{'done' if j.result_path.exists() else 'todo'} {j.group}/{j.name}")
        return 0
    stop = None
    if a.stop_at:
        hh, mm = (int(x) for x in a.stop_at.split(":"))
        now = time.gmtime()
        stop = time.time() + ((hh * 60 + mm) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec
    schedule(jobs, a.work, a.parallel, a.work / "logs", stop, a.max_heavy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
