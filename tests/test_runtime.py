"""The allocator setting is applied once and never breaks a process that is not on glibc."""

import sys

import torch

from veloxseg.runtime import tune_allocator


def test_tune_allocator_is_idempotent_and_tensors_still_work():
    first = tune_allocator()
    assert tune_allocator() is first  # cached: applied once per process
    if sys.platform.startswith("linux"):
        assert first is True  # glibc (the CI and this project's machines)
    x = torch.ones(4 << 20)  # 16 MB: now from the heap, not a fresh mmap
    assert float(x.sum()) == 4 << 20
