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


def _naive_median_interval(x, resamples=2000, seed=0, confidence=0.95):
    """The method before: a resamples x steps matrix (fine for small samples only)."""
    draws = np.median(np.random.default_rng(seed).choice(x, size=(resamples, len(x)), replace=True), axis=1)
    tail = (1 - confidence) / 2 * 100
    return tuple(np.percentile(draws, [tail, 100 - tail]))


@pytest.mark.parametrize("n", [31, 200])
def test_median_interval_matches_the_naive_bootstrap_on_small_samples(n):
    x = np.random.default_rng(n).lognormal(np.log(0.1), 0.1, n)
    low, high = stats.bootstrap_ci(x, resamples=20000)
    naive_low, naive_high = _naive_median_interval(x, resamples=20000)
    width = naive_high - naive_low
    # two Monte Carlo estimates of one interval (20,000 resamples each, so the discrete
    # percentiles settle): equal within a small fraction of its width
    assert low == pytest.approx(naive_low, abs=0.05 * width)
    assert high == pytest.approx(naive_high, abs=0.05 * width)


def test_statistics_of_a_million_steps_use_bounded_memory():
    import tracemalloc

    rng = np.random.default_rng(5)
    steps = rng.lognormal(np.log(0.05), 0.1, 10**6)
    other = rng.lognormal(np.log(0.05), 0.1, 10**6)
    tracemalloc.start()
    try:
        summary = stats.summarise(steps)
        ratio, low, high = stats.ratio_of_medians(steps, other)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the input is 8 MB; the old bootstrap needed 2000 x 8 MB = 16 GB here
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert summary.median_ci_low <= summary.median <= summary.median_ci_high
    assert low <= ratio <= high and 0.99 < ratio < 1.01
