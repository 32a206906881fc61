import contextlib
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


_OURS = str(Path(__file__).resolve().parents[1] / "src" / "veloxseg") + os.sep


def _in_veloxseg(filename: str | None) -> bool:
    if not filename:
        return False
    import veloxseg

    root = os.path.dirname(os.path.abspath(veloxseg.__file__)) + os.sep
    return os.path.abspath(filename).startswith((root, _OURS))


@contextlib.contextmanager
def deprecated_calls_fail():
    """Deprecation warnings (Deprecation-, PendingDeprecation-, FutureWarning) that veloxseg's own code causes
    raise, as under ``warnings.simplefilter("error", DeprecationWarning)``; those of other libraries' own calls
    do not.

    "Our code" is decided from the call stack when the warning is issued: the warning is ours if the frame it
    is attributed to is in veloxseg (a well-behaved ``stacklevel``, a C++ deprecation of an op we call), or if
    that frame's caller is (PyTorch's ``torch.jit`` functions warn with ``stacklevel=1``, i.e. from inside
    themselves). A deprecated API that torch or MONAI call internally is theirs. Yields the list of ours (so a
    test can also assert it stayed empty where a library might swallow the exception).
    """
    ours: list[str] = []
    categories = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, categories):
            return original(message, category, filename, lineno, file, line)
        frame = sys._getframe(1)
        while frame is not None and not (frame.f_code.co_filename == filename and frame.f_lineno == lineno):
            frame = frame.f_back
        caller = frame.f_back if frame is not None else None
        if _in_veloxseg(filename) or (caller is not None and _in_veloxseg(caller.f_code.co_filename)):
            where = caller.f_code.co_filename if caller is not None else filename
            ours.append(f"{category.__name__}: {message} (called from {where})")
            raise category(f"{message} [called from veloxseg: {where}]")

    with warnings.catch_warnings():
        original = warnings.showwarning
        for category in categories:
            warnings.simplefilter("always", category)
        warnings.showwarning = show
        yield ours
    assert not ours, ours


@pytest.fixture
def deprecations_as_errors():
    """:func:`deprecated_calls_fail`, for tests: ``with deprecations_as_errors(): ...``."""
    return deprecated_calls_fail
