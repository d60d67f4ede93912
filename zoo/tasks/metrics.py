"""Metrics that torchmetrics lacks in the exact form the protocols define."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
)
from torchmetrics.utilities import dim_zero_cat


def micro_average_precision(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Micro average precision as in the ISC2021 protocol.

    Predictions from every query are pooled and ranked by score; within a tie, negatives are ranked
    first (pessimistic), so that a constant score never earns credit.
    """
    scores = scores.double().flatten()
    positive = positive.bool().flatten()
    n_pos = int(positive.sum())
    if n_pos == 0:
        return torch.tensor(float("nan"))
    # sort by score descending, then positives last within a tie
    order = torch.from_numpy(np.lexsort((positive.cpu().numpy(), -scores.cpu().numpy())))
    hits = positive[order].double()
    precision_at_k = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return (precision_at_k * hits).sum() / n_pos


class MicroAveragePrecision(Metric):
    """µAP over all pairs of the split, positives being ``target >= positive_from``."""

    full_state_update = False

    def __init__(self, positive_from: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.positive_from = positive_from
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(scores.detach().flatten().float())
        self.targets.append(targets.detach().flatten().float())

    def compute(self) -> torch.Tensor:
        return micro_average_precision(dim_zero_cat(self.scores), dim_zero_cat(self.targets) >= self.positive_from)


def dense_rank(scores: torch.Tensor) -> torch.Tensor:
    """Map any real scores into [0, 1] keeping their order and their ties exactly."""
    unique, inverse = torch.unique(scores.double(), return_inverse=True)
    return inverse.double() / max(len(unique) - 1, 1)


class ScoreMetrics(Metric):
    """AUROC, average precision and TPR at a fixed FPR of real-valued scores (higher = positive).

    Scores of any range are accepted: they are rank-normalised over the whole split before the
    torchmetrics functions see them, so that no per-batch sigmoid can reorder them.
    """

    full_state_update = False

    def __init__(self, max_fpr: float = 0.01, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_fpr = max_fpr
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores.append(scores.detach().flatten().float())
        self.labels.append(labels.detach().flatten().long())

    def compute(self) -> dict[str, torch.Tensor]:
        labels = dim_zero_cat(self.labels)
        if labels.numel() == 0 or labels.min() == labels.max():
            nan = torch.tensor(float("nan"))
            return {"auroc": nan, "ap": nan, "tpr_at_1fpr": nan}
        ranked = dense_rank(dim_zero_cat(self.scores)).float()
        return {
            "auroc": binary_auroc(ranked, labels),
            "ap": binary_average_precision(ranked, labels),
            "tpr_at_1fpr": tpr_at_fpr(ranked, labels, self.max_fpr),
        }


def tpr_at_fpr(scores: torch.Tensor, labels: torch.Tensor, max_fpr: float) -> torch.Tensor:
    """The highest true-positive rate of any threshold whose false-positive rate is at most ``max_fpr``."""
    fpr, tpr, _ = binary_roc(scores, labels)
    ok = fpr <= max_fpr + 1e-12
    return tpr[ok].max() if ok.any() else torch.tensor(0.0)


def best_accuracy_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The threshold (decide positive when ``score >= t``) with the highest accuracy on these scores.

    Candidates are the midpoints between consecutive distinct scores, plus one below and one above
    all of them; the midpoint keeps the threshold from sitting on a validation sample.
    """
    scores = scores.double().flatten()
    labels = labels.long().flatten()
    values = torch.unique(scores)
    candidates = torch.cat([values[:1] - 1.0, (values[1:] + values[:-1]) / 2, values[-1:] + 1.0])
    decisions = scores[None, :] >= candidates[:, None]
    accuracy = (decisions == labels[None, :].bool()).double().mean(1)
    return float(candidates[int(accuracy.argmax())])
