"""The report's contact sheets: one per job whose test predictions name a picture per image."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from zoo.bench.report.jobs import read_predictions, slug
from zoo.bench.report.plots import save_figure
from zoo.tasks import get_task
from zoo.tasks.numpy_metrics import column

SHEET_ROWS = 24  # images on one contact sheet; past it, the half with the highest and the half with the lowest scores


def write_sheets(results: list[dict[str, Any]], output: Path) -> list[Path]:
    """A contact sheet per job whose test predictions name a picture per image (``artifact``); paths relative to output.

    Each row is one image: the picture the method wrote, then its file name, true label, score and decision.
    Rows go by score, highest first; past ``SHEET_ROWS`` images, the highest and the lowest halves are shown.
    The pictures stay where the job wrote them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = output / "sheets"
    if folder.exists():
        shutil.rmtree(folder)
    written = []
    for r in results:
        if r.get("status") != "ok":
            continue
        rows = [p for p in read_predictions(output, r) if p.get("artifact") and Path(p["artifact"]).is_file()]
        scores = column(rows, "score")
        if scores is None:
            continue
        spec = get_task(r["task"])
        names = spec.label_names
        colours = dict(zip(names.values(), ("tab:red", "tab:blue"), strict=True))
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
        written.append(save_figure(fig, folder / f"sheet_{slug(r['id'])}.png"))
    return [p.relative_to(output) for p in written]


