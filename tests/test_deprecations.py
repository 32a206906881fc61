"""The guard the deployed-path tests run under (conftest.deprecated_calls_fail) really flags veloxseg's calls of a
deprecated API, and only those. It wraps the ONNX export and prediction with every engine in test_export.py,
and the ``.pt2`` export and engine in test_pt2.py; TorchScript (deprecated by PyTorch) is the exception, and
its deprecation must show (test_export.py, test_graph.py)."""

from __future__ import annotations

import warnings

import pytest
import torch


def test_the_guard_flags_our_deprecated_calls_and_not_other_libraries(deprecations_as_errors):
    from veloxseg.export import _write

    with pytest.raises(AssertionError, match="torch.jit.trace"):  # the guard's own check at the end
        with deprecations_as_errors():
            with pytest.raises(DeprecationWarning, match="called from veloxseg"):
                # veloxseg's TorchScript export calls torch.jit.trace (deprecated): raised at the call
                _write(torch.nn.Conv3d(1, 1, 1), "torchscript", torch.zeros(1, 1, 2, 2, 2), None, 18)
    with deprecations_as_errors():
        warnings.warn("a library's own deprecated internals", DeprecationWarning)  # this test file is not veloxseg
