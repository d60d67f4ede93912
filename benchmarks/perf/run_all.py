"""Run every perf script of ``benchmarks/perf/`` and write one table of ratios and MFU.

Each script runs as ``python <script> --out <dir>/<name>.json`` in its own process (on a machine without
CUDA the scripts run their tiny CPU versions). The results are gathered into ``<dir>/perf.json`` and
``<dir>/perf.md``; a script that fails is listed with its exit code and the end of its output.

Example:
    python benchmarks/perf/run_all.py --out reports/perf
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def target_met(result: dict[str, Any]) -> bool | None:
    """Whether the numeric targets a script sets are met (None when none can be judged).

    ``ratio`` and ``mfu`` are least values of the result's ``ratio`` and ``mfu``; ``<figure>_min`` and
    ``<figure>_max`` bound a figure of ``figures``. Other targets (text, settings) are shown, not judged.
    """
    figures = result.get("figures") or {}
    checks = []
    for name, wanted in (result.get("targets") or {}).items():
        if not isinstance(wanted, int | float) or isinstance(wanted, bool):
            continue
        if name in ("ratio", "mfu"):
            value, least = result.get(name), True
        elif name.endswith(("_min", "_max")):
            value, least = figures.get(name[:-4]), name.endswith("_min")
        else:
            continue
        if isinstance(value, int | float):
            checks.append(value >= wanted if least else value <= wanted)
    return all(checks) if checks else None


def run_all(scripts_dir: Path, out_dir: Path, timeout: float = 1800) -> list[dict[str, Any]]:
    """Run each script of ``scripts_dir`` (but this one) and return one row per script."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for script in sorted(scripts_dir.glob("*.py")):
        if script.resolve() == Path(__file__).resolve() or script.name.startswith("_"):
            continue
        out = out_dir / f"{script.stem}.json"
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True,
                                  text=True, timeout=timeout, check=False)
            code, log = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            code, log = -1, f"timed out after {timeout:g} s: {err}"
        (out_dir / f"{script.stem}.log").write_text(log)
        row: dict[str, Any] = {"script": script.name, "seconds": round(time.perf_counter() - start, 1)}
        if code == 0 and out.is_file():
            result = json.loads(out.read_text())
            row.update(result)
            row["met"] = target_met(result)
            row["status"] = "ok"
        else:
            row.update(status="failed", error=f"exit code {code}: {log.strip()[-1000:]}")
        print(f"{row['status']:>6}  {script.name}  ({row['seconds']} s)", flush=True)
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _hardware(hw: dict[str, Any]) -> str:
    if not hw:
        return "-"
    main = hw.get("gpu") or hw.get("cpu") or "?"
    return f"{main} (torch {hw.get('torch', '?')}, {hw.get('threads', '?')} threads)"


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``perf.json`` and ``perf.md``; returns the markdown path."""
    (out_dir / "perf.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    lines = [
        "# Performance suite", "",
        "Measured on this run by `benchmarks/perf/run_all.py`. MFU is model FLOP/s over the matrix-product "
        "FLOP/s measured in the same run on the same device. On a machine without CUDA the scripts run tiny "
        "CPU models: those rows test the scripts, they are not GPU figures.", "",
        "| benchmark | device | hardware | ratio | MFU | targets | met | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["status"] != "ok":
            error = row["error"].replace("|", "\\|").replace("\n", " ")[-200:]
            lines.append(f"| {row['script']} | - | - | - | - | - | failed: {error} | {row['seconds']} |")
            continue
        targets = ", ".join(f"{k}: {v}" for k, v in (row.get("targets") or {}).items()).replace("|", "/") or "-"
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(f"| {row['benchmark']} | {row['device']} | {_hardware(row.get('hardware', {}))} | "
                     f"{_fmt(row.get('ratio'))} | {_fmt(row.get('mfu'))} | {targets} | {met} | {row['seconds']} |")
    path = out_dir / "perf.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/perf", help="folder of the results (default: reports/perf)")
    parser.add_argument("--scripts-dir", default=str(HERE), help="folder of the perf scripts (default: this one)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one script may run")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    rows = run_all(Path(args.scripts_dir), out_dir, timeout=args.timeout)
    path = write_table(rows, out_dir)
    print(path.read_text())
    return 0 if rows and all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
