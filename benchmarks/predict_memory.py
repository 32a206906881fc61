"""Peak memory of ``veloxseg predict`` on one large case, against the bound of issue 17.

Run from the repository root:

    python benchmarks/predict_memory.py [--shape 480 480 320] [--channels 2] [--keep DIR]

Writes a synthetic uncompressed float32 case (a body-shaped CT and a PET, 1.0 x 1.0 x 1.5 mm) and a
VeloxSeg checkpoint with random weights whose plan resamples to 2 mm with 96^3 windows (the
autopet preset), then runs ``veloxseg predict`` in a fresh process under ``/usr/bin/time -v`` and
reports its peak resident memory beside the input's float32 size and the bound
``3 x input + 1.5 GB``. The CPU model and its bf16 flags are printed with the figure.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def cpu_line() -> str:
    """The CPU model and its bf16 flags, as every figure records them."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "unknown")
    flags = sorted({f for f in ("avx512_bf16", "amx_bf16") if re.search(rf"\b{f}\b", text)})
    return f"{model} (flags: {', '.join(flags) or 'no bf16'})"


def write_case(folder: Path, shape: tuple[int, int, int], channels: int) -> int:
    """``case_000X.nii`` files (uncompressed float32); returns the input's float32 bytes."""
    import nibabel as nib

    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    r2 = sum(((g - s / 2) / (s / 2.4)) ** 2 for g, s in zip(grid[:2], shape[:2]))
    body = np.broadcast_to(r2 < 1.0, shape)
    for c in range(channels):
        data = np.where(body, 40.0, -1000.0).astype(np.float32) if c == 1 else \
            np.where(body, 1.0, 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"case_{c:04d}.nii"))
    return int(np.prod(shape)) * channels * 4


def write_checkpoint(path: Path, channels: int) -> None:
    """A random-weight VeloxSeg (autopet preset) with a plan at 2 mm."""
    import torch

    from veloxseg import VeloxSeg
    from veloxseg.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = VeloxSeg.from_preset("autopet").for_inference()
    names = ["PET", "CT"][:channels]
    plan = {"channel_names": names, "spacing": [2.0, 2.0, 2.0], "patch_size": [96, 96, 96],
            "normalization": [{"scheme": "zscore"}, {"scheme": "ct", "mean": 0.0, "std": 500.0,
                                                      "lower": -1000.0, "upper": 1000.0}][:channels],
            "crop_foreground": True}
    save_checkpoint(path, {"model_name": "veloxseg", "model_kwargs": dict(model.hparams),
                           "state_dict": model.state_dict(), "labels": {"background": 0, "lesion": 1},
                           "channel_names": names, "plan": plan})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[480, 480, 320])
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="write the case and checkpoint here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="veloxseg-mem-") as tmp:
        root = args.keep or Path(tmp)
        (root / "in").mkdir(parents=True, exist_ok=True)
        nbytes = write_case(root / "in", tuple(args.shape), args.channels)
        write_checkpoint(root / "model.pt", args.channels)
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "veloxseg", "predict", "-m", str(root / "model.pt"),
               "-i", str(root / "in"), "-o", str(root / "out"), "--quiet", "--overwrite"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return proc.returncode
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", proc.stderr).group(1)
    gb = 1024 ** 3
    bound = 3 * nbytes + 1.5 * gb
    print(f"machine: {cpu_line()}")
    print(f"case {args.channels}x{'x'.join(map(str, args.shape))} float32: {nbytes / gb:.2f} GB")
    print(f"peak RSS of `veloxseg predict`: {peak_kb * 1024 / gb:.2f} GB = {peak_kb * 1024 / nbytes:.1f}x the input "
          f"(bound 3x + 1.5 GB = {bound / gb:.2f} GB: {'met' if peak_kb * 1024 <= bound else 'NOT met'}); "
          f"wall {wall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
