"""What removing the TorchScript graph's private ``torch._C`` edits cost, paired, in one run.

Before (commit 9f2077b): ``FrozenGraph`` traced, froze, then folded every size and weight-only value into
constants and reordered the conv weights for oneDNN through private ``torch._C`` APIs. After (this
version): traced and frozen only. Both graphs of the same deployed network (autopet preset, random
weights) alternate forward by forward, batch 1, at 1 and 2 threads; the figure is the median of the
paired differences. The old module is read from git, so run it from a clone that has that commit:

    python benchmarks/graph_edits_ab.py [--forwards 100] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from veloxseg import VeloxSeg
from veloxseg.inference.graph import FrozenGraph
from veloxseg.presets import get_preset
from veloxseg.runtime import tune_allocator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_ab import alternate  # noqa: E402

BEFORE = "9f2077b"


def old_graph_class(commit: str = BEFORE) -> type:
    """``FrozenGraph`` as it was at ``commit`` (imported from ``git show``, relative imports made absolute)."""
    src = subprocess.run(["git", "show", f"{commit}:src/veloxseg/inference/graph.py"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    src = src.replace("from ..networks.layers import", "from veloxseg.networks.layers import")
    path = Path(tempfile.mkdtemp()) / "graph_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("graph_before", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.FrozenGraph


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forwards", type=int, default=100)
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    tune_allocator()
    model = VeloxSeg.from_preset("autopet").for_inference()
    x = torch.randn(1, *get_preset("autopet").input_shape[1:], generator=torch.Generator().manual_seed(0))
    before, after = old_graph_class()(model), FrozenGraph(model)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    flags = [f for f in ("avx512_bf16", "amx_bf16") if f in open("/proc/cpuinfo").read()]
    print(f"machine: {cpu} (flags: {', '.join(flags) or 'no bf16'}); torch {torch.__version__}")
    with torch.inference_mode():
        for threads in (int(t) for t in a.threads.split(",")):
            torch.set_num_threads(threads)
            diff = (after(x) - before(x)).abs().max().item()  # traces both for this thread count
            for _ in range(3):
                before(x), after(x)
            times = alternate(before, after, x, a.forwards)
            paired = [b - c for b, c in zip(times["after"], times["before"])]
            mb, ma = statistics.median(times["before"]), statistics.median(times["after"])
            print(f"{threads} thread(s): with the private edits {1000 * mb:.2f} ms, without {1000 * ma:.2f} ms; "
                  f"paired difference {1000 * statistics.median(paired):+.2f} ms "
                  f"({statistics.median(paired) / mb:+.1%}); max |logit diff| {diff:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
