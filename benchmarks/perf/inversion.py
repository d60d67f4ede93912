"""Throughput of input reverse-engineering (RONAN) through a DDIM sampler.

With CUDA: a randomly initialised Stable Diffusion 1.x UNet and VAE (built from the SD 1.5 configs below,
nothing downloaded), 512x512 images inverted through a 10-step DDIM sampler for 100 Adam iterations.
It reports seconds per image of bf16 batched inversion against fp32 one-image-at-a-time inversion (the
released code's style) in the same run, both checkpointing the sampler, and the peak memory of a short
inversion of ``--memory-batch`` images with and without gradient checkpointing through the sampler
("out of memory" when it does not fit). Without CUDA: the tiny toy models on the CPU.

    python benchmarks/perf/inversion.py [--out FILE.json] [--batch 8] [--iterations 100] [--memory-batch 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from zoo_inversion_attribution.generators import DDIMGenerator, load_generator
from zoo_inversion_attribution.torch_model import Inverter

from zoo.bench import perf

# Stable Diffusion 1.5's UNet and VAE configurations (as in its model index), built with random weights.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
SD15_TEXT = (77, 768)  # CLIP ViT-L/14 text tokens x width


def sd15_generator(steps: int, gradient_checkpointing: bool, device: torch.device) -> DDIMGenerator:
    """A random-init SD 1.5-shaped latent diffusion model sampled by DDIM from x_T."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from zoo.diffusion import tiny_scheduler

    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
    context = torch.randn(1, *SD15_TEXT)
    return DDIMGenerator(unet, tiny_scheduler("DDIMScheduler").alphas_cumprod, steps, vae=vae, context=context,
                         gradient_checkpointing=gradient_checkpointing).freeze().to(device)


def make_generator(steps: int, device: torch.device) -> DDIMGenerator:
    if device.type == "cuda":
        return sd15_generator(steps, True, device)
    return load_generator("tiny-ddim", ddim_steps=steps, gradient_checkpointing=True)


def seconds(inverter: Inverter, images: torch.Tensor) -> float:
    perf.synchronize()
    start = time.perf_counter()
    inverter.invert(images)
    perf.synchronize()
    return time.perf_counter() - start


def flops_per_image_iteration(generator: DDIMGenerator, device: torch.device) -> float:
    """Model FLOPs of one Adam iteration for one image: 2x the forward through sampler and decoder.

    The weights are frozen, so the backward pass computes input gradients only, about one forward's
    FLOPs; recomputation by checkpointing is not counted (it is not model work).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generator(generator.sample_input(1).to(device))
    return 2.0 * float(counter.get_total_flops())


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
    args = parser.parse_args()
    device = perf.device()
    cuda = device.type == "cuda"
    batch = args.batch or (8 if cuda else 4)
    iterations = args.iterations or (100 if cuda else 4)
    low = torch.bfloat16 if cuda else None  # bf16 autocast is a CUDA figure; the CPU run checks the code path

    # both timed runs checkpoint the sampler: without it 10 SD-sized steps do not fit at this shape
    generator = make_generator(args.steps, device)
    images = torch.rand(batch, 3, *generator.output_size, device=device)
    Inverter(generator, iterations=1, restarts=1, autocast_dtype=low).invert(images[:1])  # warm-up
    batched_s = seconds(Inverter(generator, iterations=iterations, restarts=1, autocast_dtype=low), images) / batch
    single_s = seconds(Inverter(generator, iterations=iterations, restarts=1, autocast_dtype=None), images[:1])

    memory_images = images[: args.memory_batch]
    peak_checkpointed = peak_memory(generator, memory_images, True, low)
    peak_plain = peak_memory(generator, memory_images, False, low)
    flops = flops_per_image_iteration(generator, device)
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
        "flops_per_image_iteration": flops,
        "matmul_peak_flops": peak,
    }
    mfu = flops * iterations / batched_s / peak
    perf.write_result(args.out, "inversion_attribution", figures, ratio=single_s / batched_s, mfu=mfu,
                      targets={"ratio": ">= 10 (bf16 batched vs fp32 one image at a time, CUDA)"})


if __name__ == "__main__":
    main()
