"""The EWMA baseline of anomaly rules: an exponentially weighted mean and variance."""

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Baseline:
    """Mean and variance of the values seen so far, recent ones weighted more.

    `samples` counts the values that fed the baseline. Immutable, so it can go into
    snapshots as it is.
    """

    samples: int = 0
    mean: float = 0.0
    variance: float = 0.0

    @property
    def stddev(self) -> float:
        return math.sqrt(self.variance)

    def is_anomalous(self, value: float, k: float, min_stddev: float) -> bool:
        """Whether `value` is more than `k` (floored) standard deviations off the mean."""
        return abs(value - self.mean) > k * max(self.stddev, min_stddev)

    def updated(self, value: float, alpha: float) -> "Baseline":
        """The baseline with `value` folded in (the first value is the mean outright)."""
        if self.samples == 0:
            return Baseline(1, value, 0.0)
        diff = value - self.mean
        step = alpha * diff
        return Baseline(
            self.samples + 1,
            self.mean + step,
            (1.0 - alpha) * (self.variance + diff * step),
        )
