"""CLIP feature extraction throughput and MFU, and the time to train a head on cached features.

With CUDA: CLIP ViT-L/14 (random weights: throughput does not depend on them) in bf16 at batch 128,
MFU against the matmul peak measured in the same run and against the card's datasheet peak (target
>= 35%), then a head trained for 30
epochs (batch 32) on 100,000 cached 768-d features (target < 30 s). Without CUDA: the tiny zoo CLIP on the CPU
for the extraction, and the head on cached random features of ViT-L/14's real width (768; target
< 5 min on 2 cores for 100,000 features). The FLOPs per image of the full-size ViT-L/14 image tower at
224 are counted on the meta device on any machine, attention included.

    python benchmarks/perf/clip_features.py [--features 100000] [--out result.json] [--flops-only]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
from zoo_clip_mlp.torch_model import fit_head, make_head

from zoo.backbones import Encoder
from zoo.bench import perf

VIT_L14_DIM = 768  # output width of CLIP ViT-L/14's image tower: the width of the cached features


def full_size_flops() -> float:
    """FLOPs per image of CLIP ViT-L/14's image tower at 224, counted on the meta device."""
    with torch.device("meta"):
        encoder = Encoder("open_clip:ViT-L-14", pretrained=False, model_kwargs={"device": "meta"}).eval()
        image = torch.empty(1, 3, encoder.image_size, encoder.image_size)
    with torch.inference_mode():
        return perf.count_flops(lambda: encoder(image))


def measure_extraction(batch_size: int, compile_model: bool) -> dict[str, float]:
    """Images per second and FLOPs per image of the encoder's forward pass."""
    dev = perf.device()
    if dev.type == "cuda":
        encoder, dtype, spec = Encoder("open_clip:ViT-L-14", pretrained=False), torch.bfloat16, "ViT-L-14"
    else:
        encoder, dtype, spec = Encoder("open_clip:zoo-tiny-clip", pretrained=False), torch.float32, "zoo-tiny-clip"
    encoder = encoder.to(dev, dtype).eval()
    images = torch.randn(batch_size, 3, encoder.image_size, encoder.image_size, device=dev, dtype=dtype)
    forward = torch.compile(encoder) if compile_model else encoder
    with torch.inference_mode():
        flops_per_image = perf.count_flops(lambda: encoder(images[:1]))
        seconds = perf.timeit(lambda: forward(images), warmup=3, iters=10)
    return {"extract_encoder": spec, "extract_dtype": str(dtype).removeprefix("torch."),
            "extract_batch": batch_size, "extract_image_size": encoder.image_size,
            "extract_images_per_s": batch_size / seconds, "extract_flops_per_image": flops_per_image,
            "extract_flops_per_s": flops_per_image * batch_size / seconds}


def measure_head(count: int, epochs: int, batch_size: int, head: str) -> dict[str, float]:
    """Seconds to train ``head`` for ``epochs`` epochs on ``count`` cached random features."""
    dev = perf.device()
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(count, generator=generator) < 0.5).long()
    features = (torch.randn(count, VIT_L14_DIM, generator=generator) + labels[:, None] * 0.1).to(dev)
    model = make_head(head, VIT_L14_DIM).to(dev)
    perf.synchronize()
    start = time.perf_counter()
    losses = fit_head(model, features, labels, epochs=epochs, batch_size=batch_size)
    perf.synchronize()
    seconds = time.perf_counter() - start
    return {"head": head, "head_features": count, "head_dim": VIT_L14_DIM, "head_epochs": epochs,
            "head_batch": batch_size, "head_train_s": seconds, "head_samples_per_s": count * epochs / seconds,
            "head_first_loss": losses[0], "head_last_loss": losses[-1]}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=None, help="extraction batch (default 128 CUDA, 32 CPU)")
    parser.add_argument("--features", type=int, default=100_000, help="cached features the head trains on")
    parser.add_argument("--epochs", type=int, default=30, help="head epochs (paper: 30)")
    parser.add_argument("--head-batch", type=int, default=32, help="head batch (paper: 32)")
    parser.add_argument("--head", default="mlp", choices=["linear", "mlp", "deep"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    parser.add_argument("--out", default=None, help="write the JSON result here")
    parser.add_argument("--flops-only", action="store_true", help="print the full-size FLOP count and stop")
    args = parser.parse_args(argv)
    full_size = full_size_flops()
    if args.flops_only:
        counts = {"vit_l14_224_gflops_per_image": full_size / 1e9}
        print(json.dumps(counts, indent=2))
        return counts
    cuda = perf.device().type == "cuda"
    peak = perf.matmul_peak_flops()
    figures = {"vit_l14_224_gflops_per_image": full_size / 1e9, "matmul_peak_flops": peak}
    figures.update(measure_extraction(args.batch_size or (128 if cuda else 32), args.compile))
    figures.update(measure_head(args.features, args.epochs, args.head_batch, args.head))
    mfu = figures["extract_flops_per_s"] / peak
    # least values wanted (the harness's convention): 30 epochs of 100,000 features in 30 s (GPU) or 5 min (CPU)
    targets = {"mfu": 0.35, "extract_batch": 128, "head_features": 100_000, "head_epochs": 30,
               "head_samples_per_s": 100_000 * 30 / (30.0 if cuda else 300.0)}
    return perf.write_result(args.out, "clip_features", figures, mfu=mfu, targets=targets,
                             mfu_datasheet=perf.mfu_datasheet(figures["extract_flops_per_s"]))


if __name__ == "__main__":
    main()
