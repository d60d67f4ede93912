"""What ``zoo match`` writes: ``report.json``, ``matches.csv``, the figures and a table on the console."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.gallery.catalogue import SourceImages
from zoo.gallery.result import GeneratorResult
from zoo.gallery.shards import write_json
from zoo.tasks.copy_detection import NUM_LEVELS


def contact_sheet(result: GeneratorResult, sources: Mapping[str, SourceImages], top: int, path: Path) -> None:
    """PNG grid of the ``top`` best matches: generated image, gallery image, level and similarity.

    ``sources`` holds the ``query`` and ``gallery`` images; where they have moved away since they were
    embedded, the sheet shows the ids only.
    """
    from PIL import ImageDraw

    order = np.lexsort((-result.similarity, -result.level))[:top]
    thumb, text_h, cols = 96, 28, 4
    rows = max(1, math.ceil(len(order) / cols))
    sheet = Image.new("RGB", (cols * (2 * thumb + 8), rows * (thumb + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for cell, q in enumerate(order):
        x, y = (cell % cols) * (2 * thumb + 8), (cell // cols) * (thumb + text_h)
        for offset, (key, id_) in enumerate((("query", result.ids[q]), ("gallery", result.match_ids[q]))):
            image = sources[key].load(id_)
            if image is not None:  # else the id below still says which it was
                sheet.paste(image.resize((thumb, thumb)), (x + offset * thumb, y))
        exact = "  exact copy" if result.exact_copy[q] else ""
        draw.text((x + 2, y + thumb + 1), f"level {result.level[q]:.2f}  cos {result.similarity[q]:.2f}{exact}",
                  fill="black")
        draw.text((x + 2, y + thumb + 13), f"{result.ids[q][:14]} ~ {result.match_ids[q][:14]}", fill="gray")
    sheet.save(path)


def write_report(results: list[GeneratorResult], output: Path, **settings: Any) -> dict[str, Any]:
    """Write ``report.json``, ``matches.csv`` and the two figures, print the table; the report."""
    import csv

    report = {
        "settings": {**settings, "interval": "Wilson score"},
        "generators": {
            r.name: {"count": len(r.ids), "replication_ratio": r.ratio, "ci": list(r.ci),
                     "level_histogram": r.histogram, "exact_copies": int(r.exact_copy.sum()),
                     "descriptor_identical": int(r.descriptor_identical.sum()), "pixels_unchecked": r.unchecked,
                     "contact_sheet": f"contact_{r.name}.png"}
            for r in results
        },
    }
    write_json(output / "report.json", report)
    with open(output / "matches.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["generator", "id", "match_id", "similarity", "level", "exact_copy", "descriptor_identical",
                         *(f"p{i}" for i in range(NUM_LEVELS))])
        for r in results:
            for q in range(len(r.ids)):
                pdf = [f"{v:.4f}" for v in r.pdf[q]] if r.pdf is not None else [""] * NUM_LEVELS
                writer.writerow([r.name, r.ids[q], r.match_ids[q], f"{r.similarity[q]:.4f}", f"{r.level[q]:.4f}",
                                 int(r.exact_copy[q]), int(r.descriptor_identical[q]), *pdf])
    _figures(results, output, settings["threshold"], settings["confidence"])
    _table(results, settings["threshold"], settings["confidence"])
    print(f"written to {output}: report.json, matches.csv, replication_ratio.png, level_histogram.png, "
          + ", ".join(f"contact_{r.name}.png" for r in results))
    return report


def _figures(results: list[GeneratorResult], output: Path, threshold: float, confidence: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    ratios = np.array([r.ratio for r in results]) * 100
    errors = np.array([[r.ratio - r.ci[0], r.ci[1] - r.ratio] for r in results]).T * 100
    fig, ax = plt.subplots(figsize=(1.6 * len(results) + 2, 3.5))
    ax.bar(names, ratios, yerr=errors, capsize=4, color="tab:blue")
    for x, (value, upper) in enumerate(zip(ratios, ratios + errors[1], strict=True)):
        ax.text(x, upper + 1, f"{value:.2f}%", ha="center", va="bottom")  # above the error bar
    ax.set_ylim(0, max(10.0, float((ratios + errors[1]).max()) * 1.15 + 2))
    ax.set_ylabel(f"replication ratio (level ≥ {threshold:g}), %")
    ax.set_title(f"replication ratio, {confidence:.0%} Wilson interval")
    fig.tight_layout()
    fig.savefig(output / "replication_ratio.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        share = np.array(r.histogram) / max(1, len(r.ids))
        ax.bar(np.arange(NUM_LEVELS) + (i - (len(results) - 1) / 2) * width, share, width, label=r.name)
    ax.set_xlabel("predicted level of the best match (bin j: j ≤ level < j + 1)")
    ax.set_ylabel("share of generated images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "level_histogram.png", dpi=100)
    plt.close(fig)


def _table(results: list[GeneratorResult], threshold: float, confidence: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"replication ratio at level ≥ {threshold:g}")
    for column in ("generator", "images", "ratio", f"{confidence:.0%} CI", "levels 0..5", "exact copies"):
        table.add_column(column)
    for r in results:
        unchecked = f" ({r.unchecked} unchecked)" if r.unchecked else ""
        table.add_row(r.name, str(len(r.ids)), f"{r.ratio:.2%}", f"{r.ci[0]:.2%} .. {r.ci[1]:.2%}",
                      " ".join(map(str, r.histogram)), f"{int(r.exact_copy.sum())}{unchecked}")
    Console().print(table)
