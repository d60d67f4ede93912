"""The benchmark harness behind ``zoo benchmark`` (``zoo.cli.benchmark``): suites, the runner, the report.

- ``suite.py``: a suite file (YAML) expanded into jobs;
- ``runner.py``: each job fitted (when its method trains) and tested, in its own folder;
- ``report/`` (tables, plots, contact sheets, README, environment) and ``stats.py`` (the bootstrap): the report
  folder, with intervals and a chance row; what is particular to a task comes from its ``Task``;
- ``perf.py``: the shared pieces of the throughput scripts in ``benchmarks/perf/``;
- ``publish_results`` (here): every exported checkpoint pushed to the Hub with its measured metrics.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from zoo.errors import ZooError, redact


def publish_results(results: list[dict[str, Any]], output: Path, target: str, console: Any) -> int:
    """Push each job's exported checkpoint with its measured metrics; the number of pushes that failed.

    A failed push does not stop the others; its error, with any credential in a URL masked, is stored as the
    job's ``publish_error`` and printed, and the command then exits non-zero.
    """
    import yaml
    from rich.markup import escape

    from zoo import hub

    publish = getattr(hub, "publish", None)
    if publish is None:
        raise ZooError("--publish needs zoo.hub.publish, which this installation does not have")
    org, prefix = target.split("/", 1)
    failed = 0
    for result in results:
        if result["status"] != "ok":
            continue
        job_dir = output / "jobs" / result["id"]
        name = re.sub(r"[^\w.-]+", "-", f"{prefix}-{result['label']}-{result['setting']}-s{result['seed']}")
        repo_id = f"{org}/{name.strip('-.')[:96]}"
        try:
            url = publish(
                job_dir / result["export"], repo_id, dataset=result["setting"],
                # the card states the threshold itself, from the weights, as a probability and a logit
                metrics={f"test/{k}": v for k, v in result["metrics"].items() if k != "threshold_logit"},
                training_config=yaml.safe_load((job_dir / "job.yaml").read_text()),
            )
            result["published"] = redact(url) if url is not None else repo_id
            result.pop("publish_error", None)
            console.print(f"published {result['id']} as {repo_id}")
        except Exception as err:  # noqa: BLE001 - one refused push must not lose the others
            result["publish_error"] = redact(f"{type(err).__name__}: {err}")
            failed += 1
            console.print(f"[red]publishing {result['id']} as {repo_id} failed:[/] {escape(result['publish_error'])}",
                          highlight=False)
    return failed

