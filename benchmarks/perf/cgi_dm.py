"""CGI-DM's PGD cost per image: batched bf16 against the released code's style (one image, fp16).

With CUDA: two Stable Diffusion 1.x UNets (the SD 1.5 config, ~860M parameters each, random weights),
64x64x4 latents, a 77x768 text context. Without CUDA: the tiny conditional UNet on the CPU. Each PGD step
is two UNet forward+backward passes (fine-tuned and pretrained) with the gradient to the latent only. A few
steps are timed and scaled to the 1000 steps of the default; FLOPs are counted with FlopCounterMode.

    python benchmarks/perf/cgi_dm.py [--out FILE.json] [--batch 16] [--steps 10] [--levers]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from zoo_cgi_dm.torch_model import ContrastingGradientInversion

from zoo.bench import perf
from zoo.diffusion import TINY_CONTEXT_DIM, tiny_scheduler, tiny_unet

DEFAULT_STEPS = 1000  # the released code's PGD steps
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Stable Diffusion 1.5's UNet (stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def build_unet(cuda: bool) -> torch.nn.Module:
    """The SD 1.5 UNet on CUDA (built on the device: faster than a CPU init), the tiny one on the CPU."""
    if not cuda:
        torch.manual_seed(0)
        return tiny_unet(conditional=True)
    from diffusers import UNet2DConditionModel

    with torch.device("cuda"):
        return UNet2DConditionModel(**SD15_UNET)


def make_case(base: torch.nn.Module, dtype: torch.dtype, batch: int, steps: int, compile_mode: str | None,
              channels_last: bool, attention: str, shared_noise: bool = False,
              timesteps_per_step: int = 1) -> tuple[ContrastingGradientInversion, torch.Tensor, torch.Tensor]:
    """An inverter over two copies of ``base`` set up with the given levers, a latent batch and its context."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    device = next(base.parameters()).device
    unets = []
    for _ in range(2):
        unet = copy.deepcopy(base).to(dtype).requires_grad_(False)
        unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
        if channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        if compile_mode:
            unet = torch.compile(unet, mode=None if compile_mode == "default" else compile_mode)
        unets.append(unet)
    inverter = ContrastingGradientInversion(unets[1], unets[0], tiny_scheduler().alphas_cumprod.to(device),
                                            steps=steps, shared_noise=shared_noise,
                                            timesteps_per_step=timesteps_per_step)
    size, channels = base.config.sample_size, base.config.in_channels
    context_dim, length = base.config.cross_attention_dim, 77
    images = torch.rand(batch, channels, size, size, device=device)  # pixel-space identity: the latents themselves
    context = torch.randn(batch, length, context_dim, device=device)
    return inverter, images, context


def step_flops(inverter: ContrastingGradientInversion, images: torch.Tensor, context: torch.Tensor) -> float:
    """FLOPs of one PGD step (both UNets, forward and backward) for the batch."""
    steps = inverter.steps
    inverter.steps = 1
    with FlopCounterMode(display=False) as counter:
        inverter.invert(images, context, context)
    inverter.steps = steps
    return float(counter.get_total_flops())


def measure(inverter: ContrastingGradientInversion, images: torch.Tensor, context: torch.Tensor,
            warmup_steps: int = 2) -> dict[str, Any]:
    """Seconds per PGD step for the batch, per image at the default 1000 steps, and peak memory per image."""
    steps = inverter.steps
    inverter.steps = warmup_steps
    inverter.invert(images, context, context)  # compilation, cuDNN autotuning, allocator warm-up
    inverter.steps = steps
    perf.synchronize()
    perf.reset_peak_memory()
    start = time.perf_counter()
    inverter.invert(images, context, context)
    perf.synchronize()
    step_s = (time.perf_counter() - start) / steps
    batch = images.shape[0]
    peak = perf.peak_memory_gb()
    return {"batch": batch, "step_s": step_s, "s_per_image": step_s * DEFAULT_STEPS / batch,
            "peak_gb_per_image": None if peak is None else peak / batch}


def run_case(base: torch.nn.Module, label: str, **case: Any) -> dict[str, Any]:
    try:
        inverter, images, context = make_case(base, **case)
        figures = measure(inverter, images, context)
    except Exception as err:  # a lever that fails on this stack is recorded, not fatal
        return {"case": label, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"case": label, **{k: v for k, v in case.items() if k != "dtype"},
            "dtype": str(case["dtype"]).replace("torch.", ""), **figures}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON result file")
    parser.add_argument("--batch", type=int, default=None, help="images per PGD batch (CUDA 16, CPU 8)")
    parser.add_argument("--steps", type=int, default=None, help="timed PGD steps (CUDA 10, CPU 3)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="dtype of the batched run")
    parser.add_argument("--compile", default=None, choices=["default", "max-autotune-no-cudagraphs", "reduce-overhead"],
                        help="torch.compile the UNets of the batched run (reduce-overhead = CUDA graphs)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last UNets in the batched run")
    parser.add_argument("--attention", choices=["sdpa", "math"], default="sdpa", help="attention of the batched run")
    parser.add_argument("--levers", action="store_true", help="also time each lever on its own")
    args = parser.parse_args(argv)

    cuda = perf.device().type == "cuda"
    batch = args.batch or (16 if cuda else 8)
    steps = args.steps or (10 if cuda else 3)
    base = build_unet(cuda)
    dtype = DTYPES[args.dtype] if cuda else torch.float32
    released_dtype = torch.float16 if cuda else torch.float32
    common = dict(steps=steps, attention="sdpa")

    batched_case = dict(dtype=dtype, batch=batch, compile_mode=args.compile, channels_last=args.channels_last,
                        **{**common, "attention": args.attention})
    batched = run_case(base, "batched", **batched_case)
    # the released code: one image at a time, fp16, two UNet forward+backward passes per step, no compile
    released = run_case(base, "released_style", dtype=released_dtype, batch=1, compile_mode=None,
                        channels_last=False, **common)
    if "error" in batched or "error" in released:
        raise RuntimeError(f"benchmark failed: {batched.get('error') or released.get('error')}")

    inverter, images, context = make_case(base, **{**batched_case, "compile_mode": None})
    flops = step_flops(inverter, images, context)
    peak = perf.matmul_peak_flops()
    mfu = flops / batched["step_s"] / peak

    levers = []
    if args.levers:
        plain = dict(dtype=dtype, batch=batch, compile_mode=None, channels_last=False, **common)
        levers = [
            run_case(base, "batch 1, bf16", **{**plain, "batch": 1}),
            run_case(base, "batched, fp16", **{**plain, "dtype": DTYPES["fp16"] if cuda else torch.float32}),
            run_case(base, "batched, fp32", **{**plain, "dtype": torch.float32}),
            run_case(base, "batched, math attention", **{**plain, "attention": "math"}),
            run_case(base, "batched, channels-last", **{**plain, "channels_last": True}),
            run_case(base, "batched, torch.compile", **{**plain, "compile_mode": "default"}),
            run_case(base, "batched, torch.compile + CUDA graphs", **{**plain, "compile_mode": "reduce-overhead"}),
            run_case(base, "batched, shared noise", **plain, shared_noise=True),
            run_case(base, "batched, 2 timesteps per step", **plain, timesteps_per_step=2),
        ]
    figures = {
        "model": "SD 1.5 UNet x2 (random weights), 64x64x4 latent, 77x768 context" if cuda
        else "tiny conditional UNet x2 (CPU stand-in), 8x8x4 latent, 77x32 context",
        "unet_parameters": sum(p.numel() for p in base.parameters()),
        "context_dim": base.config.cross_attention_dim or TINY_CONTEXT_DIM,
        "timed_steps": steps,
        "pgd_steps_scaled_to": DEFAULT_STEPS,
        "batched_s_per_image": batched["s_per_image"],
        "released_style_s_per_image": released["s_per_image"],
        "batched_peak_gb_per_image": batched["peak_gb_per_image"],
        "released_style_peak_gb_per_image": released["peak_gb_per_image"],
        "step_tflops_batched": flops / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "batched": batched,
        "released_style": released,
        "levers": levers,
    }
    ratio = released["s_per_image"] / batched["s_per_image"]
    return perf.write_result(args.out, "cgi_dm", figures, ratio=ratio, mfu=mfu,
                             targets={"batched_s_per_image_max": 10.0, "released_style_s_per_image_about": 200.0})


if __name__ == "__main__":
    main()
