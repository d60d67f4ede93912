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
    exact_copy (B,) int64 1 where the two pre-processed images are the same pixels (``pixels_identical``);
                          the task fills it for every method and sets ``level`` to 5 there

An exact copy is a property of pixels, not of an embedding: a model that collapses gives equal descriptors
to different images. Where only descriptors exist (``pair_from_embeddings``), methods flag
``descriptor_identical`` (``descriptors_identical``) instead, which says nothing about the pixels and never
sets the level.

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
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import BinaryAUROC

from zoo.tasks.base import Field, Task
from zoo.tasks.metrics import MicroAveragePrecision

NUM_LEVELS = 6
MAX_LEVEL = NUM_LEVELS - 1
COPY_FROM_LEVEL = 3  # "level >= 3" is a copy for µAP and AUROC
# largest difference of two pre-processed images that are still the same pixels: float rounding only. One
# 8-bit level is >= 1/255 ~ 4e-3 in [0, 1] units (more after a normalisation by a std < 1), so a JPEG q90
# re-encode, which moves some pixels by a level or more, is not an exact copy; a PNG re-encode is.
EXACT_COPY_TOL = 1e-6
# cosine of two descriptors still called identical: float16 storage moves a cosine of 1 by ~1e-3
DESCRIPTOR_TOL = 1e-3


def pixels_identical(generated: Tensor, real: Tensor, tol: float = EXACT_COPY_TOL) -> Tensor:
    """(B,) bool: the pairs whose pre-processed images differ by at most ``tol`` at every pixel.

    The images are those a method's transform made (decoded, resized to the model's input size): two
    files with the same pixels (a lossless re-encode) are identical, a lossy re-encode is not.
    """
    if generated.shape != real.shape:
        return torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
    diff = (generated.detach().float() - real.detach().float()).abs().flatten(1)
    return diff.amax(dim=1) <= tol


def descriptors_identical(generated_emb: Tensor, real_emb: Tensor, tol: float = DESCRIPTOR_TOL) -> Tensor:
    """(B,) bool: the pairs whose descriptors have a cosine of at least ``1 - tol``.

    Equal descriptors do not make equal pixels (a collapsed model gives every image the same one): the
    flag is ``descriptor_identical``, never an exact copy, never a replication level.
    """
    cosine = torch.nn.functional.cosine_similarity(generated_emb.detach().float(), real_emb.detach().float(), dim=-1)
    return cosine >= 1 - tol


def mark_exact_copies(batch: Mapping[str, Any], prediction: dict[str, Any]) -> None:
    """Fill ``exact_copy`` from the batch's pixels and give those pairs level 5, for every method."""
    exact = pixels_identical(batch["generated"], batch["real"])
    level = prediction["level"]
    prediction["exact_copy"] = exact.long().to(level.device)
    prediction["level"] = torch.where(exact.to(level.device), torch.full_like(level, MAX_LEVEL), level)


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
        "exact_copy": Field(torch.int64, ("B",), "1 = the same pixels (filled by the task)", required=False),
    },
    make_metrics=make_metrics,
    update=update,
    primary_metric="pcc",
    mini_datamodule="MiniCopyDetection",
    complete=mark_exact_copies,
)
