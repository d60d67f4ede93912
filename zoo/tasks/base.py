"""What every task defines: fields of a batch, fields of a prediction, and a metric collection."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Task:
    """A task: its batch contract, prediction schema and metrics."""

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
