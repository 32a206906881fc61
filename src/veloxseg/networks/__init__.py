"""VeloxSeg network parts, one paper idea per module."""

from .jlc import JLCBlock
from .pwa import PairedWindowAttention, PWABlock, window_pairs
from .sdkt import TextureTeacher, gram_matrix
from .veloxseg import VeloxSeg, VeloxSegOutput, resolve_windows

__all__ = ["JLCBlock", "PairedWindowAttention", "PWABlock", "window_pairs", "TextureTeacher", "gram_matrix",
           "VeloxSeg", "VeloxSegOutput", "resolve_windows"]
