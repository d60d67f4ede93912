"""Start-up cost of the ``zoo`` command, as ratios against ``python -c "import torch"`` in the same run.

Three commands, each run in a fresh process and timed from its start to its exit, interleaved with the
baseline so that a busy machine slows them alike:
    ``zoo list``                              target: within 1.5x of importing torch
    ``zoo predict --help``                    target: within 1.5x
    ``zoo predict`` of one image, tiny CNNDetector checkpoint on the CPU    target: within 3x
The checkpoint is fitted first, untimed: one epoch of ``CNNDetector --variant tiny`` on two batches of
``MiniFakeDetection`` into a temporary folder.

The figures are medians of ``--repeats`` runs, of wall time and of the child's CPU time (user + system);
the ratios are of wall time. Run it on an idle machine: on a shared one, say so beside the figures.

Example:
    python benchmarks/perf/startup.py --repeats 5 --out reports/perf/startup.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from zoo.bench.perf import write_result

ZOO = [sys.executable, "-m", "zoo.cli"]
TARGETS = {"zoo_list_ratio_max": 1.5, "zoo_predict_help_ratio_max": 1.5, "zoo_predict_one_image_ratio_max": 3.0}


def run_timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``command`` in a fresh process; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fit_tiny_checkpoint(work: Path, env: dict[str, str]) -> Path:
    """A tiny CNNDetector fitted for one epoch of two batches; the folder of its export."""
    subprocess.run([*ZOO, "fit", "--model", "CNNDetector", "--variant", "tiny", "--data", "MiniFakeDetection",
                    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                    "--trainer.limit_val_batches", "2", "--trainer.accelerator", "cpu",
                    "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(work / "run"),
                    "--seed_everything", "0"], env=env, check=True, capture_output=True, text=True)
    (export,) = (work / "run").glob("lightning_logs/version_*/zoo")
    return export


def measure(repeats: int, work: Path) -> dict[str, Any]:
    """Median wall and CPU seconds of the baseline and the three commands, and the ratios."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    export = fit_tiny_checkpoint(work, env)
    image = work / "one.png"
    Image.new("RGB", (64, 64), (120, 90, 60)).save(image)
    commands = {
        "import_torch": [sys.executable, "-c", "import torch"],
        "zoo_list": [*ZOO, "list"],
        "zoo_predict_help": [*ZOO, "predict", "--help"],
        "zoo_predict_one_image": [*ZOO, "predict", "--ckpt_path", str(export), "--inputs", str(image),
                                  "--output", str(work / "out.csv"), "--device", "cpu"],
    }
    for command in commands.values():  # warm the file cache: every figure is a warm start
        run_timed(command, env)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            times[name].append(run_timed(command, env))
    figures: dict[str, Any] = {"repeats": repeats, "cpu_count": os.cpu_count(),
                               "load_average_1min": round(os.getloadavg()[0], 2)}
    for name, runs in times.items():
        figures[f"{name}_s"] = round(statistics.median(w for w, _ in runs), 3)
        figures[f"{name}_cpu_s"] = round(statistics.median(c for _, c in runs), 3)
    for name in ("zoo_list", "zoo_predict_help", "zoo_predict_one_image"):
        figures[f"{name}_ratio"] = round(figures[f"{name}_s"] / figures["import_torch_s"], 3)
        figures[f"{name}_cpu_ratio"] = round(figures[f"{name}_cpu_s"] / figures["import_torch_cpu_s"], 3)
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each command (median)")
    parser.add_argument("--out", type=str, default=None, help="JSON result file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zoo-startup-") as work:
        figures = measure(args.repeats, Path(work))
    return write_result(args.out, "startup", figures, targets=TARGETS)


if __name__ == "__main__":
    main()
