"""The deployed network as a ``torch.export`` program compiled ahead of time by AOTInductor (``.pt2``).

A package takes a ``(B, C, *window)`` float32 tensor, any batch ``B >= 1``, and returns the logits in
float32. In bf16 the cast to bfloat16 and the channels-last layout are compiled into the package with
the network, whose weights are bfloat16; the logits come back as float32. A package is native code
built for the instruction sets of the CPU it was compiled on: load only packages you built yourself.

Two ways to get one:

- ``veloxseg export --format pt2`` writes it with the JSON sidecar of every export
  (:func:`veloxseg.export.export_module`); ``veloxseg predict -m model.pt2`` loads it as it is.
- ``veloxseg predict --engine pt2`` with a checkpoint compiles the network once per window shape and
  keeps the package in the user's cache directory (:func:`cache_dir`), keyed by the checkpoint's
  SHA-256, the precision, the torch and veloxseg versions and the CPU's instruction-set flags. The cache
  is never read from beside a checkpoint, only from that directory, and only if it belongs to this user
  and nobody else can write to it.

Compiling needs a C++ compiler (about a minute of CPU for the autopet network); without one, or if
compiling fails, the engine says so in one line and runs its fallback (the ``torch`` engine).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from .cpu import cpu_signature
from ..io import file_sha256

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: AOTInductor settings of every package: weights folded into the compiled graph (``freezing``), and the
#: thread count read at run time (``torch.set_num_threads``), so one package serves every thread count
INDUCTOR_CONFIGS: dict[str, object] = {"freezing": True, "layout_optimization": False, "cpp.dynamic_threads": True}
CACHE_ENV = "VELOXSEG_CACHE_DIR"
Runner = Callable[[torch.Tensor], torch.Tensor]


class CompileUnavailable(RuntimeError):
    """AOTInductor cannot compile here (no C++ compiler)."""


def cxx_compiler() -> str | None:
    """Path of the C++ compiler AOTInductor would call (``$CXX``, else ``g++``/``clang++``/``c++``), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and (found := shutil.which(name)):
            return found
    return None


class Cast(nn.Module):
    """``module`` run in ``dtype`` on a channels-last input; takes and returns float32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last_3d)
        return self.module(x).float()


def for_precision(module: nn.Module, precision: str) -> nn.Module:
    """``module`` as it is (fp32), or a bfloat16 copy behind :class:`Cast` (bf16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return module
    import copy

    return Cast(copy.deepcopy(module), torch.bfloat16).eval()


def compile_package(module: nn.Module, example: torch.Tensor, path: str | os.PathLike, precision: str = "fp32") -> Path:
    """Export ``module`` (eval mode) at ``example``'s channels and window with a dynamic batch, compile it
    with AOTInductor and write the package to ``path``. ``example`` should have a batch of 2 or more
    (an example of batch 1 would fix the batch at 1)."""
    if cxx_compiler() is None:
        raise CompileUnavailable("no C++ compiler found (AOTInductor needs g++ or clang++; set $CXX)")
    net = for_precision(module.eval(), precision)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
        out = torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                       inductor_configs=dict(INDUCTOR_CONFIGS))
    return Path(out)


def example_input(shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    """A fixed random float32 input ``(batch, *shape)`` to export and check with (batch 2: the batch stays dynamic)."""
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


def load_package(path: str | os.PathLike) -> Runner:
    """A loaded package (``torch._inductor.aoti_load_package``): native code, load only your own."""
    return torch._inductor.aoti_load_package(str(path))


class PackageEngine:
    """A ``.pt2`` package run from several threads at once (:class:`~.streams.WindowStreams`): each call
    takes one of the loaded copies (one more is loaded when all are busy), so calls never wait for each other."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._free: queue.SimpleQueue[Runner] = queue.SimpleQueue()
        self._free.put(load_package(self.path))
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            runner = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                runner = load_package(self.path)
        try:
            with torch.no_grad():
                return runner(x.to(torch.float32).contiguous())
        finally:
            self._free.put(runner)


def cache_dir() -> Path:
    """Where compiled packages are kept: ``$VELOXSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/veloxseg``, else
    ``~/.cache/veloxseg``; packages go into its ``pt2`` folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "pt2"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "veloxseg" / "pt2"


def private_dir(path: Path) -> bool:
    """Create ``path`` (mode 0700) if missing; True if it belongs to this user and nobody else can write to it."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        return False
    return not hasattr(os, "getuid") or st.st_uid == os.getuid()


def package_name(weights_sha256: str, shape: tuple[int, ...], precision: str) -> str:
    """The cache file name of a package: the weights' digest, the window shape ``(C, D, H, W)``, the precision,
    and a digest of what else makes a package unusable elsewhere (torch and veloxseg versions, CPU flags,
    the compile settings)."""
    env = f"{torch.__version__}|{__version__}|{cpu_signature()}|{sorted(INDUCTOR_CONFIGS.items())}"
    env_digest = hashlib.sha256(env.encode()).hexdigest()[:12]
    return f"{weights_sha256[:24]}-{'x'.join(map(str, shape))}-{precision}-{env_digest}.pt2"


class CompiledEngine:
    """The network compiled once per window shape into a cached package, then run from it.

    ``weights_sha256`` names the weights (the checkpoint file's SHA-256). A window shape is compiled on
    its first call (and kept in :func:`cache_dir`), or loaded from there when an earlier run compiled it.
    Where compiling is impossible or fails, it says so once and runs ``fallback`` from then on.
    ``compiled`` and ``loaded`` count packages compiled and taken from the cache.
    """

    def __init__(self, module: nn.Module, weights_sha256: str, fallback: Runner, precision: str = "fp32",
                 directory: Path | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.module = module.eval()
        self.sha256 = weights_sha256
        self.fallback = fallback
        self.precision = precision
        self.directory = directory or cache_dir()
        self.compiled = self.loaded = 0
        self.compile_seconds = 0.0
        self._engines: dict[tuple[int, ...], Runner] = {}
        self._failed = False
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._failed or x.device.type != "cpu":
            return self.fallback(x)
        key = tuple(x.shape[1:])
        engine = self._engines.get(key)
        if engine is None:
            with self._lock:  # several streams: one compiles, the others wait
                engine = self._engines.get(key) or self._prepare(x)
            if engine is None:
                return self.fallback(x)
        return engine(x)

    def _prepare(self, x: torch.Tensor) -> Runner | None:
        shape = tuple(x.shape[1:])
        try:
            if cxx_compiler() is None:
                raise CompileUnavailable("no C++ compiler found (AOTInductor needs g++ or clang++; set $CXX)")
            if private_dir(self.directory):
                path = self.directory / package_name(self.sha256, shape, self.precision)
                if not path.is_file():
                    self._compile(x, path)
                else:
                    self.loaded += 1
                engine = PackageEngine(path)
            else:
                log.warning("%s is not a private folder of this user: compiling without a cache", self.directory)
                with tempfile.TemporaryDirectory(prefix="veloxseg-pt2-") as tmp:
                    path = Path(tmp) / "model.pt2"
                    self._compile(x, path)
                    engine = PackageEngine(path)  # loaded into memory before the folder goes
        except Exception as err:  # noqa: BLE001 - no compiler, or the compile failed: run the fallback
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            log.warning("pt2 engine unavailable (%s: %s); running the torch engine instead", type(err).__name__, reason)
            self._failed = True
            return None
        self._engines[shape] = engine
        return engine

    def _compile(self, x: torch.Tensor, path: Path) -> None:
        log.info("compiling the network for windows %s (%s) with AOTInductor: about a minute, once; kept in %s",
                 "x".join(map(str, x.shape[1:])), self.precision, path.parent)
        start = time.perf_counter()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".pt2", dir=path.parent)  # AOTInductor: *.pt2
        os.close(fd)
        try:
            with torch.inference_mode(False):
                compile_package(self.module, example_input(tuple(x.shape[1:])), tmp_name, self.precision)
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        self.compiled += 1
        self.compile_seconds += time.perf_counter() - start
