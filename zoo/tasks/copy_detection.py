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

``zoo predict`` reads pairs; its rows: level (the method's point prediction; 5 for an exact copy), exact_copy,
level_argmax and level_expected (read from the six-level PDF; 5 for an exact copy), pdf_0 .. pdf_5 and
similarity, where the method gives them. The benchmark report adds like-for-like rows (``derived``): the raw
similarity as a level, and one isotonic map from score to level fitted on the training split's predictions.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MetricCollection, PearsonCorrCoef
from torchmetrics.classification import BinaryAUROC

from zoo.tasks.base import Derived, Field, PredictionRows, Scorer, Task
from zoo.tasks.metrics import MicroAveragePrecision
from zoo.tasks.numpy_metrics import auroc, column, micro_ap, pearson

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


def level_scorer(level: Sequence[float], true_level: Sequence[float]) -> Scorer:
    """The task's metrics (pcc, rd, muap, auroc) of resamples given as index rows."""
    pred = np.clip(np.asarray(level, float), 0, MAX_LEVEL) / MAX_LEVEL
    true = np.asarray(true_level, float) / MAX_LEVEL

    def scorer(idx: np.ndarray) -> dict[str, np.ndarray]:
        p, t = pred[idx], true[idx]
        copy = t >= COPY_FROM_LEVEL / MAX_LEVEL - 1e-9
        return {"pcc": pearson(p, t), "rd": np.abs(p - t).mean(1), "muap": micro_ap(p, copy), "auroc": auroc(p, copy)}

    return scorer


def scorer(rows: PredictionRows) -> Scorer | None:
    """The scorer of a job's prediction rows, when they hold a level and a true level."""
    level, true = column(rows, "level"), column(rows, "true_level")
    return None if level is None or true is None else level_scorer(level, true)


def chance(rows: PredictionRows) -> tuple[dict[str, float], int | None] | None:
    """A random ranking, and for ``rd`` the best constant level (the test median)."""
    true = column(rows, "true_level")
    if not true:
        return None
    median = float(np.median(true))
    return {"pcc": 0.0, "rd": statistics.fmean(abs(t - median) for t in true) / MAX_LEVEL,
            "muap": statistics.fmean(t >= COPY_FROM_LEVEL for t in true), "auroc": 0.5}, None


def isotonic_levels(train_score: Sequence[float], train_level: Sequence[float],
                    test_score: Sequence[float]) -> np.ndarray:
    """Levels of the test scores by an isotonic map from score to level fitted on the training pairs."""
    from sklearn.isotonic import IsotonicRegression

    regression = IsotonicRegression(y_min=0.0, y_max=MAX_LEVEL, increasing=True, out_of_bounds="clip")
    regression.fit(np.asarray(train_score, float), np.asarray(train_level, float))
    return regression.predict(np.asarray(test_score, float))


def derived(runs: Sequence[Mapping[str, Any]], preds: Sequence[PredictionRows],
            train_of: Callable[[Mapping[str, Any]], PredictionRows]) -> list[Derived]:
    """Like-for-like rows: the raw similarity, and the same isotonic map fitted on train."""
    rows = []
    raw = [column(p, "similarity") for p in preds]
    true = [column(p, "true_level") for p in preds]
    if all(r is not None for r in raw) and all(t is not None for t in true):
        # the unfitted map uses no label: only the labels of the descriptor's training, if it trained
        rows.append(Derived("raw", [level_scorer(MAX_LEVEL * np.clip(r, 0, 1), t) for r, t in zip(raw, true, strict=True)],
                            runs[0].get("train_size") if runs[0].get("trains") else 0))
    scorers, train_size = [], None
    for run, p in zip(runs, preds, strict=True):
        train = train_of(run)
        key = "similarity" if "similarity" in (train[0] if train else {}) else "level"
        train_score, train_true, test_score = column(train, key), column(train, "true_level"), column(p, key)
        test_true = column(p, "true_level")
        if train_score is None or train_true is None or test_score is None or test_true is None:
            return rows
        scorers.append(level_scorer(isotonic_levels(train_score, train_true, test_score), test_true))
        train_size = max(run.get("train_size") or 0, len(train))
    rows.append(Derived("iso(train)", scorers, train_size))
    return rows


def readable(model: Any, pred: Mapping[str, Any], columns: dict[str, list[Any]], size: int) -> None:
    """``level_argmax`` and ``level_expected`` read from the PDF, where the method gives one."""
    if "pdf" not in pred:
        return
    pdf = pred["pdf"].detach().float().cpu()
    argmax = pdf.argmax(dim=1)
    expected = pdf @ torch.arange(pdf.shape[1], dtype=pdf.dtype)
    if "exact_copy" in pred:  # the same pixels (the task's rule) are level 5 whatever the PDF says
        exact = pred["exact_copy"].detach().cpu().bool()
        argmax = torch.where(exact, torch.full_like(argmax, MAX_LEVEL), argmax)
        expected = torch.where(exact, torch.full_like(expected, MAX_LEVEL), expected)
    columns["level_argmax"] = argmax.tolist()
    columns["level_expected"] = expected.tolist()


GLOSSARY = {
    "auroc": ("area under the ROC curve of the score: the chance that a random positive outranks a random "
              "negative; 0.5 is chance. For copy detection: of 'level >= 3' ranked by the predicted level", "higher"),
    "pcc": ("Pearson correlation of the predicted and true replication level", "higher"),
    "rd": ("relative deviation: mean |predicted - true| level / 5", "lower"),
    "muap": ("micro average precision of 'level >= 3' ranked by the predicted level, ties ranked "
             "pessimistically (ISC2021)", "higher"),
}
REPORT_NOTE = (
    "Copy detection, like for like: each method's row is what it ships. `· raw` is the raw similarity "
    "of a method that outputs one, as the level 5 × clamp(similarity, 0, 1). `· iso(train)` is the same "
    "isotonic map for every method, from its raw score (the similarity, or else the predicted level) to "
    "the level, fitted on its predictions on the training split (scikit-learn `IsotonicRegression`); its "
    "`labels used` includes those training labels.")

TASK = Task(
    name="copy_detection",
    question="does this generated image replicate that real one, and how much?",
    caveat="A replication level says how much of the real image this model finds in the generated one. It is not "
    "a legal finding of copying; only an exact copy is a property of the pixels, every other level is the "
    "model's reading.",
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
    inputs="pairs",
    lower_is_better=frozenset({"rd"}),
    glossary=GLOSSARY,
    scorer=scorer,
    chance=chance,
    derived=derived,
    train_predictions=True,
    plots=("levels",),
    report_notes=(REPORT_NOTE,),
    pipeline_tag="image-feature-extraction",
    readable=readable,
    first_columns=("level", "level_argmax", "level_expected", "similarity", "exact_copy"),
)
