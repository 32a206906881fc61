"""Which weights become ``checkpoint_best.pt``, the network we recommend to deploy.

With many validation cases the epoch of the highest validation Dice is a fair choice. With a few
(HecktorMini's default split holds out one case) one validation Dice is mostly noise: a single case
scored 0.05 while four unseen ones scored 0.64. Below :data:`EMA_MIN_CASES` validation cases the
``auto`` rule therefore selects by an exponential moving average of the validation Dice, as
nnU-Net v2 does (``ema = 0.9 * ema + 0.1 * dice``), which follows the trend, not one lucky or
unlucky validation.
"""

from __future__ import annotations

#: every ``--selection`` value
RULES = ("auto", "ema", "best", "last")
#: fewer validation cases than this: ``auto`` selects by the moving average
EMA_MIN_CASES = 5
#: weight of the previous average (nnU-Net's 0.9)
EMA_MOMENTUM = 0.9


def resolve_rule(rule: str, validation_cases: int) -> str:
    """``ema``, ``best`` or ``last``: ``auto`` is ``ema`` below :data:`EMA_MIN_CASES` cases, else ``best``."""
    rule = (rule or "auto").lower()
    if rule not in RULES:
        raise ValueError(f"selection must be one of {', '.join(RULES)}, got {rule!r}")
    if rule == "auto":
        return "ema" if validation_cases < EMA_MIN_CASES else "best"
    return rule


def describe(rule: str, validation_cases: int) -> str:
    """One line saying how ``checkpoint_best.pt`` is chosen (for the log and ``run_info.json``)."""
    if validation_cases == 0:
        return "final weights (no validation cases)"
    if rule == "ema":
        return (f"highest moving average of the validation Dice ({EMA_MOMENTUM:g} * average + "
                f"{1 - EMA_MOMENTUM:.1f} * Dice; {validation_cases} validation case(s))")
    if rule == "last":
        return "final weights (validated, not selected)"
    return f"highest validation Dice ({validation_cases} validation cases)"


def ema_update(previous: float | None, value: float, momentum: float = EMA_MOMENTUM) -> float:
    """The moving average after ``value`` (the first value starts it)."""
    return float(value) if previous is None else momentum * float(previous) + (1.0 - momentum) * float(value)
