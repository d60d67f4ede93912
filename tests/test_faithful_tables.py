"""Every plugin README's "Faithful to the released code" table cites both sides in every row.

A row is checkable only if it says where to look: the released file (the repository is named above the table,
the cell gives its path, e.g. ``train.py`` or ``configs/x.yaml``, with the function or line) and the zoo's file
(a path under ``plugins/``, ``zoo/`` or ``configs/``, with the function). A row for an element the release lacks
says so ("not released", "none") instead of a released file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = sorted(ROOT.glob("plugins/*/README.md"))
SECTION = "## Faithful to the released code"
# a file path with an extension of source, config or documentation (not `F.cosine_similarity` or `vit.pth.tar`)
RELEASED_FILE = re.compile(r"[\w./-]*\w\.(?:py|yaml|yml|md|json|txt|sh|cfg|toml|ipynb|c|cc|cpp|cu|h)\b")
LACKS = re.compile(r"\b(?:not released|none)\b", re.IGNORECASE)
ZOO_FILE = re.compile(r"(?<![\w/.-])(?:plugins|zoo|configs)/[\w./-]*\w\.\w+")
REPOSITORY = re.compile(r"\b[\w.-]+/[\w.-]+\b")


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row; ``\\|`` inside a cell is a literal bar."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def faithful_section(readme: Path) -> str:
    """The text of the README's faithful section, up to the next heading of the same or a higher level."""
    text = readme.read_text(encoding="utf-8")
    start = text.find(SECTION)
    if start < 0:
        return ""
    rest = text[start + len(SECTION):]
    end = re.search(r"^#{1,2} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def faithful_rows(readme: Path) -> list[list[str]]:
    """The body rows (element, released code, zoo, verdict) of every table in the faithful section."""
    rows = []
    for line in faithful_section(readme).splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = _cells(line)
        if cells[0].lower() == "element" or set("".join(cells)) <= set("-: "):
            continue  # the header and its separator
        rows.append(cells)
    return rows


def test_the_parser_reads_escaped_bars_and_skips_the_header(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{SECTION}\nReleased code: a/b.\n\n| element | released | zoo | verdict |\n|---|---|---|---|\n"
                      "| prompt | `x {a\\|b}` in `Extractor.py` | `plugins/p/m.py` `f` | same |\n## next\n| no | table |\n")
    assert faithful_rows(readme) == [["prompt", "`x {a\\|b}` in `Extractor.py`", "`plugins/p/m.py` `f`", "same"]]


def test_every_plugin_readme_is_found() -> None:
    names = {p.parent.name for p in READMES}
    assert {"zoo_cgi_dm", "zoo_inversion_attribution", "zoo_pdf_embedding", "zoo_clip_mlp", "zoo_cnn_detector",
            "zoo_copy_baselines"} <= names


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_faithful_table_cites_the_released_file_and_the_zoo_file_in_every_row(readme: Path) -> None:
    section = faithful_section(readme)
    assert section, f"{readme.relative_to(ROOT)}: no '{SECTION}' section"
    assert REPOSITORY.search(section.split("|", 1)[0]), (
        f"{readme.relative_to(ROOT)}: the text above the table names no released repository (owner/name)")
    rows = faithful_rows(readme)
    assert rows, f"{readme.relative_to(ROOT)}: the faithful section holds no table"
    bad = []
    for cells in rows:
        if len(cells) < 4:
            bad.append(f"{cells[0]!r}: {len(cells)} cells, not 4 (element, released code, zoo, verdict)")
            continue
        element, released, zoo = cells[:3]
        if not (RELEASED_FILE.search(released) or LACKS.search(released)):
            bad.append(f"{element!r}: the released-code cell names no file (path.ext) and does not say 'not released'")
        if not ZOO_FILE.search(zoo):
            bad.append(f"{element!r}: the zoo cell names no file under plugins/, zoo/ or configs/")
    assert not bad, f"{readme.relative_to(ROOT)}:\n" + "\n".join(bad)
