"""Optional dependencies: an inference install stays lean, and a feature that needs more says what to install.

``pip install veloxseg`` predicts, evaluates and exports; training (curves, TensorBoard) needs the
``train`` extra, DICOM the ``dicom`` extra, ONNX the ``deploy`` extra (see pyproject.toml).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from .errors import VeloxSegError

#: what ``veloxseg train`` (and the demo) needs beyond an inference install
TRAIN_MODULES: tuple[str, ...] = ("matplotlib", "tensorboard")


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The top-level modules of ``modules`` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(modules: Sequence[str], feature: str, extra: str) -> None:
    """A one-line :class:`VeloxSegError` naming what ``feature`` needs and how to install it, if anything is missing."""
    missing = missing_modules(modules)
    if missing:
        raise VeloxSegError(f"{feature} needs {', '.join(missing)}, which is not installed: "
                            f"pip install 'veloxseg[{extra}]'")
