"""The cost guard of an eval run: what is spent and held back, and how far the cost estimates are off.

`Budget` keeps spent + reserved + the next example's reservation within `max_cost`; `Calibration`
learns, from the examples that have run, how the structural estimate compares with real costs.
"""

from __future__ import annotations

from typing import Any

from dd_prompting.evals.estimate import Estimate

__all__ = ["Budget", "Calibration"]


class Budget:
    """Keeps spent + reserved + the next example's estimate within `limit`."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0

    def try_reserve(self, amount: float) -> bool:
        if self.limit is None:
            return True
        if self.spent + self.reserved + amount > self.limit + 1e-12:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


class Calibration:
    """How far the structural cost estimate is from what examples really cost, learnt as a run goes.

    The estimate assumes typical reply lengths (and, for iterative decomposition, a typical number of
    sub-questions); on GSM8K it came out 1.8-4.6x the real spend. Once a few examples have run, the
    ratio of their real cost to their estimates scales every further estimate, and a reservation needs
    only a small margin over it, so a budgeted run spends most of its budget instead of a quarter.
    """

    _MIN_EXAMPLES = 3
    _MARGIN_CALIBRATED = 1.15

    def __init__(self):
        self.estimated = 0.0
        self.actual = 0.0
        self.examples = 0

    def observe(self, estimate: Estimate, row: dict[str, Any]) -> None:
        if estimate.cost and row.get("new_cost") and not row.get("error"):
            self.estimated += estimate.cost
            self.actual += float(row["new_cost"])
            self.examples += 1

    @property
    def calibrated(self) -> bool:
        return self.examples >= self._MIN_EXAMPLES and self.estimated > 0

    @property
    def factor(self) -> float:
        return self.actual / self.estimated if self.calibrated else 1.0

    def scale(self, estimate: Estimate) -> Estimate:
        factor = self.factor
        if factor == 1.0:
            return estimate
        return Estimate(examples=estimate.examples, calls=estimate.calls, cached_calls=estimate.cached_calls,
                        prompt_tokens=round(estimate.prompt_tokens * factor),
                        completion_tokens=round(estimate.completion_tokens * factor),
                        cost=None if estimate.cost is None else estimate.cost * factor)

    def reserve(self, estimate: Estimate) -> float:
        """What to hold back for one example before it runs; an example whose calls are all cached is free."""
        if not estimate.cost:
            return 0.0
        # Uncalibrated, the estimate itself (typical lengths overshoot more often than not; examples then run
        # one at a time, so a wrong guess costs at most one example); calibrated, a small margin over it.
        margin = self._MARGIN_CALIBRATED if self.calibrated else 1.0
        return estimate.cost * self.factor * margin
