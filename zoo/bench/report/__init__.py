"""The report folder of a benchmark: tables with intervals, a chance row, a glossary, plots and the environment.

Rows whose interval of the primary metric includes the chance value are listed with the suite's note on why,
and each job whose predictions name a picture per image gets a labelled contact sheet.

Everything here is derived from the jobs' ``result.json`` and ``predictions.csv`` (test split only; a task's
derived rows, such as copy detection's level map, may read ``train_predictions.csv``) and from the jobs' data
arguments; nothing depends on which method a row is, and what depends on the task comes from its ``Task``.
One concern a module: ``tables`` (leaderboards, summary.csv, the console), ``plots``, ``sheets`` (contact
sheets), ``readme`` and ``environment``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from zoo.bench.report.environment import environment
from zoo.bench.report.jobs import read_predictions, task_of
from zoo.bench.report.plots import write_plots
from zoo.bench.report.readme import NO_NOTE, readme
from zoo.bench.report.sheets import SHEET_ROWS, write_sheets
from zoo.bench.report.tables import AT_CHANCE, CHANCE, leaderboards, print_tables, write_summary

BASE_COLUMNS = ["id", "task", "method", "label", "variant", "dataset", "setting", "seed", "status"]
COST_COLUMNS = ["params", "epochs", "steps", "train_size", "fit_s", "test_s", "wall_s", "cpu_s", "peak_rss_mb",
                "cuda_peak_mb", "device"]


def write_report(results: list[dict[str, Any]], output: Path, suite_name: str, console: Any = None,
                 note: str = "", limitations: list[str] | tuple[str, ...] = (),
                 notes: dict[str, str] | None = None) -> dict[str, Path]:
    """Write ``results.csv``, ``summary.csv``, ``results.json``, ``README.md``, ``environment.json``, plots and sheets.

    ``notes`` (the suite's, by method name or row label) say why a row's interval includes chance.
    """
    output.mkdir(parents=True, exist_ok=True)
    for result in results:
        _threshold_as_probability(result)
    metric_names = _metric_names(results)
    columns = [*BASE_COLUMNS, *metric_names, *COST_COLUMNS, "error"]
    with (output / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_flat(r, metric_names) for r in results)
    (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    env = environment()
    (output / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    boards = leaderboards(results, output)
    write_summary(boards, output / "summary.csv")
    plots = write_plots(results, output, boards)
    sheets = write_sheets(results, output)
    (output / "README.md").write_text(readme(suite_name, boards, results, plots, sheets, env, note,
                                             list(limitations), notes or {}))
    if console is not None:
        print_tables(boards, console)
    return {"csv": output / "results.csv", "summary": output / "summary.csv", "json": output / "results.json",
            "readme": output / "README.md"}


def _threshold_as_probability(result: dict[str, Any]) -> None:
    """A result of an earlier version whose task's score is a logit stored its threshold as a logit: the logit
    moves to ``threshold_logit`` and ``threshold`` becomes its sigmoid (``ZooModule.probability``), as the
    runner now writes them."""
    metrics = result.get("metrics") or {}
    spec = task_of(result)
    if spec is not None and spec.score_is_logit and "threshold" in metrics and "threshold_logit" not in metrics:
        metrics["threshold_logit"] = metrics["threshold"]
        metrics["threshold"] = 1 / (1 + math.exp(-metrics["threshold"])) if metrics["threshold"] > -700 else 0.0


def _metric_names(results: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [k for k in r.get("metrics", {}) if k not in names]
    return names


def _flat(result: dict[str, Any], metric_names: list[str]) -> dict[str, Any]:
    row = {k: result.get(k) for k in (*BASE_COLUMNS, *COST_COLUMNS, "error")}
    row.update({m: result.get("metrics", {}).get(m) for m in metric_names})
    return row


__all__ = ["AT_CHANCE", "CHANCE", "NO_NOTE", "SHEET_ROWS", "environment", "leaderboards", "print_tables",
           "read_predictions", "write_plots", "write_report", "write_sheets", "write_summary"]
