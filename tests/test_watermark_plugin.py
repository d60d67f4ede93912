"""A third party adds a task: ``tests/plugins/zoo_watermark``, installed with pip, is fitted, tested, used and
benchmarked through the zoo's commands, and the zoo names it nowhere."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, subprocess_env
from PIL import Image

PLUGIN = ROOT / "tests" / "plugins" / "zoo_watermark"


def _zoo(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)
    assert done.returncode == 0, f"zoo {args[0]}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def watermark_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed with pip into a folder of its own (a copy is built, so the source tree stays clean)."""
    work = tmp_path_factory.mktemp("watermark-plugin")
    source = shutil.copytree(PLUGIN, work / "source", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                   "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(work / "target"), str(source)], check=True)
    return work / "target"


def test_a_plugins_new_task_fits_tests_predicts_and_is_benchmarked(watermark_plugin, tmp_path):
    env = subprocess_env(watermark_plugin)
    listed = _zoo("list", env=env, cwd=tmp_path)
    assert "WatermarkCorrelator" in listed.stdout and "MiniWatermark" in listed.stdout
    _zoo("fit", "--model", "WatermarkCorrelator", "--data", "MiniWatermark", "--trainer.max_epochs", "3",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
         env=env, cwd=tmp_path)
    export = next((tmp_path / "runs").rglob("zoo/config.json")).parent
    test = _zoo("test", "--data", "MiniWatermark", "--ckpt_path", str(export), "--trainer.enable_progress_bar",
                "false", "--trainer.default_root_dir", str(tmp_path / "runs"), env=env, cwd=tmp_path)
    assert "test/auroc" in test.stdout and "test/tpr_at_1fpr" in test.stdout  # the binary task's metrics

    # zoo predict on photographs: two of them watermarked here, with the plugin's own pattern
    sys.path.insert(0, str(watermark_plugin))
    try:
        from zoo_watermark.data import watermark
    finally:
        sys.path.remove(str(watermark_plugin))
    import skimage.data

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((64, 64), Image.BICUBIC)
        (watermark(image) if i % 2 else image).save(photos / f"{'marked' if i % 2 else 'plain'}_{name}.png")
    _zoo("predict", "--ckpt_path", str(export), "--inputs", str(photos), "--output", str(tmp_path / "p.csv"),
         env=env, cwd=tmp_path)
    with (tmp_path / "p.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:  # the task's verdict words, from a threshold calibrated on validation
        assert row["verdict"] == ("watermarked" if Path(row["path"]).name.startswith("marked") else "clean"), row
        assert "uncalibrated" not in row and row["decision"] == ("1" if row["verdict"] == "watermarked" else "0")
    assert list(rows[0])[1:5] == ["score", "decision", "verdict", "threshold"]  # the task's column order

    suite = tmp_path / "watermark.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "watermark", "seeds": [0], "variant": "tiny",
        "tasks": {"watermark_detection": {"data": "MiniWatermark", "methods": ["WatermarkCorrelator"]}}}))
    _zoo("benchmark", "--config", str(suite), "--output", str(tmp_path / "report"), env=env, cwd=tmp_path)
    readme = (tmp_path / "report" / "README.md").read_text()
    section = readme.split("## watermark_detection\n", 1)[1].split("\n## ", 1)[0]
    assert "Primary metric: `auroc`." in section
    header = next(line for line in section.splitlines() if line.startswith("| method"))
    assert header.split(" | ")[3:7] == ["auroc", "acc", "ap", "tpr_at_1fpr"]
    row = next(line for line in section.splitlines() if line.startswith("| WatermarkCorrelator-tiny"))
    assert "**1.000" in row.split(" | ")[3]  # the watermark separates: AUROC 1, in bold above the chance row
    assert any(line.startswith("| chance") for line in section.splitlines())
    assert "| `tpr_at_1fpr` | true-positive rate" in readme  # the glossary holds the task's words
    assert (tmp_path / "report" / "plots" / "roc_watermark_detection_MiniWatermark.png").is_file()
    with (tmp_path / "report" / "summary.csv").open() as f:
        summary = {(r["task"], r["method"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(summary[("watermark_detection", "WatermarkCorrelator-tiny", "auroc")]["mean"]) == 1.0

    # nothing under zoo/ names the task, its method or its data
    named = [path for path in (ROOT / "zoo").rglob("*") if path.is_file() and b"watermark" in path.read_bytes().lower()]
    assert named == []
