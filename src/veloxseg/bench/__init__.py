"""Benchmarks: VeloxSeg against the MONAI baselines, and this machine's compute ceiling (``veloxseg bench``)."""

from .models import DEFAULT_MODELS, build_model, known_models, training_loss
from .report import document, markdown, plot
from .runner import PARTS, BenchConfig, run_bench

__all__ = ["DEFAULT_MODELS", "PARTS", "BenchConfig", "build_model", "document", "known_models", "markdown", "plot",
           "run_bench", "training_loss"]
