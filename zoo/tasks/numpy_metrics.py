"""The task metrics in numpy, over many resamples at once: what a task's bootstrap scorer is made of.

Each function scores every row of its (R, n) arrays, one row per resample, so that one call scores all the
replicates of a bootstrap. A test checks them against the tasks' torchmetrics collections.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


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


def binary_scores(score: np.ndarray, positive: np.ndarray, max_fpr: float) -> dict[str, np.ndarray]:
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


def column(rows: list[dict[str, str]], name: str) -> list[float] | None:
    """A numeric column of prediction rows, or None when it is absent or not numeric."""
    if not rows or name not in rows[0]:
        return None
    try:
        return [float(row[name]) for row in rows]
    except (TypeError, ValueError):
        return None
