"""The report folder of a benchmark: tables with intervals, a chance row, a glossary, plots and the environment.

Rows whose interval of the primary metric includes the chance value are listed with the suite's note on why,
and each job whose predictions name a picture per image gets a labelled contact sheet.

Everything here is derived from the jobs' ``result.json`` and ``predictions.csv`` (test split only; the
copy-detection level map of the like-for-like rows is fitted on ``train_predictions.csv``) and from the
jobs' data arguments; nothing depends on which method a row is.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shutil
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from zoo.bench import stats
from zoo.bench.runner import PREDICTIONS_NAME, TRAIN_PREDICTIONS_NAME

# metrics where a lower value is better; the decision threshold is a setting, not a score
LOWER_IS_BETTER = {"rd"}
NOT_RANKED = {"threshold", "threshold_logit"}
MIN_NEGATIVES_FOR_TPR = 100  # below this, TPR at 1% FPR rests on no negative at all above the threshold
GLOSSARY = {
    "acc": ("accuracy of the binary decision (threshold calibrated on validation, or the method's own rule)",
            "higher"),
    "auroc": ("area under the ROC curve of the score: the chance that a random positive outranks a random "
              "negative; 0.5 is chance. For copy detection: of 'level >= 3' ranked by the predicted level", "higher"),
    "ap": ("average precision of the score (area under the precision-recall curve)", "higher"),
    "tpr_at_1fpr": ("true-positive rate at a false-positive rate of at most 1% (marked † when the test split has "
                    f"fewer than {MIN_NEGATIVES_FOR_TPR} negatives, where one negative is already more than 1%)",
                    "higher"),
    "threshold": ("the decision threshold calibrated on validation (a setting, not ranked); for fake detection a "
                  "probability generated, as `zoo predict` prints it", "none"),
    "threshold_logit": ("fake detection: the same threshold on the method's logit score (a setting, not ranked)",
                        "none"),
    "pcc": ("Pearson correlation of the predicted and true replication level", "higher"),
    "rd": ("relative deviation: mean |predicted - true| level / 5", "lower"),
    "muap": ("micro average precision of 'level >= 3' ranked by the predicted level, ties ranked "
             "pessimistically (ISC2021)", "higher"),
    "auroc_raw": ("AUROC of the method's raw score (overall, and against one negative source)", "higher"),
    "auroc_calibrated": ("AUROC of the method's calibrated score", "higher"),
}
BASE_COLUMNS = ["id", "task", "method", "label", "variant", "dataset", "setting", "seed", "status"]
COST_COLUMNS = ["params", "epochs", "steps", "train_size", "fit_s", "test_s", "wall_s", "cpu_s", "peak_rss_mb",
                "cuda_peak_mb", "device"]
SUMMARY_COLUMNS = ["task", "method", "setting", "metric", "mean", "std", "ci_low", "ci_high", "seeds", "n_test"]
COST_HEADERS = ["params", "epochs", "steps", "labels used", "fit s", "test s", "wall s", "peak RSS MB"]
CHANCE = "chance"
AT_CHANCE = "≈"  # marks a primary metric whose 95% CI includes the chance row's value
NO_NOTE = "no note in the suite"
SHEET_ROWS = 24  # images on one contact sheet; past it, the half with the highest and the half with the lowest scores
PACKAGES = ("provenance-zoo", "torch", "lightning", "torchmetrics", "torchvision", "timm", "open_clip_torch",
            "diffusers", "transformers", "peft", "faiss-cpu", "huggingface_hub", "numpy", "scikit-image")


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
    (output / "README.md").write_text(_readme(suite_name, boards, results, plots, sheets, env, note,
                                              list(limitations), notes or {}))
    if console is not None:
        print_tables(boards, console)
    return {"csv": output / "results.csv", "summary": output / "summary.csv", "json": output / "results.json",
            "readme": output / "README.md"}


# ------------------------------------------------------------------------------------------ rows
def _threshold_as_probability(result: dict[str, Any]) -> None:
    """A fake-detection result of an earlier version, which stored its threshold as a logit: the logit moves to
    ``threshold_logit`` and ``threshold`` becomes its sigmoid (every fake-detection score is a logit, see
    ``ZooModule.probability``), as the runner now writes them."""
    metrics = result.get("metrics") or {}
    if result.get("task") == "fake_detection" and "threshold" in metrics and "threshold_logit" not in metrics:
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


def read_predictions(output: Path, result: dict[str, Any], name: str = PREDICTIONS_NAME) -> list[dict[str, str]]:
    """A job's written predictions (test split by default), or [] when it has none."""
    path = output / "jobs" / result["id"] / name
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], name: str) -> list[float] | None:
    if not rows or name not in rows[0]:
        return None
    try:
        return [float(row[name]) for row in rows]
    except (TypeError, ValueError):
        return None


def _scorer(task: str, binary: bool, rows: list[dict[str, str]]) -> stats.Scorer | None:
    """The metrics of a job's predictions, when it wrote the columns its task needs."""
    if binary:
        score, label = _column(rows, "score"), _column(rows, "true_label")
        return None if score is None or label is None else stats.binary_scorer(score, _column(rows, "decision"), label)
    if task == "copy_detection":
        level, true = _column(rows, "level"), _column(rows, "true_level")
        return None if level is None or true is None else stats.level_scorer(level, true)
    return None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if _finite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _row(task: str, setting: str, label: str, kind: str, runs: list[dict[str, Any]],
         per_seed: list[dict[str, float]], scorers: list[stats.Scorer | None], preds: list[list[dict[str, str]]],
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
    labels = [_column(p, "true_label") for p in preds[:1]]
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


def _copy_rows(task: str, setting: str, label: str, runs: list[dict[str, Any]],
               preds: list[list[dict[str, str]]], output: Path) -> list[dict[str, Any]]:
    """Like-for-like copy-detection rows: the raw similarity, and the same isotonic map fitted on train."""
    rows = []
    raw = [_column(p, "similarity") for p in preds]
    true = [_column(p, "true_level") for p in preds]
    if all(r is not None for r in raw) and all(t is not None for t in true):
        scorers = [stats.level_scorer(5 * np.clip(r, 0, 1), t) for r, t in zip(raw, true, strict=True)]
        # the unfitted map uses no label: only the labels of the descriptor's training, if it trained
        rows.append(_row(task, setting, f"{label} · raw", "derived", runs,
                         [stats.point(s, len(p)) for s, p in zip(scorers, preds, strict=True)], scorers, preds,
                         runs[0].get("train_size") if runs[0].get("trains") else 0))
    scorers, train_size = [], None
    for run, p in zip(runs, preds, strict=True):
        train = read_predictions(output, run, TRAIN_PREDICTIONS_NAME)
        key = "similarity" if "similarity" in (train[0] if train else {}) else "level"
        train_score, train_true, test_score = _column(train, key), _column(train, "true_level"), _column(p, key)
        test_true = _column(p, "true_level")
        if None in (train_score, train_true, test_score, test_true):
            return rows
        levels = stats.isotonic_levels(train_score, train_true, test_score)  # type: ignore[arg-type]
        scorers.append(stats.level_scorer(levels, test_true))  # type: ignore[arg-type]
        train_size = max(run.get("train_size") or 0, len(train))
    rows.append(_row(task, setting, f"{label} · iso(train)", "derived", runs,
                     [stats.point(s, len(p)) for s, p in zip(scorers, preds, strict=True)], scorers, preds,
                     train_size))
    return rows


def _chance_row(task: str, setting: str, binary: bool, preds: list[dict[str, str]]) -> dict[str, Any] | None:
    """What a majority-class decision and a random (or best constant) score get on this test split."""
    if binary:
        labels = _column(preds, "true_label")
        if not labels:
            return None
        p = statistics.fmean(v == 1 for v in labels)
        values = {"acc": max(p, 1 - p), "auroc": 0.5, "ap": p, "tpr_at_1fpr": stats.MAX_FPR}
        negatives = sum(v == 0 for v in labels)
    elif task == "copy_detection":
        true = _column(preds, "true_level")
        if not true:
            return None
        median = float(np.median(true))
        values = {"pcc": 0.0, "rd": statistics.fmean(abs(t - median) for t in true) / stats.MAX_LEVEL,
                  "muap": statistics.fmean(t >= stats.COPY_FROM_LEVEL for t in true), "auroc": 0.5}
        negatives = None
    else:
        return None
    return {"task": task, "setting": setting, "label": CHANCE, "kind": CHANCE, "method": CHANCE, "seeds": 0,
            "n_test": len(preds), "negatives": negatives, "data_args": {},
            "metrics": {k: (v, None, None, None) for k, v in values.items()}, "labels_used": 0}


def leaderboards(results: list[dict[str, Any]], output: Path) -> dict[str, dict[str, Any]]:
    """Per task: one row per (method label, setting), derived copy-detection rows, a chance row per setting."""
    from zoo.tasks import get_task

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
            scorers = [_scorer(task, spec.binary, p) for p in preds]
            logged = [{k: v for k, v in r["metrics"].items() if "/" not in k} for r in runs]
            rows.append(_row(task, setting, label, "method", runs, logged, scorers, preds, runs[0].get("train_size")))
            breakdown = [{k: v for k, v in r["metrics"].items() if "/" in k} for r in runs]
            if any(breakdown):
                rows[-1]["breakdown"] = _breakdown(breakdown, preds if spec.binary else [])
            if task == "copy_detection":
                rows += _copy_rows(task, setting, label, runs, preds, output)
            if setting not in chance and preds[0]:
                chance[setting] = _chance_row(task, setting, spec.binary, preds[0])
        primary = spec.primary_metric
        sign = -1.0 if primary in LOWER_IS_BETTER else 1.0
        rows.sort(key=lambda row: (row["setting"], -sign * _or_nan(row["metrics"].get(primary, (None,))[0]),
                                   row["label"]))
        rows += [row for row in chance.values() if row is not None]
        rows.sort(key=lambda row: row["setting"])  # stable: each setting's rows, then its chance row
        metrics: list[str] = []
        for row in rows:
            metrics += [m for m in row["metrics"] if m not in metrics]
        metrics.sort(key=lambda m: (m != primary, m in NOT_RANKED))
        base = {row["setting"]: row["metrics"].get(primary, (None,))[0] for row in rows if row["kind"] == CHANCE}
        for row in rows:
            _, _, low, high = row["metrics"].get(primary, (None, None, None, None))
            value = base.get(row["setting"])
            row["at_chance"] = row["kind"] != CHANCE and None not in (low, high, value) and low <= value <= high
        boards[task] = {"metrics": metrics, "rows": rows, "best": _best(rows, metrics), "primary": primary,
                        "binary": spec.binary, "chance": base}
    return boards


def _breakdown(per_seed: list[dict[str, float]], preds: list[list[dict[str, str]]]) -> dict[str, dict[str, tuple]]:
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
        scorers = [_scorer("", True, sub) for sub in subsets]
        if any(scorer is None for scorer in scorers):
            continue
        ids = [[r.get("id") for r in sub] for sub in subsets]
        ci = stats.bootstrap_ci(scorers, [len(sub) for sub in subsets], shared=all(i == ids[0] for i in ids))  # type: ignore[arg-type]
        for metric, (mean, std, _, _) in metrics.items():
            if metric in ci:
                metrics[metric] = (mean, std, *ci[metric])
    return dict(out)


def _best(rows: list[dict[str, Any]], metrics: list[str]) -> set[tuple[str, str, str]]:
    """(setting, label, metric) of cells in bold: the one best value of a setting, better than chance.

    A tie for best is not bold, nor a value no better than the chance row's (e.g. an accuracy equal to
    the majority rate), nor a TPR at 1% FPR marked unreliable.
    """
    best: set[tuple[str, str, str]] = set()
    for setting in {row["setting"] for row in rows}:
        same = [row for row in rows if row["setting"] == setting and row["kind"] != CHANCE]
        chance = next((row for row in rows if row["setting"] == setting and row["kind"] == CHANCE), None)
        for m in metrics:
            if m in NOT_RANKED:
                continue
            values = [(round(row["metrics"][m][0], 3), row) for row in same
                      if m in row["metrics"] and row["metrics"][m][0] is not None
                      and not _unreliable(row, m)]
            if not values:
                continue
            lower = m in LOWER_IS_BETTER
            target = min(v for v, _ in values) if lower else max(v for v, _ in values)
            winners = [row for v, row in values if v == target]
            base = chance["metrics"].get(m, (None,))[0] if chance else None
            beats = base is None or (target < round(base, 3) if lower else target > round(base, 3))
            if len(winners) == 1 and beats:
                best.add((setting, winners[0]["label"], m))
    return best


def _unreliable(row: dict[str, Any], metric: str) -> bool:
    return metric == "tpr_at_1fpr" and row.get("negatives") is not None and row["negatives"] < MIN_NEGATIVES_FOR_TPR


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


# ------------------------------------------------------------------------------------------ tables
def _cell(row: dict[str, Any], metric: str, with_ci: bool = False) -> str:
    mean, std, low, high = row["metrics"].get(metric, (None, None, None, None))
    if mean is None:
        return "-"
    text = f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"
    if with_ci and low is not None:
        text += f" [{low:.2f}, {high:.2f}]"
    return text + (" †" if _unreliable(row, metric) else "")


def _ci(row: dict[str, Any], metric: str) -> str:
    _, _, low, high = row["metrics"].get(metric, (None, None, None, None))
    return "-" if low is None else f"[{low:.2f}, {high:.2f}]" + (f" {AT_CHANCE}" if row.get("at_chance") else "")


def _cost_cells(row: dict[str, Any]) -> list[str]:
    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return [num(row.get("params"), ","), num(row.get("epochs"), ""), num(row.get("steps"), ""),
            num(row.get("labels_used"), ""), num(row.get("fit_s"), ".1f"), num(row.get("test_s"), ".1f"),
            num(row.get("wall_s"), ".1f"), num(row.get("peak_rss_mb"), ".0f")]


def _settings(board: dict[str, Any]) -> list[str]:
    return sorted({row["setting"] for row in board["rows"]})


def print_tables(boards: dict[str, dict[str, Any]], console: Any) -> None:
    """Per task: the metrics (best cells in bold), the per-negative breakdown and the costs, each in 120 columns."""
    from rich.table import Table

    for task, board in boards.items():
        several = len(_settings(board)) > 1
        metrics = [m for m in board["metrics"] if m not in NOT_RANKED]
        title = f"{task}: test split" + ("" if several else f", {_settings(board)[0]}")
        flagged = any(row.get("at_chance") for row in board["rows"])
        table = Table(title=title, caption=f"{AT_CHANCE}: the {board['primary']} interval includes chance; the "
                      "report's README says why" if flagged else None)
        for column in ("method", *(["setting"] if several else []), "seeds", "n", *metrics,
                       f"{board['primary']} 95% CI"):
            table.add_column(column, justify="left" if column in ("method", "setting") else "right", overflow="fold")
        for row in board["rows"]:
            cells = [f"[bold]{_cell(row, m)}[/]" if (row["setting"], row["label"], m) in board["best"]
                     else _cell(row, m) for m in metrics]
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
                                *[_cell({"metrics": {m: values.get(m, (None,) * 4)}}, m, True) for m in names])
            console.print(sub)
        cost = Table(title=f"{task}: cost per seed (mean)")
        for column in ("method", *(["setting"] if several else []), *COST_HEADERS):
            cost.add_column(column, justify="left" if column in ("method", "setting") else "right", overflow="fold")
        for row in board["rows"]:
            if row["kind"] != CHANCE:  # a derived row costs what its job did, with its own labels
                cost.add_row(row["label"], *([row["setting"]] if several else []), *_cost_cells(row))
        console.print(cost)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def clean(text: str) -> str:
        return str(text).replace("|", "\\|")

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(clean(c) for c in cells) + " |" for cells in rows], ""]


def _readme(suite_name: str, boards: dict[str, dict[str, Any]], results: list[dict[str, Any]],
            plots: list[Path], sheets: list[Path], env: dict[str, Any], note: str,
            limitations: list[str], notes: dict[str, str]) -> str:
    ok = sum(r.get("status") == "ok" for r in results)
    lines = [
        f"# Benchmark report: {suite_name}", "",
        f"{ok} of {len(results)} jobs succeeded. Written {env['date']} on {_hardware_line(env)}.", "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "## How to read the tables", "",
        "- Metrics are computed on the test split only. Binary decision thresholds were calibrated on the "
        "validation split; `labels used` counts every label a method used before the test (training labels, "
        "and validation labels when they calibrated a threshold or a level map).",
        "- A cell is the mean ± standard deviation over seeds, then the 95% confidence interval in brackets. "
        "The interval is a two-level percentile bootstrap (1000 replicates): each replicate resamples the "
        "seeds and the test samples with replacement (the same samples for every seed tested on the same "
        "split), scores each seed on the resample and averages; it covers the small test split's sampling "
        "noise and the seed spread together. Against each negative source, the predictions' own metrics "
        "(`auroc`, `acc`) are resampled on the positives and that source's negatives. Metrics that the "
        "predictions cannot recompute (the decision threshold, a method's other scores) have no interval.",
        "- `n` is the number of test samples. The `chance` row of each setting is what a majority-class "
        "decision and a random score get (copy detection: a random ranking, and for `rd` the best constant "
        "level, the test median).",
        "- Bold marks the single best value of a setting when it beats the chance row: ties are not bold, nor "
        f"is a value equal to chance. † marks a TPR at 1% FPR measured on fewer than {MIN_NEGATIVES_FOR_TPR} "
        "negatives, where it cannot be read as such.",
        f"- {AT_CHANCE} marks a primary metric whose 95% interval includes the chance row's value (AUROC 0.5, "
        "PCC 0): the test split cannot tell that row from chance. The section *At chance* lists those rows "
        "with the suite's note on why.",
        "- Copy detection, like for like: each method's row is what it ships. `· raw` is the raw similarity "
        "of a method that outputs one, as the level 5 × clamp(similarity, 0, 1). `· iso(train)` is the same "
        "isotonic map for every method, from its raw score (the similarity, or else the predicted level) to "
        "the level, fitted on its predictions on the training split (scikit-learn `IsotonicRegression`); its "
        "`labels used` includes those training labels.",
        "",
    ]
    for task, board in boards.items():
        several = len(_settings(board)) > 1
        lines += [f"## {task}", "", f"Primary metric: `{board['primary']}`."
                  + ("" if several else f" Setting: {_settings(board)[0]}."), ""]
        headers = ["method", *(["setting"] if several else []), "seeds", "n", *board["metrics"]]
        body = []
        for row in board["rows"]:
            cells = [f"**{_cell(row, m, True)}**" if (row["setting"], row["label"], m) in board["best"]
                     else _cell(row, m, True) for m in board["metrics"]]
            if row.get("at_chance"):
                cells[0] += f" {AT_CHANCE}"  # the primary metric comes first
            body.append([row["label"], *([row["setting"]] if several else []), str(row["seeds"] or "-"),
                         str(row["n_test"] or "-"), *cells])
        lines += _md_table(headers, body)
        breakdown = [row for row in board["rows"] if row.get("breakdown")]
        if breakdown:
            names = sorted({m for row in breakdown for v in row["breakdown"].values() for m in v})
            body = [[row["label"], *([row["setting"]] if several else []), source,
                     *[_cell({"metrics": {m: values.get(m, (None,) * 4)}}, m, True) for m in names]]
                    for row in breakdown for source, values in row["breakdown"].items()]
            lines += [f"Against each negative source ({task}):", ""]
            lines += _md_table(["method", *(["setting"] if several else []), "negatives", *names], body)
        body = [[row["label"], *([row["setting"]] if several else []), *_cost_cells(row)]
                for row in board["rows"] if row["kind"] != CHANCE]
        lines += ["Cost per seed (mean over seeds):", ""]
        lines += _md_table(["method", *(["setting"] if several else []), *COST_HEADERS], body)
    lines += _at_chance(boards, notes)
    used = [m for board in boards.values() for m in board["metrics"]]
    used += [m for board in boards.values() for row in board["rows"] for v in (row.get("breakdown") or {}).values()
             for m in v]
    glossary = [m for i, m in enumerate(used) if m not in used[:i]]
    if glossary:
        lines += ["## Glossary", "", "| metric | meaning | better |", "|---|---|---|"]
        for m in glossary:
            meaning, better = GLOSSARY.get(m, ("a method-specific metric (see the method's README)", "see README"))
            lines.append(f"| `{m}` | {meaning} | {better} |")
        lines.append("")
    if limitations:
        lines += ["## What this suite cannot show", "", *[f"- {text}" for text in limitations], ""]
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        lines += ["## Failed jobs", "", "| job | error |", "|---|---|"]
        for r in failed:
            error = str(r.get("error") or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {r['id']} | {error} (traceback: `jobs/{r['id']}/error.txt`) |")
        lines.append("")
    if plots:
        lines += ["## Plots", "", "ROC curves are drawn on a log false-positive-rate axis (an FPR of 0 at half "
                  "of one negative); the dot on each curve is the method's operating point, its decision on "
                  "the test split.", ""] + [f"![{p.stem}]({p.as_posix()})" for p in plots] + [""]
    if sheets:
        lines += ["## Contact sheets", "", "One sheet per job whose predictions name a picture per test image: "
                  "each row is one image as the method drew it, with its file name, true label, score and "
                  f"decision, sorted by score (highest first). A sheet holds at most {SHEET_ROWS} images: past "
                  "that, the half with the highest and the half with the lowest scores.", ""]
        lines += [f"![{p.stem}]({p.as_posix()})" for p in sheets] + [""]
    lines += ["## Environment", "", "See `environment.json` (versions of every dependency, hardware).", ""]
    return "\n".join(lines)


def _at_chance(boards: dict[str, dict[str, Any]], notes: dict[str, str]) -> list[str]:
    """The section listing every row whose primary-metric interval includes chance, with the suite's note."""
    body = []
    for task, board in boards.items():
        primary = board["primary"]
        for row in board["rows"]:
            if not row.get("at_chance"):
                continue
            mean, _, low, high = row["metrics"][primary]
            why = notes.get(row["label"]) or notes.get(row["method"]) or NO_NOTE
            body.append([task, row["label"], row["setting"], f"`{primary}`", f"{mean:.3f}", f"[{low:.2f}, {high:.2f}]",
                         f"{board['chance'][row['setting']]:g}", str(row["seeds"] or "-"), str(row["n_test"] or "-"),
                         why])
    if not body:
        return []
    return ["## At chance", "", "The 95% interval of the primary metric includes the chance value for these rows, "
            "so their test split cannot tell them from chance (the note is the suite's, by row label or method "
            "name):", "", *_md_table(["task", "method", "setting", "metric", "mean", "95% CI", "chance", "seeds",
                                      "n", "why"], body)]


# ------------------------------------------------------------------------------------------ plots
def write_plots(results: list[dict[str, Any]], output: Path, boards: dict[str, dict[str, Any]]) -> list[Path]:
    """ROC curves of binary tasks, predicted vs true level, cross-generator heat-maps; paths relative to output."""
    import matplotlib

    matplotlib.use("Agg")
    from zoo.tasks import get_task

    plots_dir = output / "plots"
    if plots_dir.exists():
        shutil.rmtree(plots_dir)
    written: list[Path] = []
    ok = [r for r in results if r.get("status") == "ok"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        groups[(r["task"], r["setting"])].append(r)
    for (task, setting), runs in sorted(groups.items()):
        runs = _first_seed(runs)
        name = _slug(f"{task}_{setting}")
        if get_task(task).binary:
            written += _roc_plot(runs, output, plots_dir / f"roc_{name}.png", f"{task}: ROC ({setting}, first seed)")
        if task == "copy_detection":
            written += _level_plot(runs, output, plots_dir / f"levels_{name}.png", f"{task}: level ({setting})")
    for task, board in boards.items():
        written += _cross_plots(task, board, plots_dir)
    return [p.relative_to(output) for p in written]


def _first_seed(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        chosen.setdefault(r["label"], r)
    return list(chosen.values())


def _roc_plot(runs: list[dict[str, Any]], output: Path, path: Path, title: str) -> list[Path]:
    """ROC on a log-FPR axis, each method's operating point (its test decisions) marked."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    floor = 1.0
    for r in runs:
        rows = read_predictions(output, r)
        labels, scores = _column(rows, "true_label"), _column(rows, "score")
        if labels is None or scores is None or len(set(labels)) < 2:
            continue
        negatives = sum(v == 0 for v in labels)
        floor = min(floor, 0.5 / negatives)  # an FPR of 0 is drawn at half of one negative
        fpr, tpr, _ = roc_curve(labels, scores)
        (line,) = ax.plot(np.maximum(fpr, 0.5 / negatives), tpr,
                          label=f"{r['label']} (AUROC {roc_auc_score(labels, scores):.3f})")
        decisions = _column(rows, "decision")
        if decisions is not None:
            neg = [d for d, y in zip(decisions, labels, strict=True) if y == 0]
            pos = [d for d, y in zip(decisions, labels, strict=True) if y == 1]
            ax.plot(max(statistics.fmean(neg), 0.5 / negatives), statistics.fmean(pos), "o", color=line.get_color(),
                    markersize=7, markeredgecolor="black")
    if floor == 1.0:
        plt.close(fig)
        return []
    grid = np.logspace(math.log10(floor), 0, 50)
    ax.plot(grid, grid, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.axvline(stats.MAX_FPR, color="grey", linewidth=0.5)
    ax.set_xscale("log")
    ax.set(xlabel="false positive rate (log; dot: operating point)", ylabel="true positive rate", title=title,
           xlim=(floor, 1), ylim=(0, 1.01))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left")
    return [_save(fig, path)]


def _level_plot(runs: list[dict[str, Any]], output: Path, path: Path, title: str) -> list[Path]:
    import matplotlib.pyplot as plt

    series = []
    for r in runs:
        rows = read_predictions(output, r)
        true, pred = _column(rows, "true_level"), _column(rows, "level")
        if true is not None and pred is not None:
            series.append((r["label"], true, pred))
    if not series:
        return []
    cols = min(3, len(series))
    nrows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 4 * nrows), squeeze=False)
    rng = np.random.default_rng(0)  # jitter only spreads the dots of equal true levels
    for ax, (label, true, pred) in zip(axes.flat, series, strict=False):
        ax.scatter(np.array(true) + rng.uniform(-0.15, 0.15, len(true)), pred, s=10, alpha=0.6)
        ax.plot([0, 5], [0, 5], color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="true level", ylabel="predicted level", title=label, xlim=(-0.5, 5.5), ylim=(-0.5, 5.5))
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle(title)
    return [_save(fig, path)]


def _cross_plots(task: str, board: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Heat-maps of rows that differ in their training and test generators, each cell with its 95% CI."""
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in board["rows"]:
        args = row["data_args"]
        if row["kind"] != "method" or ("generators" not in args and "test_generators" not in args):
            continue
        rest = {k: v for k, v in sorted(args.items()) if k not in ("generators", "test_generators")}
        groups[(row["label"], json.dumps(rest, default=str))].append(row)
    varying: dict[str, set[str]] = defaultdict(set)
    for label, rest in groups:
        others = [json.loads(r) for lb, r in groups if lb == label]
        varying[label] |= {k for k, v in json.loads(rest).items() if any(o.get(k) != v for o in others)}

    def key(row: dict[str, Any], name: str) -> str:
        value = row["data_args"].get(name)
        if value is None and name == "test_generators":
            value = row["data_args"].get("generators")  # no test generators: tested on the training ones
        return "+".join(value) if isinstance(value, list) else str(value if value is not None else "all")

    written = []
    for (label, rest), rows in sorted(groups.items()):
        train = sorted({key(r, "generators") for r in rows})
        test = sorted({key(r, "test_generators") for r in rows})
        if len(train) * len(test) < 2:
            continue
        metrics = [m for m in (board["primary"], "acc") if any(m in r["metrics"] for r in rows)]
        fig, axes = plt.subplots(1, len(metrics), figsize=(1.6 + 2.0 * len(test) * len(metrics), 1.2 + 1.1 * len(train)),
                                 squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            grid = np.full((len(train), len(test)), np.nan)
            text = [["" for _ in test] for _ in train]
            for i, g in enumerate(train):
                for j, t in enumerate(test):
                    cell = next((r for r in rows if key(r, "generators") == g and key(r, "test_generators") == t), None)
                    if cell is None or cell["metrics"].get(metric, (None,))[0] is None:
                        continue
                    mean, _, low, high = cell["metrics"][metric]
                    grid[i, j] = mean
                    text[i][j] = f"{mean:.2f}" + (f"\n[{low:.2f}, {high:.2f}]" if low is not None else "")
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
            for i in range(len(train)):
                for j in range(len(test)):
                    if text[i][j]:
                        ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7,
                                color="white" if grid[i, j] < 0.6 else "black")
            ax.set_xticks(range(len(test)), test, rotation=30, ha="right")
            ax.set_yticks(range(len(train)), train)
            ax.set(xlabel="test generators", ylabel="train generators", title=f"{metric} (95% CI)")
            fig.colorbar(image, ax=ax, fraction=0.046)
        extra = "".join(f" {k}={v}" for k, v in json.loads(rest).items() if k in varying[label])
        fig.suptitle(f"{label}: cross-generator{extra}", fontsize=9)
        written.append(_save(fig, plots_dir / f"cross_{_slug(task + '_' + label + extra)}.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # a figure laid out as it was made keeps its layout
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_sheets(results: list[dict[str, Any]], output: Path) -> list[Path]:
    """A contact sheet per job whose test predictions name a picture per image (``artifact``); paths relative to output.

    Each row is one image: the picture the method wrote, then its file name, true label, score and decision.
    Rows go by score, highest first; past ``SHEET_ROWS`` images, the highest and the lowest halves are shown.
    The pictures stay where the job wrote them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.tasks import get_task

    folder = output / "sheets"
    if folder.exists():
        shutil.rmtree(folder)
    written = []
    for r in results:
        if r.get("status") != "ok":
            continue
        rows = [p for p in read_predictions(output, r) if p.get("artifact") and Path(p["artifact"]).is_file()]
        scores = _column(rows, "score")
        if scores is None:
            continue
        spec = get_task(r["task"])
        names = {"1": spec.positive, "0": spec.negative} if spec.binary else {}
        colours = {spec.positive: "tab:red", spec.negative: "tab:blue"} if spec.binary else {}
        order = sorted(range(len(rows)), key=lambda i: -scores[i])
        half = SHEET_ROWS // 2
        shown = order if len(order) <= SHEET_ROWS else order[:half] + order[-half:]
        fig, axes = plt.subplots(len(shown), 2, figsize=(6, 0.7 + 0.9 * len(shown)), squeeze=False,
                                 gridspec_kw={"width_ratios": [1, 1]}, layout="constrained")
        for (picture, caption), i in zip(axes, shown, strict=True):
            row = rows[i]
            picture.imshow(plt.imread(row["artifact"]))
            label = names.get(row.get("true_label", ""), row.get("source", ""))
            decision = names.get(row.get("decision", ""), "-")
            caption.text(0, 0.5, f"#{order.index(i) + 1} {Path(row.get('id') or row['artifact']).name}\n"
                         f"{label or '(no label)'}\nscore {scores[i]:.4g}, decided {decision}", va="center", fontsize=8,
                         color=colours.get(label, "black"))
            for ax in (picture, caption):
                ax.axis("off")
        field = spec.prediction.get("artifact")
        capped = "" if len(shown) == len(order) else (
            f"\n{len(shown)} of {len(order)} images: the {half} highest and the {half} lowest scores")
        fig.suptitle(f"{r['label']} ({r['setting']}, seed {r['seed']}): test split by score, highest first{capped}\n"
                     f"{field.doc if field else 'the picture'} | rank, image, true label, score", fontsize=9)
        written.append(_save(fig, folder / f"sheet_{_slug(r['id'])}.png"))
    return [p.relative_to(output) for p in written]


# ------------------------------------------------------------------------------------------ environment
def environment() -> dict[str, Any]:
    """Versions and hardware of this run."""
    import torch

    versions = {}
    for name in _dependencies():
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    return info


def _dependencies() -> list[str]:
    """The zoo and every package it requires (from its installed metadata), or a fixed list without it."""
    try:
        requires = metadata.requires("provenance-zoo") or []
    except metadata.PackageNotFoundError:
        return list(PACKAGES)
    names = [re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0] for req in requires if "extra ==" not in req]
    return ["provenance-zoo", *names]


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _hardware_line(env: dict[str, Any]) -> str:
    gpus = ", ".join(g["name"] for g in env["gpus"]) or "no GPU"
    cores = env.get("cpu_affinity") or env.get("cpu_count")
    return f"{env['cpu']} ({cores} cores, {env['torch_threads']} torch threads), {gpus}"


# ------------------------------------------------------------------------------------------ helpers
def _mean_or_none(values: list[Any]) -> float | None:
    values = [float(v) for v in values if _finite(v)]
    return statistics.fmean(values) if values else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _or_nan(value: float | None) -> float:
    return -math.inf if value is None else value


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", text).strip("_")[:120]
