"""Compare two ``veloxseg bench --json`` results: how far apart are the machine-independent figures?

    python benchmarks/compare.py first.json second.json

Prints, for every model and thread count, the relative difference between the two runs of the
time ratio to VeloxSeg, the fraction of the conv ceiling and the training-step ratio, and the
largest of them (the issue's reproducibility check: ratios within 20 %).
"""

from __future__ import annotations

import json
import sys


def rel(a: float | None, b: float | None) -> float | None:
    """``|a - b| / min(a, b)``, or None when either is missing."""
    if a is None or b is None or min(a, b) <= 0:
        return None
    return abs(a - b) / min(a, b)


def main(first: str, second: str) -> int:
    runs = [json.load(open(p)) for p in (first, second)]
    worst = 0.0
    print("| model | threads | figure | run 1 | run 2 | difference |")
    print("|---|---:|---|---:|---:|---:|")
    for name, e1 in runs[0]["models"].items():
        e2 = runs[1]["models"].get(name, {})
        pairs = []
        for t, tm in e1.get("throughput", {}).items():
            tm2 = e2.get("throughput", {}).get(t, {})
            pairs += [(t, "time × VeloxSeg", tm.get("time_vs_veloxseg"), tm2.get("time_vs_veloxseg")),
                      (t, "fraction of conv ceiling", tm.get("conv_fraction"), tm2.get("conv_fraction"))]
        tr1, tr2 = e1.get("train") or {}, e2.get("train") or {}
        pairs.append(("train", "train step × VeloxSeg", tr1.get("time_vs_veloxseg"), tr2.get("time_vs_veloxseg")))
        for t, label, a, b in pairs:
            d = rel(a, b)
            if d is None:
                continue
            worst = max(worst, d)
            print(f"| {name} | {t} | {label} | {a:.3f} | {b:.3f} | {100 * d:.1f} % |")
    print(f"\nlargest difference: {100 * worst:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
