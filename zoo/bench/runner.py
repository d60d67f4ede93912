"""Runs benchmark jobs: each one fits (when its method trains) and tests through LightningCLI, in its own folder.

A job is built by ``zoo.training.RunConfig``, on which ``zoo fit`` builds, from the LightningCLI config it
writes (``job.yaml``), exactly as ``zoo fit --config job.yaml`` would build it. Then:

* a method that trains is fitted (validation calibrates a binary threshold each epoch) and exported;
* a method that does not train is validated (which calibrates its threshold) and exported;
* the exported checkpoint is loaded back and tested, so the numbers belong to what ``zoo`` ships.

Its result is written to ``<report>/jobs/<job id>/result.json`` when it ends, failed or not, so a
benchmark that is stopped resumes where it stopped. Jobs run serially in this process, or one process
per GPU when several are visible.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import queue
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from zoo.bench.suite import Job, Suite
from zoo.errors import ZooError, redact

RESULT_NAME = "result.json"
PREDICTIONS_NAME = "predictions.csv"
TRAIN_PREDICTIONS_NAME = "train_predictions.csv"  # copy detection: what the report fits its level map on
LOCK_NAME = ".zoo-benchmark.lock"
HOLDER_NAME = ".zoo-benchmark.holder.json"  # who holds the lock: pid, host, start
ERROR_CHARS = 500  # a stored error is one line, at most this long
# file names that are not UTF-8 reach the predictions as surrogate escapes; they are written as \\xNN
TEXT = {"encoding": "utf-8", "errors": "backslashreplace"}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows of predictions as CSV, the columns in order of first appearance."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", **TEXT) as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def prediction_rows(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sample of a batch's outputs; a 2-D tensor (e.g. the level pdf) gives a column per entry."""
    columns: dict[str, list[Any]] = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dim() == 2:
                for j in range(value.shape[1]):
                    columns[f"{key}_{j}"] = value[:, j].tolist()
                continue
            value = value.reshape(-1).tolist()
        columns[key] = list(value)
    size = max((len(v) for v in columns.values()), default=0)
    return [{k: v[i] for k, v in columns.items() if i < len(v)} for i in range(size)]


# ------------------------------------------------------------------------------------------ callbacks
class PredictionWriter(Callback):
    """Collects what ``test_step`` returns and writes it as ``predictions.csv`` (one row per sample)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, dict):
            self.rows += prediction_rows(outputs)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        write_rows(self.path, self.rows)


class JobProgress(Callback):
    """Moves one rich progress bar through the batches of every stage of a job."""

    def __init__(self, progress: Any, task_id: Any, label: str) -> None:
        self.progress, self.task_id, self.label = progress, task_id, label

    def _start(self, what: str, total: Any) -> None:
        total = None if total in (None, float("inf")) else int(total)
        self.progress.reset(self.task_id, total=total, description=f"{self.label} [dim]{what}")

    def _advance(self) -> None:
        self.progress.advance(self.task_id)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(f"fit epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", trainer.num_training_batches)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("validate", sum(trainer.num_val_batches) if not trainer.sanity_checking
                    else sum(trainer.num_sanity_val_batches))

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("test", sum(trainer.num_test_batches))

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._advance()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._advance()

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._advance()


# ------------------------------------------------------------------------------------------ one job
class PeakMemory:
    """Peak resident memory of this process while the block runs (and peak CUDA memory when present).

    ``ru_maxrss`` is a peak over the whole process, so on Linux a thread samples ``/proc/self/statm``
    instead, which gives the peak of each job of a serial run.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._statm = Path("/proc/self/statm")

    def _rss(self) -> int:
        if self._statm.is_file():
            return int(self._statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak_bytes = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())

    @property
    def cuda_peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


@contextlib.contextmanager
def _job_log(path: Path) -> Iterator[None]:
    """Send Lightning's messages and Python warnings of a job to its ``log.txt``, off the progress display."""
    handler = logging.FileHandler(path, **TEXT)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "py.warnings")]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    logging.captureWarnings(True)
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
        lg.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per place, not once per batch
            # the job's config is passed as args while `zoo benchmark ...` is in sys.argv, by design
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
            yield
    finally:
        logging.captureWarnings(False)
        for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
        handler.close()


@contextlib.contextmanager
def output_lock(output: Path, console: Any = None) -> Iterator[None]:
    """Hold a report folder for one run: a second run into it is refused with the holder's process id.

    The lock is an OS lock on ``.zoo-benchmark.lock`` (``filelock``: ``flock`` on POSIX), taken atomically and
    released by the kernel when its process ends, even by SIGKILL: a lock left by a killed run is free, and of
    two runs started at once exactly one gets it. Who holds it is written beside it, for the message.

    Raises:
        ZooError: the folder cannot be written, or another run holds it.
    """
    from filelock import FileLock, Timeout

    holder_file = output / HOLDER_NAME
    try:
        output.mkdir(parents=True, exist_ok=True)
        lock = FileLock(output / LOCK_NAME, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            holder = _lock_holder(holder_file)
            raise ZooError(
                f"{output} is in use by another zoo benchmark (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('started_at', '?')}); wait for it or pass "
                "another --output") from None
        try:
            previous = _lock_holder(holder_file)
            if previous and console is not None:  # a run that was killed left its note; its lock went with it
                console.print(f"[yellow]took over {output} from pid {previous.get('pid', '?')}, which has ended")
            tmp = holder_file.with_name(holder_file.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now()}))
            os.replace(tmp, holder_file)
        except BaseException:
            lock.release()
            raise
    except OSError as err:
        raise ZooError(f"cannot write the report folder {output}: {err.strerror or err}") from err
    try:
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()


def _lock_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # not written yet, or damaged
    return holder if isinstance(holder, dict) else {}


def run_job(job: Job, job_dir: Path, progress: Any = None, progress_task: Any = None) -> dict[str, Any]:
    """Run one job in this process and write its ``result.json``; a failure is recorded, not raised."""
    if job_dir.exists():
        shutil.rmtree(job_dir)  # what an interrupted run left behind
    job_dir.mkdir(parents=True)
    result = _result_stub(job)
    result["started_at"] = _now()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    try:
        with _job_log(job_dir / "log.txt"):
            result.update(_execute(job, job_dir, progress, progress_task))
        result["status"] = "ok"
    except BaseException as err:  # noqa: BLE001 - a failed job is recorded and the others go on
        if isinstance(err, KeyboardInterrupt):
            raise
        (job_dir / "error.txt").write_text(redact(traceback.format_exc()), **TEXT)
        result.update(status="failed", error=_error_text(err))
    result["wall_s"] = round(time.perf_counter() - start, 3)
    # CPU seconds of this process over the job: on a shared machine, wall time alone says little
    result["cpu_s"] = round(_cpu_seconds() - cpu_start, 3)
    result["finished_at"] = _now()
    write_result(job_dir, result)
    return result


def _execute(job: Job, job_dir: Path, progress: Any, progress_task: Any) -> dict[str, Any]:
    from zoo import registry
    from zoo.checkpoint import EXPORT_DIR, load_folder
    from zoo.training import ExportOnFitEnd, RunConfig

    if job.error:
        raise ZooError(job.error)
    registry.methods.load(job.method)  # a plugin that fails to import fails here with its ZooError
    config = dict(job.config)
    config["trainer"] = {**config["trainer"], "default_root_dir": str(job_dir)}
    config_path = job_dir / "job.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    writer = PredictionWriter(job_dir / PREDICTIONS_NAME)
    callbacks: list[Callback] = [ExportOnFitEnd(), writer]
    if progress is not None:
        callbacks.append(JobProgress(progress, progress_task, job.label))
    # a config value the parser refuses raises one ZooError naming the argument (it parses without exiting)
    cli = RunConfig(["--config", str(config_path)], run=False, trainer_defaults={"callbacks": callbacks})
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    used = _record_splits(data)
    with PeakMemory() as memory:
        start = time.perf_counter()
        export = Path(trainer.log_dir or job_dir) / EXPORT_DIR
        if job.trains:
            trainer.fit(model, datamodule=data)  # ExportOnFitEnd writes the export folder
        else:
            trainer.validate(model, datamodule=data, verbose=False)  # calibrates the decision threshold on validation
            model.save_pretrained(export)
        fit_s = time.perf_counter() - start
        splits_used = set(used)
        if not export.is_dir():
            raise ZooError(f"{job.id}: no exported checkpoint at {export} after fit")
        # the numbers are those of the shipped checkpoint; its paths (a local diffusion model) are the job's own
        tested = load_folder(export, trusted=config.get("model", {}).get("init_args", {}))
        start = time.perf_counter()
        out = trainer.test(tested, datamodule=data, verbose=False)
        test_s = time.perf_counter() - start
        if tested.task_spec.train_predictions:  # the report derives rows of the task from them
            write_train_predictions(tested, data, job_dir / TRAIN_PREDICTIONS_NAME)
    metrics = {k.split("/", 1)[1]: float(v) for k, v in (out[0] if out else {}).items() if k.startswith("test/")}
    if not metrics:
        raise ZooError(f"{job.id}: the test split gave no metrics")
    if tested.task_spec.score_is_logit and "threshold" in metrics:
        # one meaning per word: the threshold is a probability, as `zoo predict` prints it; its logit beside it
        metrics["threshold_logit"] = metrics["threshold"]
        metrics["threshold"] = float(tested.probability(torch.tensor(metrics["threshold"])))
    sizes = {split: len(records or []) for split, records in getattr(data, "splits", {}).items()}
    return {
        "metrics": metrics,
        "fit_s": round(fit_s, 3),
        "test_s": round(test_s, 3),
        "peak_rss_mb": round(memory.peak_bytes / 2**20, 1),
        "cuda_peak_mb": None if memory.cuda_peak_mb is None else round(memory.cuda_peak_mb, 1),
        "params": sum(p.numel() for p in tested.parameters()),
        "epochs": trainer.current_epoch if job.trains else 0,
        "steps": trainer.global_step,
        "train_size": labels_used(job, tested, splits_used, sizes),
        "split_sizes": sizes,
        "export": str(export.relative_to(job_dir)),
        "device": str(tested.device),
    }


def _record_splits(data: Any) -> list[str]:
    """The splits a datamodule hands out from now on (fit, validation, a level map's fit), in order."""
    used: list[str] = []
    dataset = getattr(data, "dataset", None)
    if callable(dataset):
        def recording(split: str, *args: Any, **kwargs: Any) -> Any:
            used.append(split)
            return dataset(split, *args, **kwargs)

        data.dataset = recording
    return used


def labels_used(job: Job, model: Any, splits: set[str], sizes: dict[str, int]) -> int:
    """Every label a method used before the test: the training split when it trained or fitted on it (e.g. a
    level map), and the validation split when a binary decision threshold was calibrated on it."""
    count = sizes.get("train", 0) if job.trains or "train" in splits else 0
    if getattr(model.task_spec, "binary", False) and getattr(model, "calibrates_threshold", False):
        count += sizes.get("val", 0)
    return count


@torch.no_grad()
def write_train_predictions(model: Any, data: Any, path: Path) -> None:
    """The shipped model's predictions on the training split, with the task's labels, in split order."""
    loader = torch.utils.data.DataLoader(data.dataset("train"), batch_size=getattr(data, "batch_size", 32),
                                         shuffle=False)
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    for batch in loader:
        batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        pred = model.predictions(batch)
        rows += prediction_rows({**pred, "id": list(batch["id"]), **model.task_spec.truth(batch)})
    model.train(was_training)
    write_rows(path, rows)


def _result_stub(job: Job) -> dict[str, Any]:
    data_args = job.config.get("data", {}).get("init_args", {}) if job.config else {}
    return {
        "id": job.id, "task": job.task, "method": job.method, "label": job.label, "variant": job.variant,
        "dataset": job.dataset, "setting": job.setting, "seed": job.seed, "trains": job.trains,
        "grid": job.grid, "data_args": data_args, "fingerprint": job.fingerprint(), "status": "running",
        "metrics": {}, "error": None,
    }


def _error_text(err: BaseException) -> str:
    """One line for ``result.json`` and the console: the error's first line, credentials masked."""
    text = f"{type(err).__name__}: {err}" if not isinstance(err, ZooError) else str(err)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()] or [type(err).__name__]
    return redact(lines[0] + (" ..." if len(lines) > 1 else ""))[:ERROR_CHARS]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_result(job_dir: Path, result: dict[str, Any]) -> None:
    """Write ``result.json`` atomically: a run killed while writing leaves no half file."""
    tmp = job_dir / (RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(job_dir / RESULT_NAME)


def read_result(job_dir: Path) -> dict[str, Any] | None:
    """The result of a finished job, or None."""
    path = job_dir / RESULT_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


# ------------------------------------------------------------------------------------------ a suite
def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES values."""
    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def run_suite(suite: Suite, output: Path, resume: bool = True, workers: int | None = None,
              console: Any = None) -> list[dict[str, Any]]:
    """Run every job of ``suite`` not already finished under ``output/jobs``; the results in suite order.

    Args:
        suite: the expanded suite.
        output: the report folder.
        resume: keep the results of jobs that finished (successfully, with the same config) before.
        workers: parallel job processes; default one per visible GPU, serial in this process otherwise.
        console: a rich console for the messages and progress.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = console or Console()
    jobs_dir = output / "jobs"
    results: dict[str, dict[str, Any]] = {}
    todo: list[Job] = []
    for job in suite.jobs:
        previous = read_result(jobs_dir / job.id) if resume else None
        if previous and previous.get("status") == "ok" and previous.get("fingerprint") == job.fingerprint():
            results[job.id] = previous
        else:
            todo.append(job)
    if results:
        console.print(f"resuming: {len(results)} finished job(s) kept, {len(todo)} to run")
    gpus = visible_gpus()
    workers = workers or max(1, len(gpus))
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task(f"[bold]{suite.name}", total=len(suite.jobs), completed=len(results))
        if workers <= 1:
            job_task = progress.add_task("", total=None)
            for job in todo:
                progress.reset(job_task, total=None, description=job.label)
                result = run_job(job, jobs_dir / job.id, progress, job_task)
                results[job.id] = result
                _report_line(progress.console, result)
                progress.advance(overall)
            progress.update(job_task, visible=False)
        else:
            slots: queue.Queue[str | None] = queue.Queue()
            for i in range(workers):
                slots.put(gpus[i % len(gpus)] if gpus else None)

            def work(job: Job) -> dict[str, Any]:
                device = slots.get()
                task_id = progress.add_task(f"{job.label} [dim]gpu {device}" if device else job.label, total=None)
                try:
                    return run_job_subprocess(job, jobs_dir / job.id, device)
                finally:
                    progress.remove_task(task_id)
                    slots.put(device)

            with ThreadPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(work, todo):
                    results[result["id"]] = result
                    _report_line(progress.console, result)
                    progress.advance(overall)
    return [results[job.id] for job in suite.jobs]


def _report_line(console: Any, result: dict[str, Any]) -> None:
    if result["status"] == "ok":
        console.print(f"[green]done[/] {result['id']} ({result.get('wall_s', 0):.1f} s)")
    else:
        console.print(f"[red]failed[/] {result['id']}: {result['error']}")


def run_job_subprocess(job: Job, job_dir: Path, device: str | None) -> dict[str, Any]:
    """Run one job in a child process pinned to one GPU (``device``) and read its result back."""
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    spec = job_dir.parent / f"{job.id}.job.json"
    spec.write_text(json.dumps(job.to_dict(), default=str))
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    log = job_dir.parent / f"{job.id}.stdout.txt"
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "zoo.bench.runner", str(spec), str(job_dir)],
                              stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    spec.unlink(missing_ok=True)
    result = read_result(job_dir)
    if result is None:  # the child died before writing (killed, out of memory)
        result = _result_stub(job)
        lines = log.read_text(**TEXT).strip().splitlines() if log.is_file() else []
        last = f": {lines[-1].strip()}" if lines else ""
        result.update(status="failed", error=redact(f"job process exited with code {proc.returncode}{last} "
                                                    f"(its output: stdout.txt)")[:ERROR_CHARS], finished_at=_now())
        write_result(job_dir, result)
    shutil.move(str(log), str(job_dir / "stdout.txt"))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Child process of a parallel run: ``python -m zoo.bench.runner <job.json> <job dir>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    spec, job_dir = Path(argv[0]), Path(argv[1])
    job = Job(**json.loads(spec.read_text()))
    result = run_job(job, job_dir)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
