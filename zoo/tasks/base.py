"""What every task defines: its batch and prediction schema, its metrics, and how the harness shows them.

The harness (``zoo predict``, the benchmark runner and report, the Hub card) dispatches through a task and
names none: everything task-specific is a field of ``Task``. A third party's task is a ``Task`` instance
registered like a method; ``binary_task`` (``zoo.tasks.binary``) builds the common image-in, score-out kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics import MetricCollection

from zoo.errors import ZooError


@dataclass(frozen=True)
class Field:
    """One entry of a batch or a prediction.

    ``shape`` uses ``B`` for the batch size, ``C/H/W`` for image dimensions and integers for fixed sizes;
    ``dtype`` is a torch dtype, or ``str`` for a list of strings. A ``label`` field is what the evaluate
    road adds (a ground truth): methods never need it to predict.
    """

    dtype: Any
    shape: tuple[Any, ...]
    doc: str
    required: bool = True
    label: bool = False

    def check(self, name: str, value: Any, batch_size: int | None, where: str) -> int:
        if self.dtype is str:
            if not (isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)):
                raise ZooError(f"{where}: field {name!r} must be a list of strings, got {type(value).__name__}")
            n = len(value)
        else:
            if not isinstance(value, torch.Tensor):
                raise ZooError(f"{where}: field {name!r} must be a tensor, got {type(value).__name__}")
            if self.dtype.is_floating_point != value.dtype.is_floating_point or (
                not self.dtype.is_floating_point and value.dtype != self.dtype
            ):
                raise ZooError(f"{where}: field {name!r} must have dtype {self.dtype}, got {value.dtype}")
            if value.dim() != len(self.shape):
                raise ZooError(
                    f"{where}: field {name!r} must have shape {self.shape}, got {tuple(value.shape)}"
                )
            for want, got in zip(self.shape, value.shape, strict=True):
                if isinstance(want, int) and want != got:
                    raise ZooError(
                        f"{where}: field {name!r} must have shape {self.shape}, got {tuple(value.shape)}"
                    )
            n = value.shape[0]
        if batch_size is not None and n != batch_size:
            raise ZooError(f"{where}: field {name!r} holds {n} items but the batch holds {batch_size}")
        return n


# a job's written predictions, as the report reads them back: one dict of strings per sample
PredictionRows = list[dict[str, str]]
# the metrics of bootstrap resamples given as index rows (R, n) -> {metric: (R,) values}
Scorer = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Derived:
    """A row the report derives from a method's predictions (copy detection's ``· raw``, ``· iso(train)``).

    ``scorers``: one per seed, over the seed's test predictions; ``labels_used``: every label the derived row
    used before the test (None: unknown).
    """

    suffix: str
    scorers: list[Scorer]
    labels_used: int | None


@dataclass(frozen=True)
class Task:
    """A task: its batch contract, prediction schema and metrics, and how the harness shows them."""

    name: str
    question: str
    batch: Mapping[str, Field]
    prediction: Mapping[str, Field]
    make_metrics: Callable[[], MetricCollection]
    # feeds one batch of predictions and targets to the metric collection
    update: Callable[[MetricCollection, Mapping[str, Any], Mapping[str, Any]], None]
    # binary tasks: label 1 is the positive class and predictions carry a real-valued "score"
    binary: bool = False
    positive: str = ""
    negative: str = ""
    primary_metric: str = "auroc"
    # registry name of the task's mini-suite datamodule
    mini_datamodule: str = ""
    # what the task adds to every method's prediction from the batch, in place (copy detection: exact copies)
    complete: Callable[[Mapping[str, Any], dict[str, Any]], None] | None = None
    # what ``zoo predict`` reads per input: "images" (--inputs) or "pairs" (--pairs, or two --inputs)
    inputs: str = "images"
    # metrics where a lower value is better, and columns that are settings (a threshold), never ranked
    lower_is_better: frozenset[str] = frozenset()
    not_ranked: frozenset[str] = frozenset()
    # metric -> fewest test negatives it can be read on (fewer: marked unreliable and never bold)
    min_negatives: Mapping[str, int] = field(default_factory=dict)
    # metric -> (meaning, "higher" / "lower" / "none"): the report's glossary
    glossary: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # the scorer of the report's bootstrap intervals, from a job's prediction rows (None: too few columns)
    scorer: Callable[[PredictionRows], Scorer | None] | None = None
    # what chance gets on a test split: metric values and the number of negatives (None: not a binary split)
    chance: Callable[[PredictionRows], tuple[dict[str, float], int | None] | None] | None = None
    # the report's rows derived from a method's test predictions and (reader) its training-split predictions
    derived: Callable[[Sequence[Mapping[str, Any]], Sequence[PredictionRows],
                       Callable[[Mapping[str, Any]], PredictionRows]], list[Derived]] | None = None
    # the benchmark writes each job's predictions on the training split too (for ``derived``)
    train_predictions: bool = False
    # the report's plots of a setting: "roc" (score against true_label) and/or "levels" (level against true_level)
    plots: tuple[str, ...] = ()
    # one-line notes the report's "How to read the tables" adds for this task
    report_notes: tuple[str, ...] = ()
    # what a score of this task does not establish, in plain words (shown beside every verdict of zoo serve)
    caveat: str = ""
    # the score is a logit: thresholds are shown as a probability, the logit beside it (``threshold_logit``)
    score_is_logit: bool = False
    # the Hugging Face Hub's pipeline tag of the model card (None: no tag fits)
    pipeline_tag: str | None = None
    # ``zoo predict``'s rows: turns the prediction's columns (one list per field) into readable ones, in place
    readable: Callable[[Any, Mapping[str, Any], dict[str, list[Any]], int], None] | None = None
    # the output columns that come first, in this order; the others follow in the prediction's order
    first_columns: tuple[str, ...] = ()

    @property
    def label_names(self) -> dict[str, str]:
        """A binary task's true label and decision as words ({"1": positive, "0": negative}); {} otherwise."""
        return {"1": self.positive, "0": self.negative} if self.binary else {}

    def check(self, fields: Mapping[str, Field], values: Mapping[str, Any], where: str, labelled: bool = True) -> None:
        size = None
        for name, spec in fields.items():
            if name not in values:
                if spec.required and (labelled or not spec.label):
                    raise ZooError(f"{where}: missing field {name!r} ({spec.doc}) of task {self.name}")
                continue
            size = spec.check(name, values[name], size, where)

    def check_batch(self, batch: Mapping[str, Any], labelled: bool = True) -> None:
        """Raise a ZooError if ``batch`` breaks the batch contract (``labelled=False``: labels may be absent)."""
        self.check(self.batch, batch, f"{self.name} batch", labelled)

    def check_prediction(self, prediction: Mapping[str, Any], method: str) -> None:
        """Raise a ZooError if ``prediction`` breaks the prediction schema."""
        self.check(self.prediction, prediction, f"{method} prediction")

    def truth(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch's label fields as columns of a predictions file, in the batch contract's order.

        A tensor (``label``, ``level``) becomes ``true_<name>``; a list of strings (``source``) keeps its name.
        """
        out: dict[str, Any] = {}
        for name, spec in self.batch.items():
            if spec.label and name in batch:
                value = batch[name]
                out[name if spec.dtype is str else f"true_{name}"] = (
                    value.detach().cpu() if isinstance(value, torch.Tensor) else list(value))
        return out
