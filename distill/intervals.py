"""How sure a measured number is: the spread over seeds, and 95 % intervals of a paired difference.

Two sources of uncertainty, kept apart because they answer different questions:

- over seeds (`spread`, `seed_interval`): would another training run give the same number? The interval is
  Student's t over the per-seed values, so with 3 seeds it is wide, as it should be.
- over test examples (`paired_bootstrap`): would another test set of the same size give the same difference
  between two models trained in the same run? Both models are scored on the same examples, so the examples are
  resampled together (paired), which removes the examples' own difficulty from the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000


@dataclass
class Spread:
    """Mean and sample standard deviation (None for one value) of n values."""

    mean: float
    sd: float | None
    n: int


@dataclass
class Interval:
    """A 95 % interval; `excludes_zero`: whether it tells the difference from no difference (saved with it, so
    study.json says so too)."""

    low: float
    high: float
    excludes_zero: bool


def interval(low: float, high: float) -> Interval:
    return Interval(float(low), float(high), bool(low > 0 or high < 0))


def spread(values: list[float]) -> Spread:
    array = np.asarray(values, dtype=np.float64)
    sd = float(array.std(ddof=1)) if len(array) > 1 else None
    return Spread(float(array.mean()), sd, len(array))


def seed_interval(values: list[float], level: float = LEVEL) -> Interval | None:
    """Student's t interval of the mean of per-seed `values`; None for fewer than two seeds."""
    summary = spread(values)
    if summary.n < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, df=summary.n - 1) * summary.sd / math.sqrt(summary.n)
    return interval(summary.mean - half, summary.mean + half)


def paired_bootstrap(differences: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, level: float = LEVEL,
                     seed: int = 0, chunk: int = 200) -> Interval:
    """Percentile interval of the mean of per-example `differences` (N,) (score of model A minus model B on each
    test example), resampling the examples with replacement `samples` times.

    For several seeds pass the per-example difference averaged over seeds: the mean of that is the mean over
    seeds of each seed's difference, and every seed was scored on the same test examples.
    """
    differences = np.asarray(differences, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.concatenate([differences[rng.integers(0, len(differences), size=(min(chunk, samples - start),
                                                                                len(differences)))].mean(axis=1)
                            for start in range(0, samples, chunk)])
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return interval(low, high)
