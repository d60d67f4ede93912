"""The report's statistics: a job's metrics on its whole test split, and bootstrap intervals.

What a metric is belongs to the task: its ``scorer`` (``zoo.tasks.base.Task``) scores many resamples of a
job's written predictions at once. This module only resamples.

The 95% confidence interval of a row is a two-level percentile bootstrap: each of ``REPLICATES``
replicates draws the seeds with replacement and the test samples with replacement (one draw of the
samples shared by every seed when they were tested on the same samples), scores each drawn seed on the
drawn samples, and averages over the drawn seeds. It covers the sampling noise of the small test split
and the seed-to-seed spread together.
"""

from __future__ import annotations

import numpy as np

from zoo.tasks.base import Scorer

REPLICATES = 1000


def point(scorer: Scorer, n: int) -> dict[str, float]:
    """The metrics of the whole test split."""
    return {k: float(v[0]) for k, v in scorer(np.arange(n)[None]).items()}


def bootstrap_ci(scorers: list[Scorer], sizes: list[int], shared: bool, replicates: int = REPLICATES,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% percentile interval of the seed-mean of each metric, seeds and test samples resampled.

    Args:
        scorers: one per seed (a job's predictions).
        sizes: the number of test samples of each.
        shared: every seed was tested on the same samples in the same order, so one draw serves them all.
        replicates: bootstrap replicates.
        seed: of the resampling, so that a report is reproducible.
    """
    rng = np.random.default_rng(seed)
    per_seed: list[dict[str, np.ndarray]] = []
    common = rng.integers(0, sizes[0], size=(replicates, sizes[0])) if shared else None
    for scorer, n in zip(scorers, sizes, strict=True):
        idx = common if common is not None else rng.integers(0, n, size=(replicates, n))
        per_seed.append(scorer(idx))
    picks = rng.integers(0, len(scorers), size=(replicates, len(scorers)))
    out: dict[str, tuple[float, float]] = {}
    for metric in per_seed[0]:
        table = np.stack([s[metric] for s in per_seed])  # (seeds, replicates)
        drawn = np.take_along_axis(table, picks.T, 0)
        finite = np.isfinite(drawn)
        with np.errstate(invalid="ignore", divide="ignore"):  # a replicate with no finite value is left out
            means = np.where(finite, drawn, 0).sum(0) / finite.sum(0)
        finite = means[np.isfinite(means)]
        if len(finite) >= replicates // 2:
            low, high = np.percentile(finite, [2.5, 97.5])
            out[metric] = (float(low), float(high))
    return out

