"""veloxseg: lightweight multi-modal 3-D medical image segmentation with VeloxSeg (ICLR 2026)."""

from .losses import VeloxSegLoss, VeloxSegLossParts
from .networks import VeloxSeg, VeloxSegOutput

__version__ = "0.1.0"

__all__ = ["VeloxSeg", "VeloxSegOutput", "VeloxSegLoss", "VeloxSegLossParts", "__version__"]
