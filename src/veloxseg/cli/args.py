"""Argument types shared by the sub-commands: nonsense values are argument errors, not tracebacks."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, cast: Callable[[str], float], ok: Callable[[float], bool], what: str) -> float:
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return int(_number(text, int, lambda v: v >= 1, "an integer >= 1"))


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, float, lambda v: 0 < v < math.inf, "a finite number > 0")


def fraction(text: str) -> float:
    """A number in (0, 1)."""
    return _number(text, float, lambda v: 0 < v < 1, "a number in (0, 1)")


def probability(text: str) -> float:
    """A number in [0, 1)."""
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
