"""The report's plots: the kinds a task asks for per setting (ROC curves, predicted vs true level), and
cross-generator heat-maps of rows that differ in their training and test generators."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from zoo.bench.report.jobs import read_predictions, slug
from zoo.errors import ZooError
from zoo.tasks import get_task
from zoo.tasks.binary import MAX_FPR
from zoo.tasks.numpy_metrics import column


def write_plots(results: list[dict[str, Any]], output: Path, boards: dict[str, dict[str, Any]]) -> list[Path]:
    """The plots each task names (``Task.plots``) per setting, and cross-generator heat-maps; paths relative to output."""
    import matplotlib

    matplotlib.use("Agg")

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
        name = slug(f"{task}_{setting}")
        for kind in get_task(task).plots:
            if kind not in PLOTS:
                raise ZooError(f"task {task} asks for a plot {kind!r}; the report draws {', '.join(PLOTS)}")
            draw, prefix, title = PLOTS[kind]
            written += draw(runs, output, plots_dir / f"{prefix}_{name}.png", f"{task}: {title.format(setting=setting)}")
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
        labels, scores = column(rows, "true_label"), column(rows, "score")
        if labels is None or scores is None or len(set(labels)) < 2:
            continue
        negatives = sum(v == 0 for v in labels)
        floor = min(floor, 0.5 / negatives)  # an FPR of 0 is drawn at half of one negative
        fpr, tpr, _ = roc_curve(labels, scores)
        (line,) = ax.plot(np.maximum(fpr, 0.5 / negatives), tpr,
                          label=f"{r['label']} (AUROC {roc_auc_score(labels, scores):.3f})")
        decisions = column(rows, "decision")
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
    ax.axvline(MAX_FPR, color="grey", linewidth=0.5)
    ax.set_xscale("log")
    ax.set(xlabel="false positive rate (log; dot: operating point)", ylabel="true positive rate", title=title,
           xlim=(floor, 1), ylim=(0, 1.01))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left")
    return [save_figure(fig, path)]


def _level_plot(runs: list[dict[str, Any]], output: Path, path: Path, title: str) -> list[Path]:
    import matplotlib.pyplot as plt

    series = []
    for r in runs:
        rows = read_predictions(output, r)
        true, pred = column(rows, "true_level"), column(rows, "level")
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
    return [save_figure(fig, path)]



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
        written.append(save_figure(fig, plots_dir / f"cross_{slug(task + '_' + label + extra)}.png"))
    return written


def save_figure(fig: Any, path: Path) -> Path:
    """Save ``fig`` as ``path`` (its folder made) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # a figure laid out as it was made keeps its layout
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path




# a plot kind a task may name: (draw, file-name prefix, title after "<task>: ")
PLOTS = {
    "roc": (_roc_plot, "roc", "ROC ({setting}, first seed)"),
    "levels": (_level_plot, "levels", "level ({setting})"),
}
