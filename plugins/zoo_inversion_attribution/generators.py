"""Generators behind one interface: an input tensor in, an image in [0, 1] out, differentiably.

Adapters:
    ``ModuleGenerator``        any ``nn.Module`` mapping noise to an image (a GAN generator, a VAE decoder);
    ``LatentDecoderGenerator`` the VAE decoder of a latent diffusion model alone (the input is the latent);
    ``DDIMGenerator``          a diffusion UNet (Stable Diffusion or a pixel DDPM/DDIM UNet) sampled by a
                               deterministic DDIM sampler from its initial noise, optionally decoded by a VAE.

``load_generator`` builds one from a plain-string spec, so that a method's constructor arguments stay JSON.
diffusers is imported inside the functions, never at module import.

Example:
    >>> g = load_generator("diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5", ddim_steps=10)
    >>> z = g.sample_input(2)             # (2, 4, 64, 64) initial noise
    >>> images = g(z)                     # (2, 3, 512, 512) in [0, 1], differentiable w.r.t. z
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zoo.errors import ZooError
from zoo_inversion_attribution.mini_decoder import MiniDecoder


class Generator(nn.Module):
    """Base of every adapter: ``forward(inputs) -> images`` in [0, 1], (B, 3, H, W).

    Attributes:
        input_shape: the shape of one input (without the batch dimension).
        output_size: (H, W) of the images it makes.
    """

    input_shape: tuple[int, ...] = ()
    output_size: tuple[int, int] = (0, 0)

    def sample_input(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> Tensor:
        """``n`` inputs drawn from the generator's prior, a standard normal."""
        return torch.randn((n, *self.input_shape), generator=generator, device=device or "cpu")

    def freeze(self) -> Generator:
        """Eval mode and no parameter gradients: only the input is optimised."""
        self.eval()
        self.requires_grad_(False)
        return self


class ModuleGenerator(Generator):
    """Any noise-to-image ``nn.Module`` (GAN generator, VAE decoder), for a third party's own model.

    Args:
        module: maps a (B, *input_shape) tensor to (B, 3, H, W) images.
        input_shape: shape of one input.
        output_range: the range of the module's output, mapped to [0, 1] (a tanh GAN: (-1, 1)).
    """

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...],
                 output_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.module = module
        self.input_shape = tuple(int(s) for s in input_shape)
        self.low, self.high = float(output_range[0]), float(output_range[1])
        with torch.no_grad():
            probe = module(torch.zeros(1, *self.input_shape))
        if probe.dim() != 4 or probe.shape[1] != 3:
            raise ZooError(f"generator {type(module).__name__} returns shape {tuple(probe.shape)}, not (B, 3, H, W)")
        self.output_size = (int(probe.shape[2]), int(probe.shape[3]))

    def forward(self, inputs: Tensor) -> Tensor:
        return (self.module(inputs) - self.low) / (self.high - self.low)


class LatentDecoderGenerator(Generator):
    """The VAE decoder of a latent diffusion model alone: the input is the (scaled) latent.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        latent_size: side of the latent (64 for Stable Diffusion 1.x at 512 px).
    """

    def __init__(self, vae: nn.Module, latent_size: int) -> None:
        super().__init__()
        self.vae = vae
        self.scaling = float(getattr(vae.config, "scaling_factor", 1.0))
        self.input_shape = (int(vae.config.latent_channels), latent_size, latent_size)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.output_size = (latent_size * factor, latent_size * factor)

    def forward(self, inputs: Tensor) -> Tensor:
        image = self.vae.decode(inputs / self.scaling).sample
        return (image.float() + 1) / 2


class DDIMGenerator(Generator):
    """Deterministic DDIM sampling (eta = 0) from the initial noise x_T, then the VAE decoder if any.

    The sampler is diffusers' ``DDIMScheduler`` built from the model's own scheduler config, so its
    ``prediction_type`` (epsilon, v_prediction, sample), timestep spacing, ``steps_offset``,
    ``set_alpha_to_one`` and sample clipping are those of the model. Every step is
    ``DDIMScheduler.step`` on the UNet's output; its arithmetic is plain tensor algebra, so gradients flow
    through every UNet call back to x_T.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (with ``context``) or ``UNet2DModel``.
        scheduler: the model's scheduler (any diffusers scheduler; its config builds the DDIM sampler).
        steps: number of sampler steps.
        vae: decodes latents to images (latent diffusion); None for a pixel-space UNet.
        context: the text conditioning (1, L, D) for a conditional UNet (the empty prompt's embedding).
        gradient_checkpointing: recompute each step's activations in the backward pass instead of
            storing them, trading about one extra forward for memory.
    """

    def __init__(self, unet: nn.Module, scheduler: Any, steps: int, vae: nn.Module | None = None,
                 context: Tensor | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        from diffusers import DDIMScheduler

        if steps < 1:
            raise ZooError(f"ddim_steps={steps}: the sampler needs at least one step")
        self.unet, self.vae = unet, vae
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.scheduler.set_timesteps(steps)
        self.register_buffer("context", context, persistent=False)
        self.gradient_checkpointing = gradient_checkpointing
        size = int(unet.config.sample_size)
        self.input_shape = (int(unet.config.in_channels), size, size)
        factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.output_size = (size * factor, size * factor)
        self.scaling = float(getattr(vae.config, "scaling_factor", 1.0)) if vae is not None else 1.0

    @property
    def timesteps(self) -> list[int]:
        """The sampler's timesteps, from noisiest to cleanest."""
        return [int(t) for t in self.scheduler.timesteps]

    def _step(self, x: Tensor, t: int) -> Tensor:
        timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if self.context is not None:
            context = self.context.expand(x.shape[0], -1, -1).to(x.dtype)
            output = self.unet(x, timestep, encoder_hidden_states=context).sample
        else:
            output = self.unet(x, timestep).sample
        return self.scheduler.step(output, t, x, eta=0.0).prev_sample.to(x.dtype)

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        for t in self.timesteps:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._step, x, t, use_reentrant=False)
            else:
                x = self._step(x, t)
        if self.vae is not None:
            x = self.vae.decode(x / self.scaling).sample
        # clamped to [0, 1] as diffusers' pipelines return their images (DDIMPipeline, the SD pipelines' postprocess)
        return ((x.float() + 1) / 2).clamp(0, 1)


# ------------------------------------------------------------------ the mini generator
def load_mini_decoder(folder: str | Path) -> ModuleGenerator:
    """A ``MiniDecoder`` saved by ``save_mini_decoder``, as a generator of latent vectors."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ZooError(f"{folder}: no config.json of a mini decoder")
    config = json.loads(config_path.read_text())
    decoder = MiniDecoder(config["latent_dim"], config["width"])
    decoder.load_state_dict(load_file(str(folder / "model.safetensors")))
    return ModuleGenerator(decoder, (decoder.latent_dim,), output_range=(0.0, 1.0))


# ------------------------------------------------------------------ loading by spec
def _scheduler(source: str) -> Any:
    from zoo.diffusion import load_scheduler

    return load_scheduler(source, kind="DDIMScheduler")


def _empty_prompt(source: str, prompt: str) -> Tensor:
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder")
    except (OSError, ValueError) as err:
        raise ZooError(f"cannot load the text encoder of {source!r} to encode the prompt: {err}") from err
    tokens = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        return encoder(tokens.input_ids).last_hidden_state


def _tiny_ddim(steps: int, latent: bool, gradient_checkpointing: bool) -> DDIMGenerator:
    from zoo.diffusion import TINY_CONTEXT_DIM, tiny_scheduler, tiny_unet, tiny_vae

    torch.manual_seed(0)
    unet = tiny_unet(conditional=latent, in_channels=4 if latent else 3)
    context = torch.zeros(1, 4, TINY_CONTEXT_DIM) if latent else None
    return DDIMGenerator(unet, tiny_scheduler("DDIMScheduler"), steps,
                         vae=tiny_vae() if latent else None, context=context,
                         gradient_checkpointing=gradient_checkpointing)


SPECS = {
    "mini": "the mini suite's model under test (MiniAttribution's generated images), built on demand",
    "mini-other": "the mini suite's second model of the same family",
    "mini-decoder:<folder>": "a MiniDecoder saved by save_mini_decoder",
    "diffusers:<Hub id or folder>": "UNet (+ VAE and text encoder when present) sampled by DDIM from x_T",
    "vae-decoder:<Hub id or folder>": "the VAE decoder alone, inverting the latent",
    "module:<package.module:factory>": "a callable returning an nn.Module noise->image generator, or a Generator "
                                       "(not from a checkpoint: only a --config file or Python may name code)",
    "tiny-ddim": "a random-init toy latent diffusion model (UNet + VAE), offline, for tests",
    "tiny-pixel-ddim": "a random-init toy pixel-space UNet, offline, for tests",
    "tiny-decoder": "a random-init toy VAE decoder, offline, for tests",
}


def load_generator(spec: str, ddim_steps: int = 50, gradient_checkpointing: bool = False, prompt: str = "",
                   latent_size: int = 64, input_shape: list[int] | None = None,
                   output_range: tuple[float, float] = (-1.0, 1.0)) -> Generator:
    """Build a frozen generator from a spec string (see ``SPECS``).

    Args:
        spec: what to load, e.g. ``"diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5"``.
        ddim_steps: sampler steps of ``diffusers:`` and ``tiny-*ddim`` generators.
        gradient_checkpointing: checkpoint every sampler step.
        prompt: the prompt a conditional UNet is sampled with (the empty prompt by default).
        latent_size: latent side of ``vae-decoder:`` generators.
        input_shape / output_range: of a ``module:`` generator.
    """
    from zoo.backbones import checkpoint_folder, checkpoint_path, checkpoint_source

    kind, _, arg = spec.partition(":")
    if kind == "module" and checkpoint_folder() is not None:
        raise ZooError(f"generator {spec!r} names code to import, which a checkpoint may not: a checkpoint is data, "
                       "never code; name a module: generator in a --config file or from Python")
    if kind in ("vae-decoder", "diffusers") and arg:
        arg = checkpoint_source(arg, f"generator {spec!r}:")  # a folder read from a checkpoint lies inside it
    if kind == "mini-decoder":
        arg = checkpoint_path(arg, f"generator {spec!r}:")
    if kind in ("mini", "mini-other"):
        from zoo_inversion_attribution.data import mini_generator_folder

        return load_mini_decoder(mini_generator_folder("generated" if kind == "mini" else "other_model")).freeze()
    if kind == "mini-decoder":
        return load_mini_decoder(arg).freeze()
    if kind == "tiny-ddim":
        return _tiny_ddim(ddim_steps, True, gradient_checkpointing).freeze()
    if kind == "tiny-pixel-ddim":
        return _tiny_ddim(ddim_steps, False, gradient_checkpointing).freeze()
    if kind == "tiny-decoder":
        from zoo.diffusion import tiny_vae

        torch.manual_seed(0)
        return LatentDecoderGenerator(tiny_vae(), latent_size=16).freeze()
    if kind == "vae-decoder" and arg:
        from zoo.diffusion import load_vae

        return LatentDecoderGenerator(load_vae(arg), latent_size).freeze()
    if kind == "diffusers" and arg:
        from zoo.diffusion import load_unet, load_vae

        unet = load_unet(arg)
        try:
            vae = load_vae(arg)
        except ZooError:  # a pixel-space DDPM/DDIM model has no VAE
            vae = None
        context = _empty_prompt(arg, prompt) if type(unet).__name__ == "UNet2DConditionModel" else None
        return DDIMGenerator(unet, _scheduler(arg), ddim_steps, vae=vae, context=context,
                             gradient_checkpointing=gradient_checkpointing).freeze()
    if kind == "module" and ":" in arg:
        module_name, _, attr = arg.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ZooError(f"generator {spec!r}: cannot import {attr} from {module_name}: {err}") from err
        made = factory()
        if isinstance(made, Generator):
            return made.freeze()
        if not isinstance(made, nn.Module) or input_shape is None:
            raise ZooError(f"generator {spec!r}: the factory must return a Generator, or an nn.Module "
                           "together with the argument input_shape")
        return ModuleGenerator(made, tuple(input_shape), tuple(output_range)).freeze()
    raise ZooError(f"unknown generator spec {spec!r}; use one of: " + "; ".join(f"{k} ({v})" for k, v in SPECS.items()))
