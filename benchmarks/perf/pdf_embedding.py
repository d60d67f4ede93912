"""PDF-Embedding pair-embedding extraction: batched bf16 against fp32 batch-1 (the released code's way).

On CUDA the encoder is the DeiT-B/16 with six tokens at 224 x 224; the fast path runs it in bf16, batched,
channels-last, compiled, with timm's fused (SDPA) attention. The baseline runs it in fp32, one image at a
time, eagerly. Both produce the (B, 6 x 768) descriptors of ``PDFEmbedding.embed``. Without CUDA the same
code runs on the tiny variant on the CPU (fp32 for both paths), so the script stays tested.

Prints (and writes with ``--out``) images/s of both paths, their ratio, MFU = model FLOP/s over the
matmul FLOP/s measured in the same run and over the card's datasheet peak, and peak GPU memory. The FLOPs
per image of the full-size network (and of the plain DeiT-B/16 with its 1000-class head, the usual
reference) are counted on the meta device on any machine, attention included.

Usage:
    python benchmarks/perf/pdf_embedding.py --out results/perf/pdf_embedding.json
    python benchmarks/perf/pdf_embedding.py --flops-only
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from zoo_pdf_embedding.lightning_model import TINY_VIT
from zoo_pdf_embedding.torch_model import PDFEmbeddingNet

from zoo.bench import perf

TARGETS = {"mfu": 0.45, "ratio": 50.0}


def forward_flops(net: PDFEmbeddingNet, images: torch.Tensor) -> float:
    """FLOPs of one ``embed`` call on ``images``, attention included."""
    with torch.no_grad():
        return perf.count_flops(lambda: net.embed(images))


def full_size_flops() -> dict[str, float]:
    """GFLOPs per image at 224 of the full-size network and of the plain DeiT-B/16, counted on the meta device."""
    import timm

    with torch.device("meta"):
        net = PDFEmbeddingNet().eval()
        deit = timm.create_model("deit_base_patch16_224", pretrained=False).eval()
        image = torch.empty(1, 3, 224, 224)
    with torch.no_grad():
        deit_flops = perf.count_flops(lambda: deit(image))
    return {"pdf_embedding_224_gflops_per_image": forward_flops(net, image) / 1e9,
            "deit_b16_224_gflops_per_image": deit_flops / 1e9}


def measure(batch_size: int, iters: int, compile_model: bool) -> dict[str, Any]:
    """Throughput of both paths on this device, in images per second."""
    dev = perf.device()
    cuda = dev.type == "cuda"
    arch: dict[str, Any] = {} if cuda else dict(TINY_VIT)
    size = arch.get("img_size", 224)
    net = PDFEmbeddingNet(**arch).to(dev).eval()

    one = torch.randn(1, 3, size, size, device=dev)
    flops_per_image = forward_flops(net, one)

    # baseline: fp32, batch 1, eager, one image after the other
    perf.reset_peak_memory()
    with torch.no_grad():
        seconds = perf.timeit(lambda: net.embed(one), warmup=3, iters=max(iters * 4, 10))
    baseline = 1.0 / seconds

    # fast path: low precision on CUDA, a large batch, channels-last, compiled
    dtype = torch.bfloat16 if cuda else torch.float32
    fast = PDFEmbeddingNet(**arch).to(dev, dtype=dtype).eval().to(memory_format=torch.channels_last)
    fast.load_state_dict(net.state_dict())
    embed = torch.compile(fast.embed) if compile_model else fast.embed
    batch = torch.randn(batch_size, 3, size, size, device=dev, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    perf.reset_peak_memory()
    with torch.inference_mode():
        seconds = perf.timeit(lambda: embed(batch), warmup=3, iters=iters)
    batched = batch_size / seconds
    peak_memory = perf.peak_memory_gb()

    matmul_peak = perf.matmul_peak_flops(torch.bfloat16)
    return {
        "model": "DeiT-B/16 + 5 tokens, 224" if cuda else "tiny ViT (embed 32, depth 2, patch 8, 32 px)",
        "batch_size": batch_size,
        "dtype": str(dtype).replace("torch.", ""),
        "compiled": compile_model,
        "gflops_per_image": flops_per_image / 1e9,
        "images_per_s_batched": batched,
        "images_per_s_fp32_batch1": baseline,
        "pairs_per_s_batched": batched / 2,
        "matmul_peak_tflops": matmul_peak / 1e12,
        "model_tflops": flops_per_image * batched / 1e12,
        "peak_memory_gb": peak_memory,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON result here")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on the CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 20 on CUDA, 3 on the CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (always skipped on the CPU)")
    parser.add_argument("--flops-only", action="store_true", help="print the full-size FLOP counts and stop")
    args = parser.parse_args(argv)
    full_size = full_size_flops()
    if args.flops_only:
        print(json.dumps(full_size, indent=2))
        return full_size
    cuda = perf.device().type == "cuda"
    figures = full_size | measure(
        batch_size=args.batch_size or (256 if cuda else 32),
        iters=args.iters or (20 if cuda else 3),
        compile_model=cuda and not args.no_compile,
    )
    ratio = figures["images_per_s_batched"] / figures["images_per_s_fp32_batch1"]
    mfu = figures["model_tflops"] / figures["matmul_peak_tflops"]
    return perf.write_result(args.out, "pdf_embedding_extraction", figures, ratio=ratio, mfu=mfu, targets=TARGETS,
                             mfu_datasheet=perf.mfu_datasheet(figures["model_tflops"] * 1e12))


if __name__ == "__main__":
    main()
