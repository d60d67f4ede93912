"""Shared pieces of the GPU throughput scripts in ``benchmarks/perf/``.

Each script measures on CUDA when it is there and on a tiny model on the CPU otherwise, and writes one
JSON result with ``write_result``: what ran, on what hardware, with which command, and its figures.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hardware() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn: Callable[[], Any], warmup: int = 2, iters: int = 5) -> float:
    """Mean seconds of one call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize()
    return (time.perf_counter() - start) / iters


def matmul_peak_flops(dtype: torch.dtype = torch.bfloat16, n: int | None = None) -> float:
    """Measured FLOP/s of a square matrix product on this device: the denominator of MFU."""
    dev = device()
    n = n or (8192 if dev.type == "cuda" else 512)
    dtype = dtype if dev.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    seconds = timeit(lambda: a @ b, warmup=3, iters=10)
    return 2 * n**3 / seconds


def peak_memory_gb() -> float | None:
    """Peak CUDA memory since the last reset, in GiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def write_result(path: str | Path | None, benchmark: str, figures: dict[str, Any],
                 ratio: float | None = None, mfu: float | None = None, targets: dict[str, Any] | None = None) -> dict:
    """Print and write one benchmark result as JSON."""
    result = {
        "benchmark": benchmark,
        "device": device().type,
        "hardware": hardware(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "figures": figures,
        "ratio": ratio,
        "mfu": mfu,
        "targets": targets or {},
    }
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return result
