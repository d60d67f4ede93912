"""CGI-DM's PGD cost per image: batched bf16 against the released code's style (one image, fp16), lever by lever.

With CUDA: two Stable Diffusion 1.5 UNets (~860M parameters each, random weights), 64x64x4 latents, a
77x768 text context. Without CUDA: the tiny conditional UNet on the CPU. Each PGD step is two UNet
forward+backward passes (fine-tuned and pretrained) with the gradient to the latent only. A few steps are
timed and scaled to the 1000 steps of the default.

Every case builds its own two UNets in its own dtype and holds nothing else, so its peak memory is its
own. The levers are measured one by one, each as the reference case (batched, bf16, fused attention) with
that one lever changed: batching, bf16, fused attention, channels-last, ``torch.compile`` and CUDA graphs
(``reduce-overhead`` against plain ``torch.compile``). The levers run by default with CUDA; on the CPU
``--levers`` checks their code path, without bf16, ``torch.compile`` and CUDA graphs (CUDA figures).

FLOPs of a step are 2 x timesteps per step x (UNet forward + backward to the latent), counted on the meta
device with attention on its math path; the full-size SD 1.5 count is printed on any machine.

    python benchmarks/perf/cgi_dm.py [--out FILE.json] [--batch 16] [--steps 10] [--no-levers] [--flops-only]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import torch
from zoo_cgi_dm.torch_model import ContrastingGradientInversion

from zoo.bench import perf
from zoo.diffusion import tiny_scheduler, tiny_unet

DEFAULT_STEPS = 1000  # the released code's PGD steps
CONTEXT_LENGTH = 77  # CLIP text tokens
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (lever, the case with it, the case without it): each pair differs in that one lever
LEVERS = (
    ("batching", "reference", "batch 1"),
    ("bf16", "reference", "fp32"),
    ("fused attention (SDPA)", "reference", "math attention"),
    ("channels-last", "channels-last", "reference"),
    ("torch.compile", "torch.compile", "reference"),
    ("CUDA graphs", "torch.compile + CUDA graphs", "torch.compile"),
)
CUDA_ONLY = ("fp32", "fp16", "torch.compile", "torch.compile + CUDA graphs")  # on the CPU: fp32 is the reference


def unet_config(cuda: bool) -> dict[str, Any]:
    """The SD 1.5 UNet's config on CUDA, the tiny conditional UNet's on the CPU."""
    return dict(perf.SD15_UNET) if cuda else dict(tiny_unet(conditional=True).config)


def build_unet(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A random-init UNet of ``config`` on ``device`` in ``dtype`` (built on the device: faster than a CPU init)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        return UNet2DConditionModel.from_config(config).to(dtype).requires_grad_(False)


def make_case(config: dict[str, Any], dtype: torch.dtype, batch: int, steps: int, compile_mode: str | None,
              channels_last: bool, attention: str, shared_noise: bool = False,
              timesteps_per_step: int = 1) -> tuple[ContrastingGradientInversion, torch.Tensor, torch.Tensor]:
    """An inverter over two fresh UNets set up with the given levers, a latent batch and its context."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    device = perf.device()
    unets = []
    for seed in range(2):
        unet = build_unet(config, device, dtype, seed)
        unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
        if channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        if compile_mode:
            unet = torch.compile(unet, mode=None if compile_mode == "default" else compile_mode)
        unets.append(unet)
    inverter = ContrastingGradientInversion(unets[1], unets[0], tiny_scheduler().alphas_cumprod.to(device),
                                            steps=steps, shared_noise=shared_noise,
                                            timesteps_per_step=timesteps_per_step)
    size, channels = config["sample_size"], config["in_channels"]
    images = torch.rand(batch, channels, size, size, device=device)  # pixel-space identity: the latents themselves
    context = torch.randn(batch, CONTEXT_LENGTH, config["cross_attention_dim"], device=device)
    return inverter, images, context


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


def run_case(config: dict[str, Any], label: str, unet_pass_flops: float, matmul_peak: float,
             **case: Any) -> dict[str, Any]:
    """One case measured on its own: its figures, its MFU, or the error of a lever that fails on this stack."""
    cuda = torch.cuda.is_available()
    held = torch.cuda.memory_allocated() / 2**30 if cuda else None  # what an earlier case left behind (~0)
    try:
        inverter, images, context = make_case(config, **case)
        figures = measure(inverter, images, context)
    except Exception as err:  # a lever that fails on this stack is recorded, not fatal
        return {"case": label, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    finally:
        inverter = images = context = None
        if case.get("compile_mode"):
            torch._dynamo.reset()  # frees the compiled graphs and the CUDA graphs' memory pool
        if cuda:
            torch.cuda.empty_cache()
    step_flops = 2 * case.get("timesteps_per_step", 1) * unet_pass_flops * figures["batch"]
    flops_per_s = step_flops / figures["step_s"]
    return {"case": label, **{k: v for k, v in case.items() if k != "dtype"},
            "dtype": str(case["dtype"]).removeprefix("torch."), "held_before_case_gb": held, **figures,
            "model_tflops_per_s": flops_per_s / 1e12, "mfu": flops_per_s / matmul_peak,
            "mfu_datasheet": perf.mfu_datasheet(flops_per_s)}


def lever_table(cases: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each lever's speed-up: seconds per image without it over seconds per image with it."""
    rows = []
    for lever, with_label, without_label in LEVERS:
        row: dict[str, Any] = {"lever": lever, "with": with_label, "without": without_label}
        pair = [cases.get(with_label), cases.get(without_label)]
        if any(case is None for case in pair):
            row["skipped"] = "CUDA only"
        elif any("error" in case for case in pair):
            row["error"] = "; ".join(case["error"] for case in pair if "error" in case)
        else:
            row["speedup"] = pair[1]["s_per_image"] / pair[0]["s_per_image"]
        rows.append(row)
    return rows


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
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=None,
                        help="time each lever on its own (default: with CUDA only)")
    parser.add_argument("--flops-only", action="store_true", help="print the full-size FLOP count and stop")
    args = parser.parse_args(argv)

    full_size = perf.unet_flops(perf.SD15_UNET)  # per image, one UNet forward + backward to the latent
    if args.flops_only:
        counts = {"sd15_unet_fwd_bwd_tflops_per_image": full_size / 1e12,
                  "sd15_pgd_step_tflops_per_image": 2 * full_size / 1e12}
        print(json.dumps(counts, indent=2))
        return counts

    cuda = perf.device().type == "cuda"
    config = unet_config(cuda)
    unet_pass = perf.unet_flops(config, CONTEXT_LENGTH)
    matmul_peak = perf.matmul_peak_flops()
    batch = args.batch or (16 if cuda else 8)
    steps = args.steps or (10 if cuda else 3)
    dtype = DTYPES[args.dtype] if cuda else torch.float32

    def run(label: str, **case: Any) -> dict[str, Any]:
        return run_case(config, label, unet_pass, matmul_peak, steps=steps, **case)

    reference = dict(dtype=torch.bfloat16 if cuda else torch.float32, batch=batch, compile_mode=None,
                     channels_last=False, attention="sdpa")
    batched_case = dict(dtype=dtype, batch=batch, compile_mode=args.compile, channels_last=args.channels_last,
                        attention=args.attention)
    batched = run("batched", **batched_case)
    # the released code: one image at a time, fp16, two UNet forward+backward passes per step, no compile
    released = run("released_style", **{**reference, "batch": 1,
                                        "dtype": torch.float16 if cuda else torch.float32})
    if "error" in batched or "error" in released:
        raise RuntimeError(f"benchmark failed: {batched.get('error') or released.get('error')}")

    cases: dict[str, dict[str, Any]] = {}
    if args.levers or (args.levers is None and cuda):
        variants = {
            "reference": {},
            "batch 1": {"batch": 1},
            "fp32": {"dtype": torch.float32},
            "fp16": {"dtype": torch.float16},
            "math attention": {"attention": "math"},
            "channels-last": {"channels_last": True},
            "torch.compile": {"compile_mode": "default"},
            "torch.compile + CUDA graphs": {"compile_mode": "reduce-overhead"},
            "shared noise": {"shared_noise": True},
            "2 timesteps per step": {"timesteps_per_step": 2},
        }
        for label, change in variants.items():
            if cuda or label not in CUDA_ONLY:
                cases[label] = batched if batched_case == reference and label == "reference" else run(
                    label, **{**reference, **change})
    figures = {
        "model": "SD 1.5 UNet x2 (random weights), 64x64x4 latent, 77x768 context" if cuda
        else "tiny conditional UNet x2 (CPU stand-in), 8x8x4 latent, 77x32 context",
        "sd15_unet_fwd_bwd_tflops_per_image": full_size / 1e12,
        "unet_fwd_bwd_gflops_per_image": unet_pass / 1e9,
        "timed_steps": steps,
        "pgd_steps_scaled_to": DEFAULT_STEPS,
        "batched_s_per_image": batched["s_per_image"],
        "released_style_s_per_image": released["s_per_image"],
        "batched_peak_gb_per_image": batched["peak_gb_per_image"],
        "released_style_peak_gb_per_image": released["peak_gb_per_image"],
        "matmul_peak_tflops": matmul_peak / 1e12,
        "batched": batched,
        "released_style": released,
        "levers": lever_table(cases) if cases else [],
        "cases": cases,
    }
    return perf.write_result(args.out, "cgi_dm", figures, ratio=released["s_per_image"] / batched["s_per_image"],
                             mfu=batched["mfu"], mfu_datasheet=batched["mfu_datasheet"],
                             targets={"batched_s_per_image_max": 8.0, "released_style_s_per_image_about": 200.0})


if __name__ == "__main__":
    main()
