"""The report's statistics, computed from a job's written predictions: metrics, bootstrap intervals, level maps.

The metrics are those of the tasks (``zoo.tasks``), written again in numpy so that one call scores many
bootstrap resamples at once; a test checks them against the task's torchmetrics collection.

The 95% confidence interval of a row is a two-level percentile bootstrap: each of ``REPLICATES``
replicates draws the seeds with replacement and the test samples with replacement (one draw of the
samples shared by every seed when they were tested on the same samples), scores each drawn seed on the
drawn samples, and averages over the drawn seeds. It covers the sampling noise of the small test split
and the seed-to-seed spread together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

REPLICATES = 1000
MAX_FPR = 0.01  # as zoo.tasks.binary
MAX_LEVEL = 5
COPY_FROM_LEVEL = 3  # as zoo.tasks.copy_detection

Scorer = Callable[[np.ndarray], dict[str, np.ndarray]]


def _take(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.asarray(values)[idx]


def _group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Where a run of equal scores ends, in scores sorted in descending order."""
    ends = np.ones_like(sorted_scores, dtype=bool)
    ends[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    return ends


def auroc(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of each row (ties count a half), NaN where a row holds one class only."""
    ranks = rankdata(score, axis=1)
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _ranked(score: np.ndarray, positive: np.ndarray, negatives_first: bool) -> tuple[np.ndarray, np.ndarray]:
    if negatives_first:  # within a tie, negatives are ranked first (pessimistic, as µAP)
        order = np.argsort(positive, axis=1, kind="stable")
        score, positive = np.take_along_axis(score, order, 1), np.take_along_axis(positive, order, 1)
    order = np.argsort(-score, axis=1, kind="stable")
    return np.take_along_axis(score, order, 1), np.take_along_axis(positive, order, 1)


def binary_scores(score: np.ndarray, positive: np.ndarray, max_fpr: float = MAX_FPR) -> dict[str, np.ndarray]:
    """AUROC, average precision (ties grouped, as torchmetrics) and the best TPR at FPR <= ``max_fpr``, per row."""
    positive = positive.astype(bool)
    s, y = _ranked(score, positive, negatives_first=False)
    tp, fp = np.cumsum(y, 1), np.cumsum(~y, 1)
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    ends = _group_ends(s)
    # each position takes the precision at the end of its tie group
    end_index = np.where(ends, np.arange(s.shape[1]), s.shape[1])
    next_end = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision = tp / (tp + fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (np.take_along_axis(precision, next_end, 1) * y).sum(1) / n_pos[:, 0]
        tpr, fpr = tp / n_pos, fp / n_neg
    ok = ends & (fpr <= max_fpr + 1e-12)
    tpr_at = np.where(ok, tpr, 0.0).max(1)
    one_class = (n_pos[:, 0] == 0) | (n_neg[:, 0] == 0)
    nan = np.full(len(s), np.nan)
    return {"auroc": np.where(one_class, nan, auroc(score, positive)), "ap": np.where(one_class, nan, ap),
            "tpr_at_1fpr": np.where(one_class, nan, tpr_at)}


def micro_ap(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """µAP of each row: pooled ranking, negatives first within a tie (ISC2021)."""
    s, y = _ranked(score, positive.astype(bool), negatives_first=True)
    precision = np.cumsum(y, 1) / np.arange(1, s.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (precision * y).sum(1) / y.sum(1)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row's pairs; NaN for a constant row."""
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))


def binary_scorer(score: Sequence[float], decision: Sequence[float] | None, label: Sequence[int]) -> Scorer:
    """The binary tasks' metrics (acc, auroc, ap, tpr_at_1fpr) of resamples given as index rows."""
    score, label = np.asarray(score, float), np.asarray(label, int)
    decision_arr = None if decision is None else np.asarray(decision, int)

    def scorer(idx: np.ndarray) -> dict[str, np.ndarray]:
        y = label[idx]
        out = binary_scores(score[idx], y == 1)
        if decision_arr is not None:
            out["acc"] = (decision_arr[idx] == y).mean(1)
        return out

    return scorer


def level_scorer(level: Sequence[float], true_level: Sequence[float]) -> Scorer:
    """Copy detection's metrics (pcc, rd, muap, auroc) of resamples given as index rows."""
    pred = np.clip(np.asarray(level, float), 0, MAX_LEVEL) / MAX_LEVEL
    true = np.asarray(true_level, float) / MAX_LEVEL

    def scorer(idx: np.ndarray) -> dict[str, np.ndarray]:
        p, t = pred[idx], true[idx]
        copy = t >= COPY_FROM_LEVEL / MAX_LEVEL - 1e-9
        return {"pcc": pearson(p, t), "rd": np.abs(p - t).mean(1), "muap": micro_ap(p, copy), "auroc": auroc(p, copy)}

    return scorer


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


def isotonic_levels(train_score: Sequence[float], train_level: Sequence[float],
                    test_score: Sequence[float]) -> np.ndarray:
    """Levels of the test scores by an isotonic map from score to level fitted on the training pairs."""
    from sklearn.isotonic import IsotonicRegression

    regression = IsotonicRegression(y_min=0.0, y_max=MAX_LEVEL, increasing=True, out_of_bounds="clip")
    regression.fit(np.asarray(train_score, float), np.asarray(train_level, float))
    return regression.predict(np.asarray(test_score, float))
