"""Shared pieces of the GPU throughput scripts in ``benchmarks/perf/``.

Each script measures on CUDA when it is there and on a tiny model on the CPU otherwise, and writes one
JSON result with ``write_result``: what ran, on what hardware, with which command, and its figures.

Model FLOPs are counted by ``count_flops`` with attention on its math path (a multiply-add counts 2), so
the count is the same on the CPU, on CUDA and on the meta device, where the full-size models are counted
without memory. MFU has two denominators: the bf16 matrix-product FLOP/s measured in the same run
(``mfu``) and the card's datasheet dense bf16 peak (``mfu_datasheet``, for the cards of ``DATASHEET_BF16``).
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# Stable Diffusion 1.5's UNet (stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json), ~860M parameters
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_CONTEXT = (77, 768)  # CLIP ViT-L/14 text tokens x width: the UNet's cross-attention context

# Dense (no sparsity) bf16 tensor-core peak of NVIDIA's datasheets, TFLOP/s: (part of the device name, card, peak).
# The first entry whose text is in the device name wins; an H100 that is neither PCIe nor NVL is the SXM part.
DATASHEET_BF16 = (
    ("H200 NVL", "H200 NVL", 835.0),
    ("H200", "H200 SXM", 989.0),
    ("H100 NVL", "H100 NVL", 835.0),
    ("H100 PCIe", "H100 PCIe", 756.0),
    ("H100", "H100 SXM", 989.0),
    ("A100", "A100", 312.0),
)


def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hardware() -> dict[str, Any]:
    """What the figures were measured on, with the card's datasheet bf16 peak when it is known."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
        card = datasheet_peak(props.name)
        if card is not None:
            info.update(card=card[0], datasheet_bf16_dense_tflops=card[1] / 1e12)
    return info


def datasheet_peak(device_name: str) -> tuple[str, float] | None:
    """``(card, dense bf16 FLOP/s)`` of the datasheet for a CUDA device name, or None for a card not listed."""
    for text, card, tflops in DATASHEET_BF16:
        if text in device_name:
            return card, tflops * 1e12
    return None


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
    """Measured FLOP/s of a square bf16 matrix product on CUDA (fp32 on the CPU): the denominator of ``mfu``."""
    dev = device()
    n = n or (8192 if dev.type == "cuda" else 512)
    dtype = dtype if dev.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    seconds = timeit(lambda: a @ b, warmup=3, iters=10)
    return 2 * n**3 / seconds


@contextmanager
def math_attention() -> Iterator[None]:
    """Attention as plain matrix products, so that ``FlopCounterMode`` sees all of it.

    In inference mode ``nn.MultiheadAttention`` takes a fused fast path, and the CPU runs SDPA through a
    fused kernel: ``FlopCounterMode`` counts neither. The fused CUDA kernels it does count recompute the
    attention scores in the backward pass, which is not model work. The math path has none of these.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def count_flops(fn: Callable[[], Any]) -> float:
    """Model FLOPs of one call of ``fn`` (a multiply-add counts 2), with attention on its math path.

    Example:
        >>> with torch.device("meta"):
        ...     model, images = timm.create_model("deit_base_patch16_224"), torch.empty(1, 3, 224, 224)
        >>> count_flops(lambda: model(images))  # 35.1e9, without allocating anything
    """
    with math_attention(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def unet_flops(config: Any, context_length: int = SD15_CONTEXT[0], backward: bool = True) -> float:
    """FLOPs per image of a conditional UNet's forward, plus its backward to the latent (weights frozen).

    Counted at batch 1 on the meta device, from a ``UNet2DConditionModel`` config (``SD15_UNET``, or a
    model's ``.config``): nothing is allocated, so the full-size count is cheap on any machine.
    """
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(dict(config)).requires_grad_(False)
        size, channels = model.config.sample_size, model.config.in_channels
        latent = torch.empty(1, channels, size, size, requires_grad=backward)
        context = torch.empty(1, context_length, model.config.cross_attention_dim)
        timestep = torch.tensor([500])

    def step() -> None:
        # a non-leaf input: FlopCounterMode's module hooks refuse autograd.grad to a leaf
        out = model(latent * 1, timestep, encoder_hidden_states=context).sample
        if backward:
            torch.autograd.grad(out.sum(), latent)

    return count_flops(step)


def mfu_datasheet(flops_per_s: float) -> float | None:
    """MFU against the datasheet dense bf16 peak of this CUDA card (None on the CPU or a card not listed)."""
    if not torch.cuda.is_available():
        return None
    card = datasheet_peak(torch.cuda.get_device_properties(0).name)
    return None if card is None else flops_per_s / card[1]


def peak_memory_gb() -> float | None:
    """Peak CUDA memory since the last reset, in GiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def write_result(path: str | Path | None, benchmark: str, figures: dict[str, Any],
                 ratio: float | None = None, mfu: float | None = None, targets: dict[str, Any] | None = None,
                 mfu_datasheet: float | None = None) -> dict:
    """Print and write one benchmark result as JSON.

    Args:
        mfu: model FLOP/s over the bf16 matrix-product FLOP/s measured in the same run.
        mfu_datasheet: model FLOP/s over the card's datasheet dense bf16 peak (see ``mfu_datasheet``).
    """
    hw = hardware()
    peak = hw.get("datasheet_bf16_dense_tflops")
    result = {
        "benchmark": benchmark,
        "device": device().type,
        "hardware": hw,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "figures": figures,
        "ratio": ratio,
        "mfu": mfu,
        "mfu_datasheet": mfu_datasheet,
        "mfu_denominators": {
            "mfu": "bf16 matrix product (8192 x 8192 on CUDA) measured in this run",
            "mfu_datasheet": f"datasheet dense bf16 peak of the {hw['card']}: {peak:g} TFLOP/s" if peak
            else "none: no datasheet peak for this device",
        },
        "targets": targets or {},
    }
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return result
