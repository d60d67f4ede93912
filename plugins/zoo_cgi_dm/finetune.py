"""Tiny pretrained and fine-tuned diffusion models for the mini copyright suite, trained on the CPU.

A pixel-space ``UNet2DModel`` (16x16 RGB) is trained as the "pretrained" model on ``MiniCopyright``'s
``pretrain/`` images, then a copy is fine-tuned on the member images of every split, once fully and once
with a LoRA adapter (peft). The folders are diffusers folders in the zoo cache, built once and reused:

    <ZOO_CACHE>/mini/cgi_dm-mini-v3-seed0/pretrained/{unet,scheduler}    the pretrained model
    <ZOO_CACHE>/mini/cgi_dm-mini-v3-seed0/full/{unet,scheduler}          the full fine-tune
    <ZOO_CACHE>/mini/cgi_dm-mini-v3-seed0/lora/{adapter_config.json,adapter_model.safetensors}

Two named settings of the same build (``SETTINGS``): ``mini``, the default, trains long enough for the
fine-tunes to remember their members (the mini suite's models); ``test`` trains the same networks on the
same images a quarter as long, for the test suite. ``$ZOO_CGI_DM_MINI`` picks the setting that ``zoo-mini``
names (the test suite sets ``test``).

Run ``python -m zoo_cgi_dm.finetune [--setting test]`` to build them and print where they are.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zoo.data import mini
from zoo.diffusion import noisy, predict_noise, tiny_scheduler, tiny_unet

VERSION = 3
IMAGE_SIZE = 16
SETTINGS = {
    # trained long enough (about 2 CPU minutes in all) for the fine-tunes to remember their members: with
    # shorter schedules the membership signal CGI-DM looks for is not there to find
    "mini": {"pretrain": {"steps": 500, "batch_size": 32, "lr": 2e-3},
             "full": {"steps": 1000, "batch_size": 20, "lr": 1e-3},
             "lora": {"steps": 600, "batch_size": 20, "lr": 5e-3, "rank": 8},
             "estimate": "about 2 CPU minutes"},
    # the same networks for the tests: long enough for the loss sign to show on the test split (the fine-tunes
    # denoise their members better than the hold-outs); no figure measured on them is a benchmark result
    "test": {"pretrain": {"steps": 100, "batch_size": 32, "lr": 2e-3},
             "full": {"steps": 300, "batch_size": 20, "lr": 1e-3},
             "lora": {"steps": 200, "batch_size": 20, "lr": 5e-3, "rank": 8},
             "estimate": "about 30 CPU seconds"},
}
SETTING_ENV = "ZOO_CGI_DM_MINI"
# convolutions too: the attention-free tiny UNet has no attention projections to adapt
LORA_TARGETS = ["conv1", "conv2", "time_emb_proj"]


def load_images(paths: list[Path], size: int = IMAGE_SIZE) -> Tensor:
    """PNG files -> ``(N, 3, size, size)`` in [-1, 1]."""
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_denoiser(unet: nn.Module, images: Tensor, alphas_cumprod: Tensor, steps: int, batch_size: int, lr: float,
                   generator: torch.Generator, label: str = "training") -> list[float]:
    """Plain DDPM training (noise-prediction MSE, uniform timesteps) of ``unet``'s trainable parameters.

    A progress bar named ``label`` is shown on stderr when it is a terminal.
    """
    from rich.console import Console
    from rich.progress import track

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    unet.train()
    losses = []
    console = Console(stderr=True)
    for _ in track(range(steps), description=label, console=console, transient=True,
                   disable=not console.is_terminal):
        idx = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=generator)
        x0 = images[idx]
        t = torch.randint(0, alphas_cumprod.shape[0], (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = F.mse_loss(predict_noise(unet, noisy(alphas_cumprod, x0, noise, t), t), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    unet.eval()
    return losses


def member_paths(data_root: Path) -> list[Path]:
    """The member images of every split: what the fine-tuned copy is trained on."""
    return sorted(data_root.glob("*/member/*.png"))


def build(target: Path, seed: int = 0, setting: str = "mini") -> None:
    """Train and write the three models of build ``setting`` into ``target``."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    steps = SETTINGS[setting]
    data_root = mini.ensure("copyright")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    scheduler = tiny_scheduler()
    acp = scheduler.alphas_cumprod
    pretrain = load_images(sorted((data_root / "pretrain").glob("*.png")))
    members = load_images(member_paths(data_root))

    unet = tiny_unet(conditional=False, in_channels=3, sample_size=IMAGE_SIZE, block_out_channels=(16, 32),
                     attention=False)
    train_denoiser(unet, pretrain, acp, **_schedule(steps["pretrain"]), generator=generator, label="pretrain")
    unet.save_pretrained(target / "pretrained" / "unet")
    scheduler.save_pretrained(target / "pretrained" / "scheduler")

    full = copy.deepcopy(unet)
    train_denoiser(full, members, acp, **_schedule(steps["full"]), generator=generator, label="full fine-tune")
    full.save_pretrained(target / "full" / "unet")
    scheduler.save_pretrained(target / "full" / "scheduler")

    lora = copy.deepcopy(unet)
    rank = steps["lora"]["rank"]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=True)
    config.base_model_name_or_path = "zoo-mini"
    lora.requires_grad_(False)
    inject_adapter_in_model(config, lora)
    train_denoiser(lora, members, acp, **_schedule(steps["lora"]), generator=generator, label="LoRA fine-tune")
    (target / "lora").mkdir(parents=True)
    config.save_pretrained(str(target / "lora"))
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(lora, save_embedding_layers=False).items()}
    save_file(state, str(target / "lora" / "adapter_model.safetensors"), metadata={"format": "pt"})


def _schedule(stage: dict) -> dict:
    return {key: stage[key] for key in ("steps", "batch_size", "lr")}


def _one_thread_build(target: Path, seed: int, setting: str) -> None:
    # one thread: the networks are too small to gain from more, a busy machine makes more threads spin
    # (ten times slower on two shared cores), and one thread gives the same weights on every machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build(target, seed, setting)
    finally:
        torch.set_num_threads(threads)


def ensure_mini_models(seed: int = 0, setting: str | None = None) -> dict[str, Path]:
    """The folders of the mini models (``pretrained``, ``full``, ``lora``), trained first if absent (atomically).

    Args:
        seed: seed of the training.
        setting: a key of ``SETTINGS``; None: ``$ZOO_CGI_DM_MINI``, else ``mini``.
    """
    setting = setting or os.environ.get(SETTING_ENV) or "mini"
    if setting not in SETTINGS:
        from zoo.errors import ZooError

        raise ZooError(f"{SETTING_ENV}={setting!r}: the settings of the mini models are {', '.join(SETTINGS)}")
    root = mini.ensure(f"cgi_dm-{setting}", seed=seed, version=VERSION,
                       build=lambda target, seed: _one_thread_build(target, seed, setting),
                       estimate=f"CGI-DM's {setting} diffusion models, {SETTINGS[setting]['estimate']}")
    return {name: root / name for name in ("pretrained", "full", "lora")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", choices=list(SETTINGS), default=None)
    args = parser.parse_args()
    for name, path in ensure_mini_models(args.seed, args.setting).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
