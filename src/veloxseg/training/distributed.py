"""DistributedDataParallel helpers: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; gloo on CPU, nccl on GPU."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """Processes in the job (1 when not started by ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device_kind: str) -> tuple[int, int, int]:
    """Start the process group when run under ``torchrun``; returns ``(rank, world_size, local_rank)``."""
    world = env_world_size()
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """Whether a process group is running."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over ranks."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """End the process group."""
    if is_distributed():
        dist.destroy_process_group()
