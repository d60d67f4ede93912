"""The replication ratio of a generator, its confidence interval and the histogram of its levels."""

from __future__ import annotations

import numpy as np

from zoo.tasks.copy_detection import NUM_LEVELS


def replication_ratio(levels: np.ndarray, threshold: float, confidence: float) -> tuple[float, tuple[float, float]]:
    """Share of generations whose best level is at least ``threshold``, and its Wilson score interval.

    The Wilson interval (scipy's ``binomtest(...).proportion_ci``) keeps a width at a share of 0 or 1,
    where a bootstrap of the sample collapses to a single point.
    """
    from scipy.stats import binomtest

    replicated = int(np.count_nonzero(np.asarray(levels) >= threshold))
    interval = binomtest(replicated, len(levels)).proportion_ci(confidence_level=confidence, method="wilson")
    return replicated / len(levels), (float(interval.low), float(interval.high))


def level_histogram(levels: np.ndarray) -> list[int]:
    """Counts of best levels in [j, j + 1) for j = 0..4, and of level 5 (below 0: no match, counted at 0).

    Bins are floors, not roundings, so that a ratio at an integer threshold ``t`` is exactly the share
    of the bins ``t`` and above: a level of 2.6 is not a copy at threshold 3 and is not shown as level 3.
    """
    bins = np.clip(np.floor(np.asarray(levels, dtype=np.float64)), 0, NUM_LEVELS - 1).astype(int)
    return np.bincount(bins, minlength=NUM_LEVELS).tolist()
