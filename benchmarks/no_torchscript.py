"""``veloxseg predict`` of a cohort with TorchScript and with TorchScript unavailable, side by side.

Issue 19's target: the day PyTorch removes TorchScript (simulated here: ``torch.jit.trace``, ``script``
and ``freeze`` raise), ``predict`` of a large cohort takes at most 1.1x its time with TorchScript.

Run from the repository root:

    python benchmarks/no_torchscript.py [--cases 6] [--shape 400 400 200] [--threads 2] [--repeats 2]

Writes a cohort of synthetic body-shaped PET/CT cases and a random-weight VeloxSeg checkpoint (autopet
preset, 96^3 windows at 2 mm; :mod:`predict_memory`'s), then runs ``veloxseg predict`` on the whole
cohort in fresh processes, alternating with and without TorchScript, and reports each run's time of the
``predict`` command itself (imports excluded) with the CPU model and its bf16 flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict_memory import cpu_line, write_case, write_checkpoint  # noqa: E402


def _raise(*args, **kwargs):
    raise RuntimeError("TorchScript is unavailable (simulated by benchmarks/no_torchscript.py)")


def child(argv: list[str], no_torchscript: bool) -> float:
    """Run ``veloxseg predict argv`` in this process; return its seconds."""
    import torch

    from veloxseg.cli import main as cli_main

    if no_torchscript:
        torch.jit.trace = torch.jit.script = torch.jit.freeze = _raise
    t = time.perf_counter()
    rc = cli_main(["predict", *argv])
    if rc != 0:
        raise SystemExit(rc)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--shape", type=int, nargs=3, default=[400, 400, 200], help="voxels at 1 x 1 x 1.5 mm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        spec = json.loads(a.child)
        print(json.dumps({"seconds": child(spec["argv"], spec["no_torchscript"])}))
        return 0
    with tempfile.TemporaryDirectory(prefix="veloxseg-nots-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        write_case(root / "in", tuple(a.shape), 2)
        for k in range(1, a.cases):  # the same case under other names: a cohort of equal cases
            for c in range(2):
                (root / "in" / f"case{k}_{c:04d}.nii").symlink_to(root / "in" / f"case_{c:04d}.nii")
        write_checkpoint(root / "model.pt", 2)
        times: dict[str, list[float]] = {"with TorchScript": [], "TorchScript unavailable": []}
        for r in range(a.repeats):
            order = list(times) if r % 2 == 0 else list(times)[::-1]
            for name in order:
                argv = ["-m", str(root / "model.pt"), "-i", str(root / "in"), "-o", str(root / "out"), "--threads",
                        str(a.threads), "--overwrite", "--quiet"]
                spec = json.dumps({"argv": argv, "no_torchscript": name != "with TorchScript"})
                out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-3000:])
                    return out.returncode
                times[name].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["TorchScript unavailable"] / med["with TorchScript"]
    print(f"machine: {cpu_line()}; torch {__import__('torch').__version__}; {a.threads} thread(s)")
    print(f"cohort: {a.cases} cases of 2x{'x'.join(map(str, a.shape))} (1 x 1 x 1.5 mm, predicted at 2 mm, 96^3 "
          f"windows); median of {a.repeats} runs each")
    print(f"with TorchScript {med['with TorchScript']:.1f} s, TorchScript unavailable "
          f"{med['TorchScript unavailable']:.1f} s: {ratio:.2f}x (target <= 1.10x)")
    if a.json:
        a.json.write_text(json.dumps({"machine": cpu_line(), "cases": a.cases, "shape": a.shape,
                                      "threads": a.threads, "times": times, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
