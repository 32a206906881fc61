"""The models ``veloxseg bench`` compares: VeloxSeg, its ablation variants and the MONAI baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..baselines import BASELINES, baseline_loss, build_baseline
from ..networks.layers import fast_paths
from ..presets import get_preset
from ..variants import VARIANTS

STRAIGHTFORWARD = "veloxseg-straightforward"
#: the deployed VeloxSeg run from an AOTInductor package (``veloxseg predict --engine pt2``)
PT2 = "veloxseg-pt2"
DEFAULT_MODELS: tuple[str, ...] = ("veloxseg", STRAIGHTFORWARD, *BASELINES)
#: a model name with this suffix is that model in bfloat16 (``bench --precision fp32,bf16``)
BF16 = "@bf16"
#: the models that have a bf16 row: the deployed paths of ``veloxseg predict --precision bf16``
BF16_MODELS: tuple[str, ...] = ("veloxseg", PT2)


class StraightforwardPaths(nn.Module):
    """VeloxSeg with its fast CPU kernels switched off (PyTorch's default ops): the "before" row.

    Same weights and the same computation; only the kernels differ (see
    ``veloxseg.networks.layers.fast_paths``).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> object:
        with fast_paths(False):
            return self.module(x)

LossFn = Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor]


def known_models() -> list[str]:
    """Every name ``--models`` accepts: VeloxSeg, the baselines, the pt2 engine, then the ablation variants
    (and the bf16 rows of :data:`BF16_MODELS`, which ``--precision`` adds)."""
    return [*DEFAULT_MODELS, PT2, *VARIANTS, *(m + BF16 for m in BF16_MODELS)]


def split_precision(name: str) -> tuple[str, str]:
    """``("veloxseg", "bf16")`` for ``"veloxseg@bf16"``, ``(name, "fp32")`` otherwise."""
    return (name[: -len(BF16)], "bf16") if name.endswith(BF16) else (name, "fp32")


class CompiledPackage(nn.Module):
    """The deployed network run from an AOTInductor package compiled at its first call per input shape
    (:class:`veloxseg.inference.pt2.CompiledEngine`, in a temporary cache of this process). Eager where the
    package does not apply: gradients on, or the fast kernels off (FLOP counting)."""

    def __init__(self, module: nn.Module, precision: str = "fp32") -> None:
        super().__init__()
        import tempfile
        from pathlib import Path

        from ..inference.pt2 import CompiledEngine

        self.module = module.eval()
        self._tmp = tempfile.TemporaryDirectory(prefix="veloxseg-bench-pt2-")
        self.engine = CompiledEngine(self.module, f"bench{id(self):x}".ljust(24, "0"), self._eager, precision,
                                     Path(self._tmp.name))

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..networks.layers import fast_paths_enabled

        if torch.is_grad_enabled() or not fast_paths_enabled():
            return self.module(x)
        return self.engine(x)


_COMPILED: dict[tuple, CompiledPackage] = {}


def check_models(names: Sequence[str]) -> list[str]:
    """Normalise and validate model names (one-line error listing the valid ones)."""
    valid = known_models()
    out = [n.strip().lower() for n in names if n.strip()]
    bad = [n for n in out if n not in valid]
    if bad:
        raise ValueError(f"unknown model {bad[0]!r}; choose from {', '.join(valid)}")
    if not out:
        raise ValueError("no model given")
    return list(dict.fromkeys(out))


def _veloxseg(name: str, preset: str, size: tuple[int, int, int]) -> nn.Module:
    from ..variants import build_variant

    overrides: dict[str, object] = {}
    if tuple(size) != tuple(get_preset(preset).patch_size):
        overrides = {"img_size": tuple(size), "window_sizes": None}  # derive windows for the new size
    return build_variant("full" if name == "veloxseg" else name, preset, **overrides)


def build_model(name: str, preset: str, size: Sequence[int], train: bool = False, trace_after: int = 0) -> nn.Module:
    """Model ``name`` for ``preset``'s channels and classes at patch ``size``.

    ``train=False`` gives the deployed network in eval mode (VeloxSeg without teachers or
    deep-supervision heads, run on a CPU as the frozen TorchScript graph `veloxseg predict` uses;
    its straightforward row runs eagerly on PyTorch's default ops; ``trace_after`` eager calls per
    window shape before tracing, 0 for at once); ``train=True`` the full training network in train mode.
    """
    p = get_preset(preset)
    size3 = tuple(int(s) for s in size)
    base, precision = split_precision(name)
    if base == PT2:  # compiled once per process and shape (about a minute each), kept for every round
        if train:
            return build_model("veloxseg", preset, size3, train=True)
        key = (name, preset, size3)
        if key not in _COMPILED:
            _COMPILED[key] = CompiledPackage(_veloxseg("veloxseg", preset, size3).for_inference(), precision)
        return _COMPILED[key]
    if precision == "bf16":  # a bfloat16 copy run channels-last, float32 logits (predict --precision bf16)
        if train:  # trained with bf16 autocast and float32 weights (the worker's step)
            return build_model(base, preset, size3, train=True)
        from ..inference.pt2 import for_precision

        return for_precision(_veloxseg(base, preset, size3).for_inference(), "bf16")  # type: ignore[operator]
    if name == STRAIGHTFORWARD:
        return StraightforwardPaths(build_model("veloxseg", preset, size3, train)).train(train)
    if name in BASELINES:
        model = build_baseline(name, sum(p.model["in_channels"]), p.model["out_channels"], size3)
        return model.train() if train else model.eval()
    model = _veloxseg(name, preset, size3)  # type: ignore[arg-type]
    if train:
        return model.train()
    from ..inference.graph import FrozenGraph

    return FrozenGraph(model.for_inference(), trace_after)  # type: ignore[operator]  # as `veloxseg predict` runs it


def training_loss(name: str) -> LossFn:
    """``loss(train-mode output, labels, image)`` of model ``name`` (each model's own loss)."""
    name = split_precision(name)[0]
    if name == PT2:
        name = "veloxseg"
    if name == STRAIGHTFORWARD:
        fast = training_loss("veloxseg")

        def straightforward(out: object, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with fast_paths(False):
                return fast(out, y, x)

        return straightforward
    if name in BASELINES:
        fn = baseline_loss(name)
        return lambda out, y, x: fn(out, y)  # type: ignore[arg-type]
    from ..variants import variant_loss

    loss = variant_loss("full" if name == "veloxseg" else name)
    return lambda out, y, x: loss(out, y, x).total  # type: ignore[arg-type]
