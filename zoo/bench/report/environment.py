"""The environment of a benchmark run: versions of every dependency, and the hardware."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("provenance-zoo", "torch", "lightning", "torchmetrics", "torchvision", "timm", "open_clip_torch",
            "diffusers", "transformers", "peft", "faiss-cpu", "huggingface_hub", "numpy", "scikit-image")


def environment() -> dict[str, Any]:
    """Versions and hardware of this run."""
    import torch

    versions = {}
    for name in _dependencies():
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    return info


def _dependencies() -> list[str]:
    """The zoo and every package it requires (from its installed metadata), or a fixed list without it."""
    try:
        requires = metadata.requires("provenance-zoo") or []
    except metadata.PackageNotFoundError:
        return list(PACKAGES)
    names = [re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0] for req in requires if "extra ==" not in req]
    return ["provenance-zoo", *names]


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware_line(env: dict[str, Any]) -> str:
    """The processor, cores, torch threads and GPUs, in one line."""
    gpus = ", ".join(g["name"] for g in env["gpus"]) or "no GPU"
    cores = env.get("cpu_affinity") or env.get("cpu_count")
    return f"{env['cpu']} ({cores} cores, {env['torch_threads']} torch threads), {gpus}"
