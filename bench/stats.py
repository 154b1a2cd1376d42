"""Step-time statistics: small pure functions over arrays of seconds.

Medians and percentiles rather than means: a training step's time has a long right tail
(a garbage collection, another process on a shared machine), and the median says what a
typical step costs. Confidence intervals come from the bootstrap: resampling the steps
with replacement needs no assumption about the distribution's shape. It does assume the
steps are exchangeable; consecutive steps are mildly correlated, so the intervals are a
little narrower than they should be, which the regression check's threshold absorbs.

Memory stays bounded whatever the number of steps: the median of a resample is drawn
directly as an order statistic of the sorted sample (the k-th smallest of n uniform draws
is Beta(k, n-k+1)), which is exactly the distribution the naive "resamples x steps"
matrix would give, in memory proportional to the resamples alone. Other statistics are
resampled in chunks of at most :data:`CHUNK_ELEMENTS` values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TypeGuard

import numpy as np

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
#: the most resampled values held at once by a generic (non-median) bootstrap: 32 MiB of float64
CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class Summary:
    """Describes one sample of step times (seconds)."""

    n: int
    mean: float
    median: float
    p5: float
    p95: float
    q1: float
    q3: float
    iqr: float
    min: float
    max: float
    stdev: float
    median_ci_low: float
    median_ci_high: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(samples, confidence: float = DEFAULT_CONFIDENCE,
              resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Summary:
    """Median, spread and a bootstrap confidence interval of the median of ``samples``."""
    x = _as_samples(samples)
    p5, q1, median, q3, p95 = np.percentile(x, [5, 25, 50, 75, 95])
    low, high = bootstrap_ci(x, np.median, confidence, resamples, seed)
    return Summary(n=len(x), mean=float(x.mean()), median=float(median), p5=float(p5),
                   p95=float(p95), q1=float(q1), q3=float(q3), iqr=float(q3 - q1),
                   min=float(x.min()), max=float(x.max()),
                   stdev=float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                   median_ci_low=low, median_ci_high=high)


def bootstrap_ci(samples, statistic=np.median, confidence: float = DEFAULT_CONFIDENCE,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic`` (applied along axis 1).

    The median is drawn as an order statistic (memory: the resamples, not resamples x
    steps); any other statistic is resampled in chunks of at most CHUNK_ELEMENTS values.
    """
    x = _as_samples(samples)
    rng = np.random.default_rng(seed)
    if statistic is np.median:
        draws = _resampled_sorted_medians(np.sort(x), resamples, rng)
    else:
        per_chunk = max(1, CHUNK_ELEMENTS // len(x))
        draws = np.concatenate([
            statistic(rng.choice(x, size=(min(per_chunk, resamples - start), len(x)), replace=True), axis=1)
            for start in range(0, resamples, per_chunk)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def ratio_of_medians(baseline, current, confidence: float = DEFAULT_CONFIDENCE,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """median(current) / median(baseline) step time, with a bootstrap confidence interval.

    Each side is an array of step times, or a list of arrays, one per repeat (each repeat
    a fresh process). With repeats the bootstrap is hierarchical: repeats are drawn with
    replacement, then steps within each, so the interval also covers run-to-run variation,
    which step-to-step resampling alone cannot see. A ratio above 1 means ``current`` is
    slower. Returns (ratio, low, high).
    """
    base, cur = _groups(baseline), _groups(current)
    rng = np.random.default_rng(seed)
    ratios = _resampled_medians(cur, resamples, rng) / _resampled_medians(base, resamples, rng)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    point = np.median(np.concatenate(cur)) / np.median(np.concatenate(base))
    return float(point), float(low), float(high)


def _groups(samples) -> list[np.ndarray]:
    """One array per repeat; a flat sequence of numbers is a single repeat."""
    if isinstance(samples, (list, tuple)) and samples and np.ndim(samples[0]) == 1:
        return [_as_samples(group) for group in samples]
    return [_as_samples(samples)]


def _resampled_sorted_medians(ordered: np.ndarray, resamples: int, rng) -> np.ndarray:
    """Medians of ``resamples`` bootstrap resamples of the sorted sample ``ordered``.

    A resample draws n indices floor(n U) for uniform U; its k-th smallest value is
    ``ordered[floor(n U_(k))]``, and the k-th smallest of n uniforms is Beta(k, n-k+1).
    For even n the median also needs the next one: the smallest of the n-k uniforms above
    U_(k), which is U_(k) + (1 - U_(k)) Beta(1, n-k). Exactly the naive bootstrap's
    distribution, without a resamples x n matrix.
    """
    n = len(ordered)
    k = (n + 1) // 2
    u_k = rng.beta(k, n - k + 1, size=resamples)
    low = ordered[np.minimum((u_k * n).astype(np.int64), n - 1)]
    if n % 2:
        return low
    u_next = u_k + (1 - u_k) * rng.beta(1, n - k, size=resamples)
    return (low + ordered[np.minimum((u_next * n).astype(np.int64), n - 1)]) / 2


def _resampled_medians(groups: list[np.ndarray], resamples: int, rng) -> np.ndarray:
    """Bootstrap medians: of the one sample, or hierarchically over repeats.

    The hierarchical loop holds one pooled resample at a time (memory: the steps once).
    """
    if len(groups) == 1:
        return _resampled_sorted_medians(np.sort(groups[0]), resamples, rng)
    medians = np.empty(resamples)
    for i in range(resamples):
        chosen = rng.integers(0, len(groups), size=len(groups))
        medians[i] = np.median(np.concatenate(
            [rng.choice(groups[g], size=len(groups[g]), replace=True) for g in chosen]))
    return medians


def _as_samples(samples) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("samples must be finite, non-negative durations")
    return x


def finite_positive(value) -> TypeGuard[float]:
    """A real, finite number above zero (not a bool, not text): what a time or a rate must be."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
