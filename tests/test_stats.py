"""Confidence intervals over seeds (`ktransfer.stats`) against float64 references computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ktransfer import demo, stats


def _reference(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), float(sps.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0], [0.52, 0.61, 0.75, 0.7], [1e-3, -2e-3, 5e-4, 0.0, 7e-4]])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_is_the_student_t_interval(values: list[float], confidence: float) -> None:
    assert stats.mean_ci(values, confidence) == pytest.approx(_reference(values, confidence), rel=1e-12, abs=1e-15)


def test_mean_ci_without_a_spread_and_on_bad_input() -> None:
    assert stats.mean_ci([0.5]) == (0.5, None)
    mean, half = stats.mean_ci([float("nan"), 1.0])  # a failed run: nan propagates, no interval
    assert math.isnan(mean) and half is None
    with pytest.raises(ValueError, match="at least one value"):
        stats.mean_ci([])
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\), got 95"):
        stats.mean_ci([1.0, 2.0], 95)


def test_paired_ci_pairs_by_seed_over_the_seeds_both_hold() -> None:
    method = {0: 0.52, 1: 0.61, 2: 0.73, 3: 0.9}
    baseline = {2: 0.70, 0: 0.50, 1: 0.60, 7: 0.1}  # seed 3 and 7 ran for one side only
    assert stats.paired_differences(method, baseline) == pytest.approx([0.02, 0.01, 0.03])
    assert stats.paired_ci(method, baseline) == pytest.approx(_reference([0.02, 0.01, 0.03]), rel=1e-12)
    assert stats.paired_ci({0: 1.0}, {1: 1.0}) is None
    assert stats.paired_ci({0: 1.0}, {0: 0.25}) == (0.75, None)


def test_an_interval_excludes_zero_only_with_a_half_width_smaller_than_the_mean() -> None:
    assert stats.excludes_zero((0.3, 0.2)) and stats.excludes_zero((-0.3, 0.2))
    assert not stats.excludes_zero((0.1, 0.2)) and not stats.excludes_zero((0.1, None))
    assert not stats.excludes_zero(None) and not stats.excludes_zero((0.1, float("nan")))


def test_the_demo_keeps_its_mean_ci() -> None:
    assert demo.mean_ci is stats.mean_ci
