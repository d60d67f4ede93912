"""What the binary tasks share: an image in, a score out, label 1 for the positive class.

Batch contract:
    image   (B, 3, H, W) float  pre-processed by the method's transform
    label   (B,) int64          1 for the positive class, 0 otherwise (evaluation only)
    id      list[str]           the image's path or name
    source  list[str]           where it comes from: a generator, a model or "real" (evaluation only)
    caption list[str]           optional, when the datamodule has captions

Prediction schema:
    score    (B,) float  higher means positive; any range
    decision (B,) int64  1 where the method decides positive (the ZooModule fills it from its
                         validation-calibrated threshold unless the method decides itself)

Metrics: accuracy of the decision, AUROC, average precision and TPR at 1% FPR of the score.

``zoo predict``'s rows: score, decision, verdict (the positive or negative word), threshold; a task whose
score is a logit shows the score and threshold as probabilities, their logits in ``logit`` and
``threshold_logit``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy

from zoo.tasks.base import Field, PredictionRows, Scorer, Task
from zoo.tasks.metrics import ScoreMetrics
from zoo.tasks.numpy_metrics import binary_scores, column

MAX_FPR = 0.01
# below this many test negatives, TPR at 1% FPR rests on no negative at all above the threshold
MIN_NEGATIVES_FOR_TPR = 100
GLOSSARY = {
    "acc": ("accuracy of the binary decision (threshold calibrated on validation, or the method's own rule)",
            "higher"),
    "auroc": ("area under the ROC curve of the score: the chance that a random positive outranks a random "
              "negative; 0.5 is chance", "higher"),
    "ap": ("average precision of the score (area under the precision-recall curve)", "higher"),
    "tpr_at_1fpr": ("true-positive rate at a false-positive rate of at most 1% (marked † when the test split has "
                    f"fewer than {MIN_NEGATIVES_FOR_TPR} negatives, where one negative is already more than 1%)",
                    "higher"),
    "threshold": ("the decision threshold calibrated on validation (a setting, not ranked)", "none"),
}
def make_metrics() -> MetricCollection:
    return MetricCollection({"acc": BinaryAccuracy(), "scores": ScoreMetrics(max_fpr=MAX_FPR)})


def update(metrics: MetricCollection, prediction: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
    metrics["acc"].update(prediction["decision"].long(), batch["label"])
    metrics["scores"].update(prediction["score"], batch["label"])


def array_scorer(score: Any, decision: Any | None, label: Any) -> Scorer:
    """The binary metrics (acc, auroc, ap, tpr_at_1fpr) of resamples given as index rows."""
    score, label = np.asarray(score, float), np.asarray(label, int)
    decision_arr = None if decision is None else np.asarray(decision, int)

    def scorer(idx: np.ndarray) -> dict[str, np.ndarray]:
        y = label[idx]
        out = binary_scores(score[idx], y == 1, MAX_FPR)
        if decision_arr is not None:
            out["acc"] = (decision_arr[idx] == y).mean(1)
        return out

    return scorer


def scorer(rows: PredictionRows) -> Scorer | None:
    """The scorer of a job's prediction rows, when they hold a score and a true label."""
    score, label = column(rows, "score"), column(rows, "true_label")
    return None if score is None or label is None else array_scorer(score, column(rows, "decision"), label)


def chance(rows: PredictionRows) -> tuple[dict[str, float], int | None] | None:
    """A majority-class decision and a random score: their metrics, and the split's negatives."""
    labels = column(rows, "true_label")
    if not labels:
        return None
    p = statistics.fmean(v == 1 for v in labels)
    return {"acc": max(p, 1 - p), "auroc": 0.5, "ap": p, "tpr_at_1fpr": MAX_FPR}, sum(v == 0 for v in labels)


def readable_rows(task: Task, model: Any, pred: Mapping[str, Any], columns: dict[str, list[Any]], size: int) -> None:
    """The verdict in the task's words and the threshold; a logit score as a probability, its logit beside it."""
    decision = columns.get("decision", [None] * size)
    columns["verdict"] = [task.positive if d == 1 else task.negative for d in decision]
    threshold = float(model.threshold) if model.calibrates_threshold else None
    if task.score_is_logit:
        # one meaning per word: score and threshold are probabilities, their logits have columns of their own
        columns["logit"] = columns["score"]
        columns["score"] = model.probability(pred["score"].detach().cpu()).tolist()
        if threshold is not None:
            columns["threshold_logit"] = [threshold] * size
            threshold = float(model.probability(model.threshold.detach().cpu()))
    if threshold is not None:
        columns["threshold"] = [threshold] * size


def binary_task(name: str, question: str, positive: str, negative: str, mini_datamodule: str,
                extra_prediction: dict[str, Field] | None = None, score_is_logit: bool = False,
                pipeline_tag: str | None = None, glossary: dict[str, tuple[str, str]] | None = None,
                caveat: str = "") -> Task:
    """A binary task whose label 1 means ``positive``.

    Args:
        name: the task's registry name.
        question: what it answers, in one line.
        positive: the word of label 1 (``zoo predict``'s verdict, the report's contact sheets).
        negative: the word of label 0.
        mini_datamodule: registry name of its mini-suite datamodule.
        extra_prediction: optional prediction fields of its own.
        score_is_logit: every method's score is a logit, shown as a probability (``ZooModule.probability``).
        pipeline_tag: the Hub's pipeline tag of its model cards, if one fits.
        glossary: the report's words for its own metrics, or its own words for a shared one.
        caveat: what its score does not establish, in plain words.
    """
    task: Task

    def readable(model: Any, pred: Mapping[str, Any], columns: dict[str, list[Any]], size: int) -> None:
        readable_rows(task, model, pred, columns, size)

    task = Task(
        name=name,
        question=question,
        batch={
            "image": Field(torch.float32, ("B", 3, "H", "W"), "image"),
            "label": Field(torch.int64, ("B",), f"1 = {positive}, 0 = {negative}", label=True),
            "id": Field(str, ("B",), "image path or name"),
            "source": Field(str, ("B",), "generator, model or 'real'", label=True),
            "caption": Field(str, ("B",), "caption", required=False),
        },
        prediction={
            "score": Field(torch.float32, ("B",), f"higher = {positive}"),
            "decision": Field(torch.int64, ("B",), f"1 = decided {positive}", required=False),
            **(extra_prediction or {}),
        },
        make_metrics=make_metrics,
        update=update,
        binary=True,
        positive=positive,
        negative=negative,
        caveat=caveat,
        primary_metric="auroc",
        mini_datamodule=mini_datamodule,
        not_ranked=frozenset({"threshold", "threshold_logit"} if score_is_logit else {"threshold"}),
        min_negatives={"tpr_at_1fpr": MIN_NEGATIVES_FOR_TPR},
        glossary={**GLOSSARY, **(glossary or {})},
        scorer=scorer,
        chance=chance,
        plots=("roc",),
        score_is_logit=score_is_logit,
        pipeline_tag=pipeline_tag,
        readable=readable,
        first_columns=("score", "logit", "decision", "verdict", "threshold", "threshold_logit"),
    )
    return task
