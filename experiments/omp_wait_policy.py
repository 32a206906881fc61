"""Do idle OpenMP threads spinning on an oversubscribed CPU eat a CPU-time budget?

Runs a few VeloxSeg training steps (4 crops of 64x64x32, the demo's shape) with ``--threads``
threads in a fresh process per OpenMP wait policy, while ``--hogs`` CPU-bound ``yes`` processes run
beside it, and prints the process CPU seconds and wall seconds per step for each policy.

    python experiments/omp_wait_policy.py --threads 2 --hogs 1 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEP = r"""
import json, resource, sys, time
import torch
from veloxseg.networks import VeloxSeg
from veloxseg.losses import VeloxSegLoss
threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = VeloxSeg(in_channels=[1, 1], out_channels=2, img_size=[64, 64, 32])
loss_fn = VeloxSegLoss()
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
x = torch.randn(4, 2, 64, 64, 32)
y = (torch.rand(4, 1, 64, 64, 32) > 0.9).long()
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(net(x), y, x).total.backward()
    opt.step()
step()  # warm-up
c0, w0 = cpu(), time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"cpu_s_per_step": (cpu() - c0) / steps, "wall_s_per_step": (time.perf_counter() - w0) / steps}))
"""


def measure(policy: str | None, threads: int, steps: int) -> dict:
    """CPU and wall seconds per step in a fresh process with ``OMP_WAIT_POLICY=policy`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(steps)], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hogs", type=int, default=1, help="CPU-bound `yes` processes running beside (default 1)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--policies", nargs="+", default=["default", "PASSIVE"])
    args = p.parse_args()
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.hogs)]
    try:
        load0 = os.getloadavg()
        for policy in args.policies:
            r = measure(None if policy == "default" else policy, args.threads, args.steps)
            print(f"OMP_WAIT_POLICY={policy:8s} {args.threads} threads, {args.hogs} hog(s): "
                  f"{r['cpu_s_per_step']:.2f} CPU s/step, {r['wall_s_per_step']:.2f} wall s/step", flush=True)
        print(f"load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} logical cores")
    finally:
        for h in hogs:
            h.kill()
            h.wait()


if __name__ == "__main__":
    main()
