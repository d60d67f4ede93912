"""The report's README: how to read the tables, each task's tables, rows at chance, glossary, plots and sheets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.bench.report.environment import hardware_line
from zoo.bench.report.sheets import SHEET_ROWS
from zoo.bench.report.tables import AT_CHANCE, CHANCE, COST_HEADERS, cell, cost_cells, settings
from zoo.tasks.binary import MIN_NEGATIVES_FOR_TPR

NO_NOTE = "no note in the suite"
# a metric no task of the report describes
METHOD_METRIC = ("a method-specific metric (see the method's README)", "see README")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def clean(text: str) -> str:
        return str(text).replace("|", "\\|")

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(clean(c) for c in cells) + " |" for cells in rows], ""]


def readme(suite_name: str, boards: dict[str, dict[str, Any]], results: list[dict[str, Any]],
            plots: list[Path], sheets: list[Path], env: dict[str, Any], note: str,
            limitations: list[str], notes: dict[str, str]) -> str:
    """The README's text (``notes``: the suite's, by method name or row label, on why a row is at chance)."""
    ok = sum(r.get("status") == "ok" for r in results)
    lines = [
        f"# Benchmark report: {suite_name}", "",
        f"{ok} of {len(results)} jobs succeeded. Written {env['date']} on {hardware_line(env)}.", "",
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
        *[f"- {text}" for board in boards.values() for text in board["task"].report_notes],
        "",
    ]
    for task, board in boards.items():
        spec = board["task"]
        several = len(settings(board)) > 1
        lines += [f"## {task}", "", f"Primary metric: `{board['primary']}`."
                  + ("" if several else f" Setting: {settings(board)[0]}."), ""]
        headers = ["method", *(["setting"] if several else []), "seeds", "n", *board["metrics"]]
        body = []
        for row in board["rows"]:
            cells = [f"**{cell(row, m, spec, True)}**" if (row["setting"], row["label"], m) in board["best"]
                     else cell(row, m, spec, True) for m in board["metrics"]]
            if row.get("at_chance"):
                cells[0] += f" {AT_CHANCE}"  # the primary metric comes first
            body.append([row["label"], *([row["setting"]] if several else []), str(row["seeds"] or "-"),
                         str(row["n_test"] or "-"), *cells])
        lines += _md_table(headers, body)
        breakdown = [row for row in board["rows"] if row.get("breakdown")]
        if breakdown:
            names = sorted({m for row in breakdown for v in row["breakdown"].values() for m in v})
            body = [[row["label"], *([row["setting"]] if several else []), source,
                     *[cell({"metrics": {m: values.get(m, (None,) * 4)}}, m, spec, True) for m in names]]
                    for row in breakdown for source, values in row["breakdown"].items()]
            lines += [f"Against each negative source ({task}):", ""]
            lines += _md_table(["method", *(["setting"] if several else []), "negatives", *names], body)
        body = [[row["label"], *([row["setting"]] if several else []), *cost_cells(row)]
                for row in board["rows"] if row["kind"] != CHANCE]
        lines += ["Cost per seed (mean over seeds):", ""]
        lines += _md_table(["method", *(["setting"] if several else []), *COST_HEADERS], body)
    lines += _at_chance(boards, notes)
    used = [m for board in boards.values() for m in board["metrics"]]
    used += [m for board in boards.values() for row in board["rows"] for v in (row.get("breakdown") or {}).values()
             for m in v]
    glossary = [m for i, m in enumerate(used) if m not in used[:i]]
    if glossary:
        # a metric of several tasks is described as the first task of the report describes it
        words: dict[str, tuple[str, str]] = {}
        for board in boards.values():
            words = {**board["task"].glossary, **words}
        lines += ["## Glossary", "", "| metric | meaning | better |", "|---|---|---|"]
        for m in glossary:
            meaning, better = words.get(m, METHOD_METRIC)
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


