"""Confidence intervals over seeds: the mean with a Student-t interval, and paired differences.

Small differences between methods are often noise; a result is reported as the mean over seeds
with the half-width of its 95% t-interval, and two methods that share seeds (and data splits) are
compared by the interval of their per-seed differences, which removes the variation the seed
causes in both. Used by `ktransfer demo` and by the benchmarks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and half-width of a Student-t confidence interval: t(1/2 + confidence/2, n - 1) * s / sqrt(n).

    The half-width is None for a single value (no spread known) or when a value is not finite (a failed run)."""
    from scipy import stats

    if not values:
        raise ValueError("mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) < 2 or not all(math.isfinite(v) for v in values):  # a failed run (nan) has no spread to report
        return mean, None
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sem)


def paired_differences(values: Mapping[K, float], reference: Mapping[K, float]) -> list[float]:
    """`values[k] - reference[k]` for every key (seed) both hold, in the order of `values`."""
    return [float(values[k]) - float(reference[k]) for k in values if k in reference]


def paired_ci(values: Mapping[K, float], reference: Mapping[K, float],
              confidence: float = 0.95) -> tuple[float, float | None] | None:
    """Mean and half-width of the t-interval of the paired differences `values - reference` over the keys (seeds)
    both hold; None when they share none."""
    diffs = paired_differences(values, reference)
    return mean_ci(diffs, confidence) if diffs else None


def excludes_zero(ci: tuple[float, float | None] | None) -> bool:
    """Whether an interval (mean, half-width) lies entirely on one side of 0 (False without a half-width)."""
    if ci is None or ci[1] is None or math.isnan(ci[1]):
        return False
    return abs(ci[0]) > ci[1]
