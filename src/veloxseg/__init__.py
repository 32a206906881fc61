"""veloxseg: lightweight multi-modal 3-D medical image segmentation with VeloxSeg (ICLR 2026).

The package's names load on first use, so ``import veloxseg`` (and the ``veloxseg`` command
before it runs a sub-command) does not load torch: a training run can still choose OpenMP's
wait policy (:func:`veloxseg.runtime.prefer_passive_omp_wait`) before torch starts it.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"VeloxSegLoss": ".losses", "VeloxSegLossParts": ".losses", "VeloxSeg": ".networks",
         "VeloxSegOutput": ".networks", "Predictor": ".inference"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'veloxseg' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = ["Predictor", "VeloxSeg", "VeloxSegOutput", "VeloxSegLoss", "VeloxSegLossParts", "__version__"]
