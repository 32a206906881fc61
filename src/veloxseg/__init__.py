"""veloxseg: lightweight multi-modal 3-D medical image segmentation with VeloxSeg (ICLR 2026)."""

from .losses import VeloxSegLoss, VeloxSegLossParts
from .networks import VeloxSeg, VeloxSegOutput


def __getattr__(name: str):
    # Predictor pulls in the prediction stack (MONAI transforms, nibabel): import it on first use
    if name == "Predictor":
        from .inference import Predictor

        return Predictor
    raise AttributeError(f"module 'veloxseg' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = ["Predictor", "VeloxSeg", "VeloxSegOutput", "VeloxSegLoss", "VeloxSegLossParts", "__version__"]
