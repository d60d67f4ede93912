"""Throughput of input reverse-engineering (RONAN) through a DDIM sampler.

With CUDA: a randomly initialised Stable Diffusion 1.x UNet and VAE (built from the SD 1.5 configs below,
nothing downloaded), 512x512 images inverted through a 10-step DDIM sampler for 100 Adam iterations.
It reports seconds per image of bf16 batched inversion against fp32 one-image-at-a-time inversion (the
released code's style) in the same run, both checkpointing the sampler, and the peak memory of a short
inversion of ``--memory-batch`` images with and without gradient checkpointing through the sampler
("out of memory" when it does not fit). Every timed case is warmed up first by a 2-iteration inversion of
the same images in the same dtype. Without CUDA: the tiny toy models on the CPU.

FLOPs of an iteration (sampler and decoder forward, backward to x_T, no checkpointing recomputation) are
counted on the meta device with attention on its math path; the full-size count is printed on any machine.

    python benchmarks/perf/inversion.py [--out FILE.json] [--batch 8] [--iterations 100] [--memory-batch 1]
    python benchmarks/perf/inversion.py --flops-only
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from zoo_inversion_attribution.generators import DDIMGenerator, load_generator
from zoo_inversion_attribution.torch_model import Inverter

from zoo.bench import perf

# Stable Diffusion 1.5's VAE (stable-diffusion-v1-5/stable-diffusion-v1-5, vae/config.json), built with random weights.
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
WARMUP_ITERATIONS = 2


def sd15_generator(steps: int, device: torch.device | str, gradient_checkpointing: bool = True) -> DDIMGenerator:
    """A random-init SD 1.5-shaped latent diffusion model sampled by DDIM from x_T, built on ``device``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from zoo.diffusion import tiny_scheduler

    torch.manual_seed(0)
    with torch.device(device):
        unet, vae = UNet2DConditionModel(**perf.SD15_UNET), AutoencoderKL(**SD15_VAE)
        context = torch.randn(1, *perf.SD15_CONTEXT)
    return DDIMGenerator(unet, tiny_scheduler("DDIMScheduler"), steps, vae=vae, context=context,
                         gradient_checkpointing=gradient_checkpointing).freeze()


def make_generator(steps: int, device: torch.device) -> DDIMGenerator:
    if device.type == "cuda":
        return sd15_generator(steps, device)
    return load_generator("tiny-ddim", ddim_steps=steps, gradient_checkpointing=True)


def seconds(inverter: Inverter, images: torch.Tensor) -> float:
    perf.synchronize()
    start = time.perf_counter()
    inverter.invert(images)
    perf.synchronize()
    return time.perf_counter() - start


def timed(generator: DDIMGenerator, images: torch.Tensor, iterations: int, dtype: torch.dtype | None) -> float:
    """Seconds of an inversion of ``images``, after a warm-up inversion of the same images in the same dtype."""
    Inverter(generator, iterations=WARMUP_ITERATIONS, restarts=1, autocast_dtype=dtype).invert(images)
    return seconds(Inverter(generator, iterations=iterations, restarts=1, autocast_dtype=dtype), images)


def flops_per_image_iteration(generator: DDIMGenerator) -> float:
    """Model FLOPs of one Adam iteration for one image: sampler and decoder forward, backward to x_T.

    The weights are frozen, so the backward computes input gradients only. Counted without gradient
    checkpointing: its recomputation is not model work.
    """
    device = next(generator.parameters()).device
    checkpointing, generator.gradient_checkpointing = generator.gradient_checkpointing, False
    z = generator.sample_input(1).to(device).requires_grad_(True)

    def iteration() -> None:
        # a non-leaf input: FlopCounterMode's module hooks refuse autograd.grad to a leaf
        torch.autograd.grad(generator(z * 1).sum(), z)

    try:
        return perf.count_flops(iteration)
    finally:
        generator.gradient_checkpointing = checkpointing


def full_size_flops(steps: int) -> float:
    """FLOPs of one iteration for one image of the SD 1.5-shaped inversion through ``steps`` sampler steps.

    A one-step sampler is counted whole on the meta device (UNet, decoder, backward to x_T); each further
    step adds one UNet forward and backward, the same work as the first (the sampler's own arithmetic is
    element-wise, which FLOP counts leave out).
    """
    return flops_per_image_iteration(sd15_generator(1, "meta")) + (steps - 1) * perf.unet_flops(perf.SD15_UNET)


def peak_memory(generator: DDIMGenerator, images: torch.Tensor, checkpointing: bool, dtype) -> float | str | None:
    """Peak CUDA memory (GiB) of a 2-iteration inversion of ``images``, or "out of memory" (None on the CPU)."""
    if images.device.type != "cuda":
        return None
    generator.gradient_checkpointing = checkpointing
    perf.reset_peak_memory()
    try:
        Inverter(generator, iterations=2, restarts=1, autocast_dtype=dtype).invert(images)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "out of memory"
    finally:
        generator.gradient_checkpointing = True
    return perf.peak_memory_gb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--batch", type=int, default=None, help="images per batched inversion (CUDA 8, CPU 4)")
    parser.add_argument("--iterations", type=int, default=None, help="Adam iterations (CUDA 100, CPU 4)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM sampler steps")
    parser.add_argument("--memory-batch", type=int, default=1, help="images of the memory comparison")
    parser.add_argument("--flops-only", action="store_true", help="print the full-size FLOP count and stop")
    args = parser.parse_args()
    full_size = full_size_flops(args.steps)
    if args.flops_only:
        print(json.dumps({"sd15_inversion_tflops_per_image_iteration": full_size / 1e12,
                          "ddim_steps": args.steps}, indent=2))
        return
    device = perf.device()
    cuda = device.type == "cuda"
    batch = args.batch or (8 if cuda else 4)
    iterations = args.iterations or (100 if cuda else 4)
    low = torch.bfloat16 if cuda else None  # bf16 autocast is a CUDA figure; the CPU run checks the code path

    # both timed runs checkpoint the sampler: without it 10 SD-sized steps do not fit at this shape
    generator = make_generator(args.steps, device)
    images = torch.rand(batch, 3, *generator.output_size, device=device)
    batched_s = timed(generator, images, iterations, low) / batch
    single_s = timed(generator, images[:1], iterations, None)

    memory_images = images[: args.memory_batch]
    peak_checkpointed = peak_memory(generator, memory_images, True, low)
    peak_plain = peak_memory(generator, memory_images, False, low)
    flops = full_size if cuda else flops_per_image_iteration(generator)  # on CUDA the same model as counted
    peak = perf.matmul_peak_flops()
    figures = {
        "shape": "SD 1.5 UNet + VAE, 512x512, random weights" if cuda else "tiny-ddim (toy UNet + VAE, 16x16)",
        "ddim_steps": args.steps,
        "iterations": iterations,
        "batch": batch,
        "batched_dtype": "bfloat16" if cuda else "float32",
        "seconds_per_image_batched": batched_s,
        "seconds_per_image_fp32_one_at_a_time": single_s,
        "memory_batch": args.memory_batch,
        "peak_memory_gb_checkpointing": peak_checkpointed,
        "peak_memory_gb_no_checkpointing": peak_plain,
        "warmup_iterations": WARMUP_ITERATIONS,
        "sd15_inversion_tflops_per_image_iteration": full_size / 1e12,
        "flops_per_image_iteration": flops,
        "matmul_peak_flops": peak,
    }
    flops_per_s = flops * iterations / batched_s
    # least values wanted: bf16 batched at least 10x fp32 one image at a time (a CUDA target)
    perf.write_result(args.out, "inversion_attribution", figures, ratio=single_s / batched_s,
                      mfu=flops_per_s / peak, mfu_datasheet=perf.mfu_datasheet(flops_per_s), targets={"ratio": 10.0})


if __name__ == "__main__":
    main()
