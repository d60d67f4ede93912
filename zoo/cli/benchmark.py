"""``zoo benchmark [--config <suite>]``: the command line of the benchmark harness (``zoo.bench``).

With no ``--config`` it runs the mini suite shipped with the package (``benchmarks/mini.yaml`` in a
checkout, ``zoo/suites/mini.yaml`` installed): every registered method of every task, tiny variant, on
the mini sets, offline. ``--config`` takes a suite file or the name of a shipped suite.

Example:
    $ zoo benchmark                                  # the mini suite, report in reports/mini/
    $ zoo benchmark --list                           # the jobs it expands to, without running them
    $ zoo benchmark --config fake_detection_cross --methods CNNDetector --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from zoo.bench import publish_results
from zoo.errors import ZooError

REPORTS = "reports"  # the default report folder is reports/<suite name>


def cmd_benchmark(argv: list[str]) -> int:
    """Run a benchmark suite (default: the mini suite) and write its report."""
    parser = argparse.ArgumentParser(
        prog="zoo benchmark",
        description="Run every job of a benchmark suite (fit when the method trains, then test) and write a "
        "report folder. Without --config: the mini suite, every registered method of every task.",
    )
    parser.add_argument("--config", "-c", help="the suite: a YAML file, or the name of a shipped suite "
                        "(mini, fake_detection_cross, drep); default: mini")
    parser.add_argument("--list", action="store_true", help="print the jobs the suite expands to and exit")
    parser.add_argument("--output", "-o", help="the report folder (default: reports/<suite name>)")
    parser.add_argument("--methods", nargs="+", help="only these methods (registry names or suite labels)")
    parser.add_argument("--tasks", nargs="+", help="only these tasks")
    parser.add_argument("--seeds", nargs="+", type=int, help="these seeds instead of the suite's")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the jobs that finished in an earlier run of the same report (default); "
                        "failed jobs are run again")
    parser.add_argument("--workers", type=int, help="parallel job processes (default: one per visible GPU, "
                        "else serial in this process)")
    parser.add_argument("--limit", type=int, help="run only the first N jobs of the suite")
    parser.add_argument("--publish", metavar="ORG/PREFIX",
                        help="push every exported checkpoint to the Hub as ORG/PREFIX-<method>-<dataset>-s<seed> "
                        "with a model card carrying its measured metrics")
    args = parser.parse_args(argv)

    from rich.console import Console

    from zoo.bench.suite import load_suite

    if args.publish and not re.fullmatch(r"[\w.-]+/[\w.-]+", args.publish):
        raise ZooError(f"--publish {args.publish!r}: expected ORG/PREFIX")
    if args.workers is not None and args.workers < 1:
        raise ZooError(f"--workers {args.workers}: give at least 1 (parallel job processes)")
    console = Console()
    if not console.is_terminal:  # a log file: tables are laid out for 120 columns
        console = Console(width=120)
    suite = load_suite(args.config or "mini", methods=args.methods, tasks=args.tasks, seeds=args.seeds)
    path = suite.path
    if args.limit is not None:
        suite.jobs = suite.jobs[: max(0, args.limit)]
    if not suite.jobs:
        raise ZooError(f"{path}: the suite (with the filters given) has no job to run")
    if args.list:
        print_jobs(suite, console)
        return 0

    from zoo.bench.report import write_report
    from zoo.bench.runner import output_lock, run_suite

    output = Path(args.output or Path(REPORTS) / suite.name)
    if not args.output and not output.resolve().is_relative_to(Path(REPORTS).resolve() / suite.name):
        raise ZooError(f"{path}: the report folder {output} resolves to {output.resolve()}, outside "
                       f"{Path(REPORTS).resolve()}; give --output")
    budget = f"budget {suite.budget_minutes:g} min" if suite.budget_minutes else "no time budget"
    with output_lock(output, console):
        console.print(f"[bold]zoo benchmark[/] {suite.name} ({path}): {len(suite.jobs)} jobs, {budget}; "
                      f"report in {output}")
        if suite.description:
            console.print(f"[dim]{suite.description}")
        start, cpu_start = time.perf_counter(), _cpu_minutes()
        results = run_suite(suite, output, resume=args.resume, workers=args.workers, console=console)
        minutes, cpu = (time.perf_counter() - start) / 60, _cpu_minutes() - cpu_start
        # the jobs' own wall times are kept in their result.json, so a resumed run still counts them all
        total = sum(r.get("wall_s") or 0 for r in results) / 60
        note = (f"The jobs took {total:.1f} min of wall time in all, counted over every run that made this "
                f"report (this run: {minutes:.1f} min, {cpu:.1f} CPU min in its processes; {budget}).")
        unpublished = publish_results(results, output, args.publish, console) if args.publish else 0
        write_report(results, output, suite.name, console=console, note=note, limitations=suite.limitations,
                     notes=suite.notes)
    failed = [r for r in results if r["status"] != "ok"]
    spent = max(total, minutes)
    kept = "" if not suite.budget_minutes else (
        " [green]within budget[/]" if spent <= suite.budget_minutes else " [red]over budget[/]")
    not_pushed = f"; [red]{unpublished} checkpoint(s) not published[/] (see publish_error)" if unpublished else ""
    console.print(f"{len(results) - len(failed)} of {len(results)} jobs succeeded; jobs {total:.1f} min in all, "
                  f"this run {minutes:.1f} min, {cpu:.1f} CPU min ({budget}){kept}{not_pushed}; "
                  f"report: {output / 'README.md'}")
    return 1 if failed or unpublished else 0


def print_jobs(suite: Any, console: Any) -> None:
    """The jobs of a suite, one row each, without running them."""
    from rich.table import Table

    budget = f", budget {suite.budget_minutes:g} min" if suite.budget_minutes else ""
    table = Table(title=f"{suite.name}: {len(suite.jobs)} jobs ({suite.path}{budget})")
    for column in ("task", "method", "setting", "seed", "fit"):
        table.add_column(column, overflow="fold")
    for job in suite.jobs:
        fit = "[red]cannot run[/]" if job.error else ("fit + test" if job.trains else "validate + test")
        table.add_row(job.task, job.label, job.setting, str(job.seed), fit)
    console.print(table)


def _cpu_minutes() -> float:
    """CPU time of this process and its finished children (parallel jobs), in minutes."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime) / 60
