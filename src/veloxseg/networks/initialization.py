"""Weight initialisation schemes of VeloxSeg.

``"he"`` is the authors' (their ``model/components/initialization.py``, applied to the whole network
after construction, nnU-Net's ``InitWeights_He``): every 3-D convolution and transposed convolution
gets He-normal weights for a leaky ReLU of slope ``0.01`` (``kaiming_normal_(a=0.01)``, fan-in) and
zero biases. Norm layers keep weight 1 and bias 0 and the attention's relative-position bias tables
their truncated normal (std 0.02), as in both codes. ``"pytorch"`` leaves PyTorch's default
(Kaiming-uniform with ``a = sqrt(5)``, uniform biases: weights about 2.4x narrower, biases non-zero).
"""

from __future__ import annotations

from torch import nn

#: initialisation schemes :class:`~veloxseg.networks.VeloxSeg` accepts
INITS: tuple[str, ...] = ("he", "pytorch")

#: negative slope of the leaky ReLU the authors' He-normal initialisation is computed for
HE_NEG_SLOPE = 1e-2


def init_weights_(model: nn.Module, scheme: str) -> nn.Module:
    """Initialise ``model``'s convolutions in place with ``scheme`` (see the module docstring); returns it."""
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INITS)}")
    if scheme == "pytorch":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=HE_NEG_SLOPE)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
