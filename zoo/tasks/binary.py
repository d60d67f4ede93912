"""What the three binary tasks share: an image in, a score out, label 1 for the positive class.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy

from zoo.tasks.base import Field, Task
from zoo.tasks.metrics import ScoreMetrics

MAX_FPR = 0.01


def make_metrics() -> MetricCollection:
    return MetricCollection({"acc": BinaryAccuracy(), "scores": ScoreMetrics(max_fpr=MAX_FPR)})


def update(metrics: MetricCollection, prediction: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
    metrics["acc"].update(prediction["decision"].long(), batch["label"])
    metrics["scores"].update(prediction["score"], batch["label"])


def binary_task(name: str, question: str, positive: str, negative: str, mini_datamodule: str,
                extra_prediction: dict[str, Field] | None = None) -> Task:
    """A binary task whose label 1 means ``positive``; ``extra_prediction``: optional fields of its own."""
    return Task(
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
        primary_metric="auroc",
        mini_datamodule=mini_datamodule,
    )
