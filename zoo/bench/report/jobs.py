"""What the report reads of a finished job: its written predictions and its task."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from zoo.bench.runner import PREDICTIONS_NAME
from zoo.errors import ZooError
from zoo.tasks import Task, get_task


def read_predictions(output: Path, result: dict[str, Any], name: str = PREDICTIONS_NAME) -> list[dict[str, str]]:
    """A job's written predictions (test split by default), or [] when it has none."""
    path = output / "jobs" / result["id"] / name
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as f:
        return list(csv.DictReader(f))


def task_of(result: dict[str, Any]) -> Task | None:
    """The task of a job's result, or None for a job whose task is unknown (a method that failed to import)."""
    try:
        return get_task(result.get("task") or "")
    except ZooError:
        return None


def slug(text: str) -> str:
    """``text`` as a file name."""
    return re.sub(r"[^\w.=+-]+", "_", text).strip("_")[:120]
