"""Small statistics for eval results: weighted means with bootstrap intervals, percentiles, paired differences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
SEED = 20261128  # fixed: the same results give the same interval


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    w = np.asarray(weights, dtype=np.float64)
    return float(np.dot(np.asarray(values, dtype=np.float64), w) / w.sum()) if len(values) else float("nan")


def bootstrap_ci(values: Sequence[float], weights: Sequence[float] | None = None,
                 level: float = 0.95) -> tuple[float, float]:
    """A percentile-bootstrap interval of the weighted mean (items resampled with replacement)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    v = np.asarray(values, dtype=np.float64)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if n == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, n, size=(RESAMPLES, n))
    means = (v[idx] * w[idx]).sum(axis=1) / w[idx].sum(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest-rank; None for no values."""
    if not len(values):
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(np.ceil(q / 100 * len(s))) - 1))
    return float(s[k])
