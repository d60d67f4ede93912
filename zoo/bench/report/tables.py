"""The leaderboards of a report: rows with intervals, derived rows, chance rows, bold cells; summary.csv and the console.

A row is the mean ± std over seeds of each metric a job logged, with the bootstrap interval of those its
task's scorer recomputes from the predictions. Everything task-specific (scorer, chance row, derived rows,
direction of a metric, settings that are not ranked) comes from the row's ``Task``.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from zoo.bench import stats
from zoo.bench.report.jobs import read_predictions
from zoo.bench.runner import TRAIN_PREDICTIONS_NAME
from zoo.tasks import Task, get_task
from zoo.tasks.base import Scorer
from zoo.tasks.numpy_metrics import column as numeric_column

SUMMARY_COLUMNS = ["task", "method", "setting", "metric", "mean", "std", "ci_low", "ci_high", "seeds", "n_test"]
COST_HEADERS = ["params", "epochs", "steps", "labels used", "fit s", "test s", "wall s", "peak RSS MB"]
CHANCE = "chance"
AT_CHANCE = "≈"  # marks a primary metric whose 95% CI includes the chance row's value


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if _finite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _row(task: str, setting: str, label: str, kind: str, runs: list[dict[str, Any]],
         per_seed: list[dict[str, float]], scorers: list[Scorer | None], preds: list[list[dict[str, str]]],
         labels_used: int | None) -> dict[str, Any]:
    """A table row: mean ± std over seeds, the bootstrap interval where the predictions allow one."""
    first = runs[0]
    names: list[str] = []
    for values in per_seed:
        names += [k for k in values if k not in names]
    ci: dict[str, tuple[float, float]] = {}
    if scorers and all(s is not None for s in scorers):
        sizes = [len(p) for p in preds]
        ids = [[r.get("id") for r in p] for p in preds]
        ci = stats.bootstrap_ci(scorers, sizes, shared=all(i == ids[0] for i in ids))  # type: ignore[arg-type]
    metrics = {}
    for m in names:
        mean, std = _mean_std([v.get(m) for v in per_seed])
        metrics[m] = (mean, std, *ci.get(m, (None, None)))
    labels = [numeric_column(p, "true_label") for p in preds[:1]]
    negatives = sum(1 for v in labels[0] if v == 0) if labels and labels[0] else None
    return {
        "task": task, "setting": setting, "label": label, "kind": kind, "method": first["method"],
        "seeds": len(runs), "n_test": len(preds[0]) if preds and preds[0] else None, "negatives": negatives,
        "metrics": metrics, "data_args": first.get("data_args") or {},
        "params": first.get("params"), "epochs": first.get("epochs"), "steps": first.get("steps"),
        "labels_used": labels_used, "fit_s": _mean_or_none([r.get("fit_s") for r in runs]),
        "test_s": _mean_or_none([r.get("test_s") for r in runs]),
        "wall_s": _mean_or_none([r.get("wall_s") for r in runs]),
        "peak_rss_mb": max((r.get("peak_rss_mb") or 0) for r in runs),
    }


def _scorer(spec: Task, rows: list[dict[str, str]]) -> Scorer | None:
    """The task's metrics of a job's predictions, when it wrote the columns its task needs."""
    return spec.scorer(rows) if spec.scorer is not None else None


def _derived_rows(spec: Task, setting: str, label: str, runs: list[dict[str, Any]],
                  preds: list[list[dict[str, str]]], output: Path) -> list[dict[str, Any]]:
    """The rows the task derives from a method's predictions (e.g. like-for-like level maps)."""
    if spec.derived is None:
        return []
    derived = spec.derived(runs, preds, lambda run: read_predictions(output, dict(run), TRAIN_PREDICTIONS_NAME))
    return [_row(spec.name, setting, f"{label} · {d.suffix}", "derived", runs,
                 [stats.point(s, len(p)) for s, p in zip(d.scorers, preds, strict=True)], d.scorers, preds,
                 d.labels_used) for d in derived]


def _chance_row(spec: Task, setting: str, preds: list[dict[str, str]]) -> dict[str, Any] | None:
    """What the task's chance baseline (a majority-class decision, a random score, ...) gets on this test split."""
    chance = spec.chance(preds) if spec.chance is not None else None
    if chance is None:
        return None
    values, negatives = chance
    return {"task": spec.name, "setting": setting, "label": CHANCE, "kind": CHANCE, "method": CHANCE, "seeds": 0,
            "n_test": len(preds), "negatives": negatives, "data_args": {},
            "metrics": {k: (v, None, None, None) for k, v in values.items()}, "labels_used": 0}


def leaderboards(results: list[dict[str, Any]], output: Path) -> dict[str, dict[str, Any]]:
    """Per task: one row per (method label, setting), the task's derived rows, a chance row per setting."""
    boards: dict[str, dict[str, Any]] = {}
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("status") == "ok":
            by_task[r["task"]].append(r)
    for task, task_results in by_task.items():
        spec = get_task(task)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in sorted(task_results, key=lambda r: r["seed"]):
            groups[(r["setting"], r["label"])].append(r)
        rows, chance = [], {}
        for (setting, label), runs in groups.items():
            preds = [read_predictions(output, r) for r in runs]
            scorers = [_scorer(spec, p) for p in preds]
            logged = [{k: v for k, v in r["metrics"].items() if "/" not in k} for r in runs]
            rows.append(_row(task, setting, label, "method", runs, logged, scorers, preds, runs[0].get("train_size")))
            breakdown = [{k: v for k, v in r["metrics"].items() if "/" in k} for r in runs]
            if any(breakdown):
                rows[-1]["breakdown"] = _breakdown(spec, breakdown, preds if spec.binary else [])
            rows += _derived_rows(spec, setting, label, runs, preds, output)
            if setting not in chance and preds[0]:
                chance[setting] = _chance_row(spec, setting, preds[0])
        primary = spec.primary_metric
        sign = -1.0 if primary in spec.lower_is_better else 1.0
        rows.sort(key=lambda row: (row["setting"], -sign * _or_nan(row["metrics"].get(primary, (None,))[0]),
                                   row["label"]))
        rows += [row for row in chance.values() if row is not None]
        rows.sort(key=lambda row: row["setting"])  # stable: each setting's rows, then its chance row
        metrics: list[str] = []
        for row in rows:
            metrics += [m for m in row["metrics"] if m not in metrics]
        metrics.sort(key=lambda m: (m != primary, m in spec.not_ranked))
        base = {row["setting"]: row["metrics"].get(primary, (None,))[0] for row in rows if row["kind"] == CHANCE}
        for row in rows:
            _, _, low, high = row["metrics"].get(primary, (None, None, None, None))
            value = base.get(row["setting"])
            row["at_chance"] = row["kind"] != CHANCE and None not in (low, high, value) and low <= value <= high
        boards[task] = {"metrics": metrics, "rows": rows, "best": _best(rows, metrics, spec), "primary": primary,
                        "binary": spec.binary, "chance": base, "task": spec}
    return boards


def _breakdown(spec: Task, per_seed: list[dict[str, float]],
               preds: list[list[dict[str, str]]]) -> dict[str, dict[str, tuple]]:
    """``source/metric`` entries as {source: {metric: (mean, std, ci_low, ci_high)}}.

    A binary task's metrics that the predictions recompute (``auroc``, ``acc``, ...) get the same bootstrap
    interval as the table's rows, on the positives and that source's negatives (the ``source`` column).
    """
    out: dict[str, dict[str, tuple]] = defaultdict(dict)
    keys: list[str] = []
    for values in per_seed:
        keys += [k for k in values if k not in keys]
    for key in keys:
        source, metric = key.rsplit("/", 1)
        out[source][metric] = (*_mean_std([v.get(key) for v in per_seed]), None, None)
    for source, metrics in out.items():
        subsets = [[r for r in p if r.get("source") == source or float(r.get("true_label") or 0) == 1] for p in preds]
        if not subsets or not all(any(r.get("source") == source for r in sub) for sub in subsets):
            continue
        scorers = [_scorer(spec, sub) for sub in subsets]
        if any(scorer is None for scorer in scorers):
            continue
        ids = [[r.get("id") for r in sub] for sub in subsets]
        ci = stats.bootstrap_ci(scorers, [len(sub) for sub in subsets], shared=all(i == ids[0] for i in ids))  # type: ignore[arg-type]
        for metric, (mean, std, _, _) in metrics.items():
            if metric in ci:
                metrics[metric] = (mean, std, *ci[metric])
    return dict(out)


def _best(rows: list[dict[str, Any]], metrics: list[str], spec: Task) -> set[tuple[str, str, str]]:
    """(setting, label, metric) of cells in bold: the one best value of a setting, better than chance.

    A tie for best is not bold, nor a value no better than the chance row's (e.g. an accuracy equal to
    the majority rate), nor a setting of the task (a threshold), nor a value the task marks unreliable.
    """
    best: set[tuple[str, str, str]] = set()
    for setting in {row["setting"] for row in rows}:
        same = [row for row in rows if row["setting"] == setting and row["kind"] != CHANCE]
        chance = next((row for row in rows if row["setting"] == setting and row["kind"] == CHANCE), None)
        for m in metrics:
            if m in spec.not_ranked:
                continue
            values = [(round(row["metrics"][m][0], 3), row) for row in same
                      if m in row["metrics"] and row["metrics"][m][0] is not None
                      and not unreliable(row, m, spec)]
            if not values:
                continue
            lower = m in spec.lower_is_better
            target = min(v for v, _ in values) if lower else max(v for v, _ in values)
            winners = [row for v, row in values if v == target]
            base = chance["metrics"].get(m, (None,))[0] if chance else None
            beats = base is None or (target < round(base, 3) if lower else target > round(base, 3))
            if len(winners) == 1 and beats:
                best.add((setting, winners[0]["label"], m))
    return best


def unreliable(row: dict[str, Any], metric: str, spec: Task) -> bool:
    """The row's test split has fewer negatives than the task says ``metric`` can be read on."""
    least = spec.min_negatives.get(metric)
    return least is not None and row.get("negatives") is not None and row["negatives"] < least


def write_summary(boards: dict[str, dict[str, Any]], path: Path) -> None:
    """``summary.csv``: one line per task, row, setting and metric (long form)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SUMMARY_COLUMNS)
        for task, board in boards.items():
            for row in board["rows"]:
                for metric, (mean, std, low, high) in row["metrics"].items():
                    writer.writerow([task, row["label"], row["setting"], metric, _num(mean), _num(std), _num(low),
                                     _num(high), row["seeds"], row["n_test"] if row["n_test"] is not None else ""])
                for source, values in (row.get("breakdown") or {}).items():
                    for metric, (mean, std, low, high) in values.items():
                        writer.writerow([task, row["label"], row["setting"], f"{source}/{metric}", _num(mean),
                                         _num(std), _num(low), _num(high), row["seeds"], ""])


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


# ------------------------------------------------------------------------------------------ cells
def cell(row: dict[str, Any], metric: str, spec: Task, with_ci: bool = False) -> str:
    """A metric's cell: mean ± std, the interval in brackets, † where the task marks it unreliable."""
    mean, std, low, high = row["metrics"].get(metric, (None, None, None, None))
    if mean is None:
        return "-"
    text = f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"
    if with_ci and low is not None:
        text += f" [{low:.2f}, {high:.2f}]"
    return text + (" †" if unreliable(row, metric, spec) else "")


def _ci(row: dict[str, Any], metric: str) -> str:
    _, _, low, high = row["metrics"].get(metric, (None, None, None, None))
    return "-" if low is None else f"[{low:.2f}, {high:.2f}]" + (f" {AT_CHANCE}" if row.get("at_chance") else "")


def cost_cells(row: dict[str, Any]) -> list[str]:
    """The row's cost columns (``COST_HEADERS``)."""
    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return [num(row.get("params"), ","), num(row.get("epochs"), ""), num(row.get("steps"), ""),
            num(row.get("labels_used"), ""), num(row.get("fit_s"), ".1f"), num(row.get("test_s"), ".1f"),
            num(row.get("wall_s"), ".1f"), num(row.get("peak_rss_mb"), ".0f")]


def settings(board: dict[str, Any]) -> list[str]:
    """The settings of a board's rows, sorted."""
    return sorted({row["setting"] for row in board["rows"]})


def print_tables(boards: dict[str, dict[str, Any]], console: Any) -> None:
    """Per task: the metrics (best cells in bold), the per-negative breakdown and the costs, each in 120 columns."""
    from rich.table import Table

    for task, board in boards.items():
        spec = board["task"]
        several = len(settings(board)) > 1
        metrics = [m for m in board["metrics"] if m not in spec.not_ranked]
        title = f"{task}: test split" + ("" if several else f", {settings(board)[0]}")
        flagged = any(row.get("at_chance") for row in board["rows"])
        table = Table(title=title, caption=f"{AT_CHANCE}: the {board['primary']} interval includes chance; the "
                      "report's README says why" if flagged else None)
        for column in ("method", *(["setting"] if several else []), "seeds", "n", *metrics,
                       f"{board['primary']} 95% CI"):
            table.add_column(column, justify="left" if column in ("method", "setting") else "right", overflow="fold")
        for row in board["rows"]:
            cells = [f"[bold]{cell(row, m, spec)}[/]" if (row["setting"], row["label"], m) in board["best"]
                     else cell(row, m, spec) for m in metrics]
            style = "dim" if row["kind"] == CHANCE else None
            table.add_row(row["label"], *([row["setting"]] if several else []), str(row["seeds"] or "-"),
                          str(row["n_test"] or "-"), *cells, _ci(row, board["primary"]), style=style)
        console.print(table)
        breakdown = [row for row in board["rows"] if row.get("breakdown")]
        if breakdown:
            sub = Table(title=f"{task}: against each negative source")
            names = sorted({m for row in breakdown for v in row["breakdown"].values() for m in v})
            for column in ("method", *(["setting"] if several else []), "negatives", *names):
                sub.add_column(column, overflow="fold")
            for row in breakdown:
                for source, values in row["breakdown"].items():
                    sub.add_row(row["label"], *([row["setting"]] if several else []), source,
                                *[cell({"metrics": {m: values.get(m, (None,) * 4)}}, m, spec, True)
                                  for m in names])
            console.print(sub)
        cost = Table(title=f"{task}: cost per seed (mean)")
        for column in ("method", *(["setting"] if several else []), *COST_HEADERS):
            cost.add_column(column, justify="left" if column in ("method", "setting") else "right", overflow="fold")
        for row in board["rows"]:
            if row["kind"] != CHANCE:  # a derived row costs what its job did, with its own labels
                cost.add_row(row["label"], *([row["setting"]] if several else []), *cost_cells(row))
        console.print(cost)


# ------------------------------------------------------------------------------------------ helpers
def _mean_or_none(values: list[Any]) -> float | None:
    values = [float(v) for v in values if _finite(v)]
    return statistics.fmean(values) if values else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _or_nan(value: float | None) -> float:
    return -math.inf if value is None else value
