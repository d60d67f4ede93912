"""The report folder of a benchmark: tables, leaderboards, plots and the environment.

Everything here is derived from the jobs' ``result.json`` and ``predictions.csv`` (test split only) and
from the jobs' data arguments; nothing depends on which method a row is.
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
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from zoo.bench.runner import PREDICTIONS_NAME

# metrics where a lower value is better; the decision threshold is a setting, not a score
LOWER_IS_BETTER = {"rd"}
NOT_RANKED = {"threshold"}
BASE_COLUMNS = ["id", "task", "method", "label", "variant", "dataset", "setting", "seed", "status"]
COST_COLUMNS = ["params", "epochs", "steps", "train_size", "fit_s", "test_s", "wall_s", "cpu_s", "peak_rss_mb",
                "cuda_peak_mb", "device"]
PACKAGES = ("provenance-zoo", "torch", "lightning", "torchmetrics", "torchvision", "timm", "open_clip_torch",
            "diffusers", "transformers", "peft", "faiss-cpu", "huggingface_hub", "numpy", "scikit-image")


def write_report(results: list[dict[str, Any]], output: Path, suite_name: str, console: Any = None,
                 note: str = "") -> dict[str, Path]:
    """Write ``results.csv``, ``results.json``, ``README.md``, ``environment.json`` and the plots."""
    output.mkdir(parents=True, exist_ok=True)
    metric_names = _metric_names(results)
    rows = [_flat(r, metric_names) for r in results]
    columns = [*BASE_COLUMNS, *metric_names, *COST_COLUMNS, "error"]
    with (output / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    env = environment()
    (output / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    plots = write_plots(results, output)
    artifacts = copy_artifacts(results, output)
    boards = leaderboards(results)
    (output / "README.md").write_text(_readme(suite_name, boards, results, plots, artifacts, env, note))
    if console is not None:
        print_tables(boards, console)
    return {"csv": output / "results.csv", "json": output / "results.json", "readme": output / "README.md"}


# ------------------------------------------------------------------------------------------ tables
def _metric_names(results: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [k for k in r.get("metrics", {}) if k not in names]
    return names


def _flat(result: dict[str, Any], metric_names: list[str]) -> dict[str, Any]:
    row = {k: result.get(k) for k in (*BASE_COLUMNS, *COST_COLUMNS, "error")}
    row.update({m: result.get("metrics", {}).get(m) for m in metric_names})
    return row


def leaderboards(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: one row per (method label, setting) with mean and std over seeds, and the best cells."""
    from zoo.tasks import get_task

    boards: dict[str, dict[str, Any]] = {}
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("status") == "ok":
            by_task[r["task"]].append(r)
    for task, task_results in by_task.items():
        metrics = _metric_names(task_results)
        primary = get_task(task).primary_metric
        metrics.sort(key=lambda m: (m != primary, m in NOT_RANKED))
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in task_results:
            groups[(r["setting"], r["label"])].append(r)
        rows = []
        for (setting, label), runs in groups.items():
            first = runs[0]
            row = {"label": label, "method": first["method"], "variant": first["variant"], "setting": setting,
                   "seeds": len(runs), "params": first.get("params"), "epochs": first.get("epochs"),
                   "steps": first.get("steps"), "train_size": first.get("train_size"),
                   "fit_s": _mean([r.get("fit_s") for r in runs]), "test_s": _mean([r.get("test_s") for r in runs]),
                   "peak_rss_mb": max((r.get("peak_rss_mb") or 0) for r in runs)}
            for m in metrics:
                values = [r["metrics"][m] for r in runs if _finite(r["metrics"].get(m))]
                row[m] = (_mean(values), statistics.stdev(values) if len(values) > 1 else None)
            rows.append(row)
        sign = -1.0 if primary in LOWER_IS_BETTER else 1.0
        rows.sort(key=lambda row: (row["setting"], -sign * _or_nan(row[primary][0]), row["label"]))
        best: set[tuple[str, str, str]] = set()  # (setting, label, metric)
        for setting in {row["setting"] for row in rows}:
            same = [row for row in rows if row["setting"] == setting]
            for m in metrics:
                if m in NOT_RANKED:
                    continue
                values = [row[m][0] for row in same if row[m][0] is not None]
                if not values:
                    continue
                target = min(values) if m in LOWER_IS_BETTER else max(values)
                best |= {(setting, row["label"], m) for row in same if row[m][0] == target}
        boards[task] = {"metrics": metrics, "rows": rows, "best": best, "primary": primary}
    return boards


def _cell(value: tuple[float | None, float | None]) -> str:
    mean, std = value
    if mean is None:
        return "-"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _cost_cells(row: dict[str, Any]) -> list[str]:
    return [f"{row['params']:,}" if row["params"] is not None else "-", str(row["epochs"]), str(row["steps"]),
            str(row["train_size"]), f"{row['fit_s']:.1f}", f"{row['test_s']:.1f}", f"{row['peak_rss_mb']:.0f}"]


COST_HEADERS = ["params", "epochs", "steps", "train size", "fit s", "test s", "peak RSS MB"]


def print_tables(boards: dict[str, dict[str, Any]], console: Any) -> None:
    """One rich table per task, best cells in bold."""
    from rich.table import Table

    for task, board in boards.items():
        table = Table(title=f"{task} (test split)")
        for column in ("method", "setting", "seeds", *board["metrics"], *COST_HEADERS):
            table.add_column(column, justify="left" if column in ("method", "setting") else "right",
                             overflow="fold")
        for row in board["rows"]:
            cells = [f"[bold]{_cell(row[m])}[/]" if (row["setting"], row["label"], m) in board["best"]
                     else _cell(row[m]) for m in board["metrics"]]
            table.add_row(row["label"], row["setting"], str(row["seeds"]), *cells, *_cost_cells(row))
        console.print(table)


def _readme(suite_name: str, boards: dict[str, dict[str, Any]], results: list[dict[str, Any]],
            plots: list[Path], artifacts: list[Path], env: dict[str, Any], note: str) -> str:
    ok = sum(r.get("status") == "ok" for r in results)
    lines = [
        f"# Benchmark report: {suite_name}", "",
        f"{ok} of {len(results)} jobs succeeded. Written {env['date']} on {_hardware_line(env)}.", "",
        "Metrics are computed on the test split only; binary decision thresholds were calibrated on the "
        "validation split. Cells are mean ± std over seeds; the best value of each setting is in bold. "
        "The params, epochs, steps and train size columns give each row's model size and training budget: "
        "rows of the mini suite are tiny models trained for a few steps on a few images, not paper-scale "
        "results.", "",
    ]
    if note:
        lines += [note, ""]
    for task, board in boards.items():
        headers = ["method", "setting", "seeds", *board["metrics"], *COST_HEADERS]
        lines += [f"## {task}", "", f"Primary metric: `{board['primary']}`.", "",
                  "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in board["rows"]:
            cells = [f"**{_cell(row[m])}**" if (row["setting"], row["label"], m) in board["best"] else _cell(row[m])
                     for m in board["metrics"]]
            lines.append("| " + " | ".join([row["label"], row["setting"], str(row["seeds"]), *cells,
                                            *_cost_cells(row)]) + " |")
        lines.append("")
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        lines += ["## Failed jobs", "", "| job | error |", "|---|---|"]
        for r in failed:
            error = str(r.get("error") or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {r['id']} | {error} (traceback: `jobs/{r['id']}/error.txt`) |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.as_posix()})" for p in plots] + [""]
    if artifacts:
        lines += ["## Method artifacts", ""] + [f"![{p.stem}]({p.as_posix()})" for p in artifacts] + [""]
    lines += ["## Environment", "", "See `environment.json`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ plots
def write_plots(results: list[dict[str, Any]], output: Path) -> list[Path]:
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
        spec = get_task(task)
        name = _slug(f"{task}_{setting}")
        if spec.binary:
            written += _roc_plot(runs, output, plots_dir / f"roc_{name}.png", f"{task}: ROC ({setting})")
        if task == "copy_detection":
            written += _level_plot(runs, output, plots_dir / f"levels_{name}.png", f"{task}: level ({setting})")
    written += _cross_plots(ok, plots_dir)
    return [p.relative_to(output) for p in written]


def _first_seed(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        chosen.setdefault(r["label"], r)
    return list(chosen.values())


def _predictions(output: Path, result: dict[str, Any]) -> list[dict[str, str]]:
    path = output / "jobs" / result["id"] / PREDICTIONS_NAME
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _roc_plot(runs: list[dict[str, Any]], output: Path, path: Path, title: str) -> list[Path]:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    drawn = 0
    for r in runs:
        rows = _predictions(output, r)
        if not rows or "score" not in rows[0] or "true_label" not in rows[0]:
            continue
        labels = [int(float(row["true_label"])) for row in rows]
        scores = [float(row["score"]) for row in rows]
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{r['label']} (AUROC {roc_auc_score(labels, scores):.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return [_save(fig, path)]


def _level_plot(runs: list[dict[str, Any]], output: Path, path: Path, title: str) -> list[Path]:
    import matplotlib.pyplot as plt
    import numpy as np

    series = []
    for r in runs:
        rows = _predictions(output, r)
        if rows and "level" in rows[0] and "true_level" in rows[0]:
            series.append((r["label"], [float(x["true_level"]) for x in rows], [float(x["level"]) for x in rows]))
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


def _cross_plots(ok: list[dict[str, Any]], plots_dir: Path) -> list[Path]:
    """Heat-maps of jobs that differ in their training and test generators (rows: train, cols: test)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from zoo.tasks import get_task

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        args = r.get("data_args") or {}
        if "generators" not in args and "test_generators" not in args:
            continue
        rest = {k: v for k, v in sorted(args.items()) if k not in ("generators", "test_generators")}
        groups[(r["task"], r["label"], json.dumps(rest, default=str))].append(r)
    # name a heat-map by the other data arguments only where they differ between heat-maps of one method
    varying: dict[tuple[str, str], set[str]] = defaultdict(set)
    for task, label, rest in groups:
        others = [json.loads(r) for t, lb, r in groups if (t, lb) == (task, label)]
        varying[(task, label)] |= {k for k, v in json.loads(rest).items() if any(o.get(k) != v for o in others)}
    written = []
    for (task, label, rest), runs in sorted(groups.items()):
        def key(r: dict[str, Any], name: str) -> str:
            args = r["data_args"]
            value = args.get(name)
            if value is None and name == "test_generators":
                value = args.get("generators")  # no test generators: tested on the training ones
            return "+".join(value) if isinstance(value, list) else str(value if value is not None else "all")

        train = sorted({key(r, "generators") for r in runs})
        test = sorted({key(r, "test_generators") for r in runs})
        if len(train) * len(test) < 2:
            continue
        primary = get_task(task).primary_metric
        metrics = [m for m in (primary, "acc") if any(m in r["metrics"] for r in runs)]
        fig, axes = plt.subplots(1, len(metrics), figsize=(1.6 + 1.6 * len(test) * len(metrics), 1.2 + 1.0 * len(train)),
                                 squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            grid = np.full((len(train), len(test)), np.nan)
            for i, g in enumerate(train):
                for j, t in enumerate(test):
                    values = [r["metrics"][metric] for r in runs if key(r, "generators") == g
                              and key(r, "test_generators") == t and metric in r["metrics"]]
                    if values:
                        grid[i, j] = float(np.mean(values))
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
            for i in range(len(train)):
                for j in range(len(test)):
                    if not np.isnan(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                                color="white" if grid[i, j] < 0.6 else "black")
            ax.set_xticks(range(len(test)), test, rotation=30, ha="right")
            ax.set_yticks(range(len(train)), train)
            ax.set(xlabel="test generators", ylabel="train generators", title=metric)
            fig.colorbar(image, ax=ax, fraction=0.046)
        extra = "".join(f" {k}={v}" for k, v in json.loads(rest).items() if k in varying[(task, label)])
        fig.suptitle(f"{label}: cross-generator{extra}", fontsize=9)
        written.append(_save(fig, plots_dir / f"cross_{_slug(task + '_' + label + extra)}.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def copy_artifacts(results: list[dict[str, Any]], output: Path) -> list[Path]:
    """Copy the PNG files jobs wrote under an ``artifacts/`` folder into ``<output>/artifacts/<job id>/``."""
    target_root = output / "artifacts"
    if target_root.exists():
        shutil.rmtree(target_root)
    copied = []
    for r in results:
        job_dir = output / "jobs" / r["id"]
        for png in sorted(job_dir.glob("**/artifacts/**/*.png")) if job_dir.is_dir() else []:
            target = target_root / r["id"] / png.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, target)
            copied.append(target.relative_to(output))
    return copied


# ------------------------------------------------------------------------------------------ environment
def environment() -> dict[str, Any]:
    """Versions and hardware of this run."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
def _mean(values: list[Any]) -> float | None:
    values = [float(v) for v in values if _finite(v)]
    return statistics.fmean(values) if values else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _or_nan(value: float | None) -> float:
    return -math.inf if value is None else value


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", text).strip("_")[:120]
