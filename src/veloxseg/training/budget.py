"""The time budget of a training run: the clock it counts, what the work costs, and how much more fits.

A budgeted run (``--time-budget``) measures, in its clock (wall-clock seconds, or this process's
CPU seconds with ``--budget-clock cpu``), what each epoch's training steps cost, what each
validation costs and what the rest of an epoch costs (checkpoint, logs). After every epoch
:meth:`BudgetTracker.plan` fits the rest of the run to the budget left:

* the cost of a step is the **median of the last few epochs** (the first epoch of the process,
  which pays for warm-up, left out once another one is measured), so a few slow epochs -- another
  job on the machine, a cache being filled -- move the plan little, and the plan moves back **up**
  as soon as the epochs are fast again;
* validation is counted separately: its own measured cost times the validations still to come
  (every ``val_every`` epochs, and always one after the last epoch);
* the run goes on while the next epoch (and the validations it brings) fits, and ends with a
  shorter final epoch of the steps that still fit, so almost all of the budget is spent (1 % is
  kept back for the estimates' error).

One-off costs before the first epoch (planning, caching the preprocessed cases) are not counted.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

#: what a budget can count
CLOCKS = ("wall", "cpu")
#: epochs whose costs the estimates look at (the most recent ones)
WINDOW = 5
#: fraction of the budget kept back for the estimates' error and the final checkpoint
RESERVE = 0.01


def cpu_seconds() -> float:
    """CPU seconds this process (all its threads) has used, user plus system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read_clock(kind: str) -> float:
    """Seconds on the budget's clock: ``wall`` (monotonic wall-clock) or ``cpu`` (this process's CPU time)."""
    if kind == "wall":
        return time.monotonic()
    if kind == "cpu":
        return cpu_seconds()
    raise ValueError(f"budget_clock must be wall or cpu, got {kind!r}")


def validations_in(epochs_done: int, epochs: int, val_every: int) -> int:
    """Validations in the ``epochs`` epochs after ``epochs_done``: every ``val_every``-th, and the last one."""
    if epochs <= 0:
        return 0
    end = epochs_done + epochs
    every = max(1, int(val_every))
    return end // every - epochs_done // every + (1 if end % every else 0)


@dataclass(frozen=True)
class Plan:
    """The rest of a budgeted run as fitted after an epoch."""

    next_steps: int  # optimizer steps of the next epoch; 0: the run ends with the epoch just done
    total_steps: int  # steps the run is planned to reach (the lr schedule's length)
    total_epochs: int  # epochs the run is planned to reach (the last one may be shorter)


def fit_plan(remaining: float, step_cost: float, epoch_cost: float, val_cost: float, iterations: int,
             epochs_done: int, steps_done: int, val_every: int, validates: bool, max_epochs: int,
             min_final_steps: int = 1) -> Plan:
    """The most epochs of ``iterations`` steps (then one shorter epoch) whose cost fits in ``remaining``.

    An epoch costs ``iterations * step_cost + epoch_cost``, plus ``val_cost`` when it validates
    (``validates``: the run has validation cases). A final shorter epoch is planned only when at
    least ``min_final_steps`` steps fit; the run never goes beyond ``max_epochs``.
    """
    step_cost = max(float(step_cost), 1e-9)

    def cost(full: int, extra: int) -> float:
        n = full + (1 if extra else 0)
        vals = validations_in(epochs_done, n, val_every) if validates else 0
        return (full * iterations + extra) * step_cost + n * epoch_cost + vals * val_cost

    room = max(0, int(max_epochs) - int(epochs_done))
    lo, hi = 0, room  # the largest number of full epochs that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid, 0) <= remaining:
            lo = mid
        else:
            hi = mid - 1
    full, extra = lo, 0
    if full < room:
        lo, hi = 0, iterations - 1  # then the most steps of one more, shorter epoch
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost(full, mid) <= remaining:
                lo = mid
            else:
                hi = mid - 1
        extra = lo if lo >= max(1, min_final_steps) else 0
    next_steps = iterations if full else extra
    return Plan(next_steps, steps_done + full * iterations + extra, epochs_done + full + (1 if extra else 0))


def recent_median(values: list[float], skip_first: bool = False, window: int = WINDOW) -> float | None:
    """Median of the last ``window`` values (the first one left out when ``skip_first`` and others exist)."""
    if skip_first and len(values) > 1:
        values = values[1:]
    return statistics.median(values[-window:]) if values else None


class BudgetTracker:
    """The measured costs of a budgeted run, in its clock, and the plan they give."""

    def __init__(self, minutes: float, clock: str, spent: float = 0.0) -> None:
        self.budget = float(minutes) * 60.0
        self.clock = clock
        self.origin = read_clock(clock) - float(spent)  # spent: what a resumed run had already used
        self.step_costs: list[float] = []  # per epoch of this process: clock seconds per step
        self.val_costs: list[float] = []
        self.epoch_costs: list[float] = []  # per epoch: the rest (checkpoint, logs, data-loader start)
        self.plans: list[dict[str, float]] = []  # every plan that changed the run's length, for run_info.json

    def now(self) -> float:
        """The clock."""
        return read_clock(self.clock)

    def spent(self) -> float:
        """Budget seconds used so far (a resumed run's earlier use included)."""
        return read_clock(self.clock) - self.origin

    def record_train(self, seconds: float, steps: int) -> None:
        """An epoch's training steps took ``seconds``."""
        if steps > 0:
            self.step_costs.append(max(0.0, seconds) / steps)

    def record_validation(self, seconds: float) -> None:
        """A validation took ``seconds``."""
        self.val_costs.append(max(0.0, seconds))

    def record_epoch_rest(self, seconds: float) -> None:
        """The rest of an epoch (between its validation or training and the next epoch) took ``seconds``."""
        self.epoch_costs.append(max(0.0, seconds))

    def step_cost(self) -> float:
        """Estimated cost of one step: median of recent epochs, warm-up left out."""
        return recent_median(self.step_costs, skip_first=True) or 0.0

    def val_cost(self) -> float:
        """Estimated cost of one validation (0 until one was measured)."""
        return recent_median(self.val_costs) or 0.0

    def epoch_cost(self) -> float:
        """Estimated cost of an epoch's rest."""
        return recent_median(self.epoch_costs) or 0.0

    def plan(self, epochs_done: int, steps_done: int, iterations: int, val_every: int, validates: bool,
             max_epochs: int, validating_now: bool) -> Plan:
        """The rest of the run after ``epochs_done`` epochs (``validating_now``: this epoch still validates)."""
        remaining = self.budget * (1.0 - RESERVE) - self.spent() - (self.val_cost() if validating_now else 0.0)
        return fit_plan(remaining, self.step_cost(), self.epoch_cost(), self.val_cost(), iterations, epochs_done,
                        steps_done, val_every, validates, max_epochs, min_final_steps=max(1, iterations // 10))
