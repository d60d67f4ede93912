"""Run every perf script of ``benchmarks/perf/`` and write one table of ratios and MFU.

Each script runs as ``python <script> --out <dir>/<name>.json`` in its own process (on a machine without
CUDA the scripts run their tiny CPU versions). The results are gathered into ``<dir>/perf.json`` and
``<dir>/perf.md``: one row per script with both MFU denominators, then the levers a script measured one
by one, then the full-size FLOP counts; a script that fails is listed with its exit code and the end of
its output.

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

    ``ratio`` and ``mfu`` are least values of the result's ``ratio`` and MFU: the MFU against the card's
    datasheet peak where the result has one (the usual definition, and the stricter), else against the
    measured matmul peak. ``<figure>_min`` and ``<figure>_max`` bound a figure of ``figures``. Other
    targets (text, settings) are shown, not judged.
    """
    figures = result.get("figures") or {}
    checks = []
    for name, wanted in (result.get("targets") or {}).items():
        if not isinstance(wanted, int | float) or isinstance(wanted, bool):
            continue
        if name == "ratio":
            value, least = result.get(name), True
        elif name == "mfu":
            datasheet = result.get("mfu_datasheet")
            value, least = (result.get("mfu") if datasheet is None else datasheet), True
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
    if hw.get("card"):
        main += f" = {hw['card']}, datasheet dense bf16 {hw['datasheet_bf16_dense_tflops']:g} TFLOP/s"
    return f"{main} (torch {hw.get('torch', '?')}, {hw.get('threads', '?')} threads)"


def _levers(rows: list[dict[str, Any]]) -> list[str]:
    """One table per result that measured levers one by one: the speed-up of each, or why it has none."""
    lines = []
    for row in rows:
        levers = (row.get("figures") or {}).get("levers") if row["status"] == "ok" else None
        if not levers:
            continue
        lines += ["", f"## Levers of {row['benchmark']}, one at a time", "",
                  "| lever | with | without | speed-up (s/image without / with) |", "|---|---|---|---|"]
        for lever in levers:
            outcome = _fmt(lever.get("speedup")) if "speedup" in lever else (
                f"skipped: {lever['skipped']}" if "skipped" in lever else f"error: {lever.get('error', '?')}")
            lines.append(f"| {lever['lever']} | {lever['with']} | {lever['without']} | "
                         f"{outcome.replace('|', '/')} |")
    return lines


def _full_size_flops(rows: list[dict[str, Any]]) -> list[str]:
    """The FLOP counts per image that the scripts print (full-size ones are counted on the meta device)."""
    lines = []
    for row in rows:
        for name, value in (row.get("figures") or {}).items() if row["status"] == "ok" else ():
            if "flops_per_image" in name and isinstance(value, int | float):
                lines.append(f"| {row['benchmark']} | {name} | {_fmt(value, 4)} |")
    if not lines:
        return []
    return ["", "## FLOPs per image (a multiply-add counts 2; attention on its math path)", "",
            "| benchmark | count | value |", "|---|---|---|", *lines]


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``perf.json`` and ``perf.md``; returns the markdown path."""
    (out_dir / "perf.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    lines = [
        "# Performance suite", "",
        "Measured on this run by `benchmarks/perf/run_all.py`. MFU is model FLOP/s over two denominators: "
        "the bf16 matrix-product FLOP/s measured in the same run on the same device (8192 x 8192 on CUDA), "
        "and the card's datasheet dense bf16 peak (named in the hardware column). An MFU target is judged "
        "on the datasheet MFU where there is one. On a machine without CUDA the scripts run tiny CPU "
        "models: those rows test the scripts, they are not GPU figures.", "",
        "| benchmark | device | hardware | ratio | MFU (measured peak) | MFU (datasheet peak) | targets | met "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["status"] != "ok":
            error = row["error"].replace("|", "\\|").replace("\n", " ")[-200:]
            lines.append(f"| {row['script']} | - | - | - | - | - | - | failed: {error} | {row['seconds']} |")
            continue
        targets = ", ".join(f"{k}: {v}" for k, v in (row.get("targets") or {}).items()).replace("|", "/") or "-"
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(f"| {row['benchmark']} | {row['device']} | {_hardware(row.get('hardware', {}))} | "
                     f"{_fmt(row.get('ratio'))} | {_fmt(row.get('mfu'))} | {_fmt(row.get('mfu_datasheet'))} | "
                     f"{targets} | {met} | {row['seconds']} |")
    lines += _levers(rows) + _full_size_flops(rows)
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
