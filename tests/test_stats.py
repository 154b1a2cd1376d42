"""bench.stats: step-time statistics and the ratio-of-medians interval."""

from __future__ import annotations

import numpy as np
import pytest

from bench import stats


def test_summary_of_a_known_sample():
    summary = stats.summarise(np.arange(1, 101, dtype=float))
    assert summary.n == 100 and summary.median == 50.5 and summary.mean == 50.5
    assert summary.p5 == pytest.approx(5.95) and summary.p95 == pytest.approx(95.05)
    assert summary.iqr == pytest.approx(49.5) and (summary.min, summary.max) == (1, 100)
    assert summary.median_ci_low < 50.5 < summary.median_ci_high


def test_median_interval_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    few = stats.summarise(rng.lognormal(0, 0.2, 20))
    many = stats.summarise(rng.lognormal(0, 0.2, 2000))
    assert (many.median_ci_high - many.median_ci_low) < (few.median_ci_high - few.median_ci_low) / 3


def test_ratio_of_medians_identical_and_doubled():
    rng = np.random.default_rng(1)
    base = rng.lognormal(np.log(0.1), 0.05, 200)
    same = rng.lognormal(np.log(0.1), 0.05, 200)
    ratio, low, high = stats.ratio_of_medians(base, same)
    assert low < 1 < high and ratio == pytest.approx(1, abs=0.03)
    ratio, low, high = stats.ratio_of_medians(base, 2 * same)
    assert 1.9 < low <= ratio <= high < 2.1


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -0.1]])
def test_rejects_invalid_samples(bad):
    with pytest.raises(ValueError):
        stats.summarise(bad)


def test_repeats_widen_the_interval_by_their_disagreement():
    rng = np.random.default_rng(3)
    # three runs whose medians differ by a few percent, each with little step-to-step noise
    runs = [rng.lognormal(np.log(m), 0.01, 50) for m in (0.100, 0.106, 0.097)]
    current = [rng.lognormal(np.log(m), 0.01, 50) for m in (0.104, 0.099, 0.108)]
    _, pooled_low, pooled_high = stats.ratio_of_medians(np.concatenate(runs), np.concatenate(current))
    ratio, low, high = stats.ratio_of_medians(runs, current)
    assert low <= ratio <= high
    assert (high - low) > 2 * (pooled_high - pooled_low)
