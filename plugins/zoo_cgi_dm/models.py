"""Loading the two diffusion models CGI-DM contrasts: by Hub id or folder, full fine-tune or LoRA adapter.

Sources:
    a Hub id or a folder of a diffusers pipeline (``unet/``, ``scheduler/``, optionally ``vae/``,
    ``text_encoder/``, ``tokenizer/``), or a folder holding a UNet and its scheduler; ``zoo-mini`` names the
    tiny models of the mini suite (``zoo-mini`` = pretrained, ``zoo-mini:full`` and ``zoo-mini:lora``), trained
    on first use by ``finetune.py``.
    A LoRA fine-tune is a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) or
    diffusers LoRA weights (``pytorch_lora_weights.safetensors``, UNet2DConditionModel only).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.backbones import checkpoint_source
from zoo.diffusion import load_scheduler, load_unet, load_vae
from zoo.errors import ZooError

MINI = "zoo-mini"


@dataclass
class DiffusionModel:
    """One side of the contrast: its UNet, and its text encoder when the UNet is conditional."""

    source: str
    unet: nn.Module
    scheduler: Any
    tokenizer: Any = None
    text_encoder: nn.Module | None = None

    @property
    def conditional(self) -> bool:
        return "cross_attention_dim" in self.unet.config and self.unet.config.cross_attention_dim is not None

    @torch.no_grad()
    def encode_prompt(self, prompt: str, device: torch.device) -> Tensor | None:
        """The text context ``(1, L, D)`` of ``prompt`` (None for an unconditional UNet)."""
        if not self.conditional:
            return None
        if self.text_encoder is None:
            raise ZooError(f"{self.source}: the UNet is conditional but no text_encoder/tokenizer was found beside it")
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        self.text_encoder.to(device)
        return self.text_encoder(ids.to(device))[0]


def resolve(source: str) -> str:
    """``zoo-mini[:full|:lora]`` -> the cached folder (trained on first use); a Hub id or a folder unchanged.

    A folder read from a checkpoint must lie inside the checkpoint's folder (``backbones.checkpoint_source``).
    """
    if source == MINI or source.startswith(MINI + ":"):
        from zoo_cgi_dm.finetune import ensure_mini_models

        kind = source.partition(":")[2] or "pretrained"
        folders = ensure_mini_models()
        if kind not in folders:
            raise ZooError(f"{source!r}: the mini models are {MINI}, {MINI}:full and {MINI}:lora")
        return str(folders[kind])
    return checkpoint_source(source, "CGI-DM model")


def has_component(source: str, name: str) -> bool:
    """Whether the pipeline at ``source`` (folder or Hub id) has the component ``name``."""
    local = Path(source)
    if local.is_dir():
        return (local / name).is_dir()
    try:
        from huggingface_hub import hf_hub_download

        index = json.loads(Path(hf_hub_download(source, "model_index.json")).read_text())
    except Exception:  # no pipeline index (a bare UNet repository, or offline): no such component
        return False
    return name in index


def load_model(source: str, base: DiffusionModel | None = None) -> DiffusionModel:
    """The UNet, scheduler and text encoder at ``source``; missing pieces come from ``base`` (the pretrained)."""
    source = resolve(source)
    unet = load_unet(source)
    if has_component(source, "scheduler") or base is None:
        scheduler = load_scheduler(source, kind="DDPMScheduler")
    else:
        scheduler = base.scheduler
    model = DiffusionModel(source, unet, scheduler)
    if model.conditional:
        if has_component(source, "text_encoder"):
            from transformers import CLIPTextModel, CLIPTokenizer

            try:
                model.tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
                model.text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder").eval()
            except OSError as err:
                raise ZooError(f"cannot load the text encoder of {source!r}: {err}") from err
            model.text_encoder.requires_grad_(False)
        elif base is not None:
            model.tokenizer, model.text_encoder = base.tokenizer, base.text_encoder
    return model


def load_vae_of(source: str) -> tuple[nn.Module | None, float]:
    """The VAE of the pipeline at ``source`` and its scaling factor; (None, 1.0) for a pixel-space model."""
    source = resolve(source)
    if not has_component(source, "vae"):
        return None, 1.0
    vae = load_vae(source)
    return vae, float(getattr(vae.config, "scaling_factor", 0.18215))


def apply_lora(base: DiffusionModel, adapter: str) -> DiffusionModel:
    """A copy of ``base`` with the LoRA adapter at ``adapter`` merged into its UNet.

    A peft adapter whose modules or shapes do not fit the base raises a ZooError naming the mismatch.
    """
    adapter = resolve(adapter)
    folder = Path(adapter)
    unet = copy.deepcopy(base.unet)
    if (folder / "adapter_config.json").is_file():
        _apply_peft(unet, folder, base.source)
    elif hasattr(unet, "load_lora_adapter"):
        _apply_diffusers_lora(unet, folder, base.source)
    else:
        raise ZooError(f"{adapter!r} holds no adapter_config.json (a peft LoRA adapter), and the base UNet of "
                       f"{base.source!r} ({type(unet).__name__}) takes no diffusers LoRA weights")
    return DiffusionModel(adapter, unet, base.scheduler, base.tokenizer, base.text_encoder)


def _apply_diffusers_lora(unet: nn.Module, path: Path, base_source: str) -> None:
    """Merge diffusers LoRA weights (``pytorch_lora_weights.safetensors``, the file or its folder) into ``unet``.

    The keys are those diffusers' training scripts write (``unet.<module>.lora.down.weight``, or peft's
    ``lora_A``/``lora_B``, with optional ``.alpha``); diffusers' own loader reads and converts them. Only
    safetensors are read.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    folder, weight_name = (path.parent, path.name) if path.is_file() else (path, None)
    try:
        state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(
            str(folder), weight_name=weight_name, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ZooError(f"{path}: no diffusers LoRA weights (pytorch_lora_weights.safetensors) and no peft "
                       f"adapter_config.json: {err}") from err
    text = sorted(k for k in state if k.startswith(("text_encoder.", "lora_te")))
    if text:
        raise ZooError(f"LoRA weights {path} also fine-tune the text encoder ({text[0]!r}); CGI-DM takes the text "
                       "encoder from the pretrained model, so give a UNet-only LoRA or a full pipeline folder")
    prefix = "unet" if any(k.startswith("unet.") for k in state) else None
    try:
        unet.load_lora_adapter(state, prefix=prefix, network_alphas=alphas)
        unet.fuse_lora()
    except (ValueError, RuntimeError, KeyError) as err:
        raise ZooError(f"LoRA weights {path} do not fit the base UNet of {base_source!r}: {err}") from err


def _apply_peft(unet: nn.Module, folder: Path, base_source: str) -> None:
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ZooError(f"LoRA adapter {folder}: no adapter_model.safetensors")
    config = LoraConfig.from_pretrained(str(folder))
    try:
        inject_adapter_in_model(config, unet)
    except ValueError as err:
        raise ZooError(f"LoRA adapter {folder} does not match the base UNet of {base_source!r}: {err}") from err
    own = {k.replace(".default", ""): v for k, v in unet.state_dict().items() if "lora_" in k}
    if not own:
        raise ZooError(f"LoRA adapter {folder} does not match the base UNet of {base_source!r}: its target modules "
                       f"{sorted(config.target_modules)} name no module of {type(unet).__name__}")
    state = load_file(str(weights))
    for key, value in state.items():
        if key not in own:
            raise ZooError(f"LoRA adapter {folder}: weight {key!r} has no module in the base UNet of {base_source!r}")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ZooError(f"LoRA adapter {folder}: weight {key!r} has shape {tuple(value.shape)}, the base UNet of "
                           f"{base_source!r} needs {tuple(own[key].shape)}")
    missing = sorted(set(own) - set(state))
    if missing:
        raise ZooError(f"LoRA adapter {folder} lacks {len(missing)} weights its config targets, e.g. {missing[0]!r}")
    set_peft_model_state_dict(unet, state)
    # merged into the base weights: the fine-tuned UNet then costs what the pretrained one costs
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()


def check_compatible(pre: DiffusionModel, ft: DiffusionModel, vae: nn.Module | None) -> None:
    """Both models must share the latent shape and the noise schedule, else the contrast means nothing."""
    for key in ("in_channels", "out_channels", "sample_size"):
        a, b = pre.unet.config.get(key), ft.unet.config.get(key)
        if a != b:
            raise ZooError(f"the pretrained ({pre.source}) and fine-tuned ({ft.source}) UNets differ in {key}: {a} vs {b}")
    if pre.conditional != ft.conditional or (
        pre.conditional and pre.unet.config.cross_attention_dim != ft.unet.config.cross_attention_dim
    ):
        raise ZooError(f"the pretrained ({pre.source}) and fine-tuned ({ft.source}) UNets take different text contexts")
    if vae is not None and vae.config.latent_channels != pre.unet.config.in_channels:
        raise ZooError(f"the VAE of {pre.source} has {vae.config.latent_channels} latent channels, "
                       f"the UNets take {pre.unet.config.in_channels}")
    a, b = pre.scheduler, ft.scheduler
    if a.config.num_train_timesteps != b.config.num_train_timesteps:
        raise ZooError(f"the schedulers of {pre.source} and {ft.source} differ in num_train_timesteps: "
                       f"{a.config.num_train_timesteps} vs {b.config.num_train_timesteps}")
    if not torch.allclose(a.alphas_cumprod, b.alphas_cumprod, rtol=1e-4, atol=1e-6):
        raise ZooError(f"the schedulers of {pre.source} and {ft.source} have different noise schedules "
                       f"(beta_schedule {a.config.beta_schedule} {a.config.beta_start}..{a.config.beta_end} vs "
                       f"{b.config.beta_schedule} {b.config.beta_start}..{b.config.beta_end})")
    if a.config.prediction_type != b.config.prediction_type:
        raise ZooError(f"the schedulers of {pre.source} and {ft.source} differ in prediction_type: "
                       f"{a.config.prediction_type} vs {b.config.prediction_type}")
