"""Copy detection for diffusion models: does a generated image replicate a real one, and how much?

Batch contract (one pair per row):
    generated (B, 3, H, W) float  the generated image, pre-processed by the method's transform
    real      (B, 3, H, W) float  the real image, pre-processed the same way
    level     (B,) int64          annotated replication level, 0 (none) .. 5 (total) (evaluation only)
    id        list[str]           the pair's name

Prediction schema:
    level (B,) float   the method's point prediction of the level, in [0, 5]
    pdf   (B, 6) float optional: probability of each level 0..5 (index = level)
    similarity (B,) float optional: the similarity the level is read from

Metrics (D-Rep protocol of ICDiff, plus the ISC2021 µAP):
    pcc    Pearson correlation of predicted and true normalised level (level / 5)
    rd     relative deviation, mean |predicted - true| level / 5
    muap   micro average precision of "level >= 3" ranked by the predicted level, ties pessimistic
    auroc  AUROC of "level >= 3" scored by the predicted level
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import MeanAbsoluteError, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import BinaryAUROC

from zoo.tasks.base import Field, Task
from zoo.tasks.metrics import MicroAveragePrecision

NUM_LEVELS = 6
MAX_LEVEL = NUM_LEVELS - 1
COPY_FROM_LEVEL = 3  # "level >= 3" is a copy for µAP and AUROC


def make_metrics() -> MetricCollection:
    return MetricCollection(
        {
            "pcc": PearsonCorrCoef(),
            "rd": MeanAbsoluteError(),
            "muap": MicroAveragePrecision(positive_from=COPY_FROM_LEVEL / MAX_LEVEL),
            "auroc": BinaryAUROC(),
        }
    )


def update(metrics: MetricCollection, prediction: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
    pred = prediction["level"].detach().float().clamp(0, MAX_LEVEL) / MAX_LEVEL
    true = batch["level"].float() / MAX_LEVEL
    metrics["pcc"].update(pred, true)
    metrics["rd"].update(pred, true)
    metrics["muap"].update(pred, true)
    metrics["auroc"].update(pred, (batch["level"] >= COPY_FROM_LEVEL).long())


TASK = Task(
    name="copy_detection",
    question="does this generated image replicate that real one, and how much?",
    batch={
        "generated": Field(torch.float32, ("B", 3, "H", "W"), "generated image"),
        "real": Field(torch.float32, ("B", 3, "H", "W"), "real image"),
        "level": Field(torch.int64, ("B",), "replication level 0..5", label=True),
        "id": Field(str, ("B",), "pair name"),
    },
    prediction={
        "level": Field(torch.float32, ("B",), "predicted level in [0, 5]"),
        "pdf": Field(torch.float32, ("B", NUM_LEVELS), "probability of each level 0..5", required=False),
        "similarity": Field(torch.float32, ("B",), "the method's similarity of the two images", required=False),
    },
    make_metrics=make_metrics,
    update=update,
    primary_metric="pcc",
    mini_datamodule="MiniCopyDetection",
)
