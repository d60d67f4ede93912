"""Diffusion models for the methods that need them (copyright, attribution).

Models are diffusers components given by Hub id or local folder. ``tiny_*`` builds the same
architectures at toy size, randomly initialised and offline, for tests and the mini suite. Libraries
are imported inside the functions so that listing methods never imports diffusers.

Example:
    >>> unet = load_unet("stable-diffusion-v1-5/stable-diffusion-v1-5")     # Hub id, subfolder "unet"
    >>> unet = tiny_unet(conditional=True)                                # 8x8x4 latents, 32-d context
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.errors import ZooError

TINY_CONTEXT_DIM = 32
TINY_LATENT_CHANNELS = 4


def _from_pretrained(cls: Any, source: str, subfolder: str | None, **kwargs: Any) -> Any:
    local = Path(source)
    if local.is_dir() and subfolder and not (local / subfolder).is_dir():
        subfolder = None  # a folder holding the component itself
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as err:
        raise ZooError(f"cannot load {cls.__name__} from {source!r} (subfolder {subfolder!r}): {err}") from err


def load_unet(source: str, subfolder: str | None = "unet", **kwargs: Any) -> nn.Module:
    """A ``UNet2DConditionModel`` or ``UNet2DModel`` from a Hub id or a folder, whichever its config names."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    # diffusers loads a UNet2DModel folder into a UNet2DConditionModel without complaint: follow the config
    classes = {cls.__name__: cls for cls in (UNet2DConditionModel, UNet2DModel)}
    local = Path(source)
    if local.is_dir() and subfolder and not (local / subfolder).is_dir():
        subfolder = None
    try:
        config = UNet2DModel.load_config(source, subfolder=subfolder)
    except (OSError, ValueError) as err:
        raise ZooError(f"cannot read the UNet config of {source!r} (subfolder {subfolder!r}): {err}") from err
    return _from_pretrained(classes.get(config.get("_class_name"), UNet2DConditionModel), source, subfolder, **kwargs)


def load_vae(source: str, subfolder: str | None = "vae", **kwargs: Any) -> nn.Module:
    """An ``AutoencoderKL`` from a Hub id or a folder."""
    from diffusers import AutoencoderKL

    return _from_pretrained(AutoencoderKL, source, subfolder, **kwargs)


def load_scheduler(source: str, subfolder: str | None = "scheduler", kind: str = "DDPMScheduler") -> Any:
    """A diffusers scheduler of class ``kind`` configured from a Hub id or a folder."""
    import diffusers

    return _from_pretrained(getattr(diffusers, kind), source, subfolder)


def tiny_unet(conditional: bool = True, in_channels: int = TINY_LATENT_CHANNELS, sample_size: int = 8,
              block_out_channels: tuple[int, ...] = (32, 64), attention: bool = True) -> nn.Module:
    """A toy ``UNet2DConditionModel`` (cross-attention to a 32-d context) or ``UNet2DModel``.

    ``attention=False`` drops the self-attention block of the unconditional UNet: the cheapest model
    that still learns to denoise, for CPU training in the mini suite.
    """
    from diffusers import UNet2DConditionModel, UNet2DModel

    common = dict(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                  block_out_channels=tuple(block_out_channels), layers_per_block=1, norm_num_groups=8)
    if conditional:
        return UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_CONTEXT_DIM, attention_head_dim=8, **common,
        )
    inner = "AttnDownBlock2D" if attention else "DownBlock2D"
    return UNet2DModel(down_block_types=("DownBlock2D", inner),
                       up_block_types=(inner.replace("Down", "Up"), "UpBlock2D"), **common)


def tiny_vae(latent_channels: int = TINY_LATENT_CHANNELS) -> nn.Module:
    """A toy ``AutoencoderKL`` with a 2x down-sampling (32x32 images <-> 16x16 latents)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=32,
    )


def tiny_scheduler(kind: str = "DDPMScheduler", steps: int = 1000) -> Any:
    """A scheduler with Stable Diffusion's beta schedule (scaled linear, 0.00085..0.012)."""
    import diffusers

    return getattr(diffusers, kind)(num_train_timesteps=steps, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear")


def noisy(alphas_cumprod: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``sqrt(a_t) x0 + sqrt(1 - a_t) noise``: the forward process at timesteps ``t``."""
    a = alphas_cumprod.to(x0.device, torch.float32)[t].view(-1, *([1] * (x0.dim() - 1)))
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)


def predict_noise(unet: nn.Module, x_t: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
    """The UNet's noise prediction, for conditional and unconditional UNets alike."""
    if context is not None:
        return unet(x_t, t, encoder_hidden_states=context).sample
    return unet(x_t, t).sample
