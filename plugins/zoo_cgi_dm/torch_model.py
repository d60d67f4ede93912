"""CGI-DM's math: block-wise masking, contrasting gradient inversion (PGD in L2) and the similarity score.

Everything here is a plain ``nn.Module`` or function over tensors: the diffusion models come in built
(see ``models.py``), the images come in as ``(B, 3, H, W)`` floats in [0, 1].

Example:
    >>> inverter = ContrastingGradientInversion(pre_unet, ft_unet, scheduler.alphas_cumprod, vae=vae,
    ...                                         scaling_factor=0.18215, steps=1000)
    >>> result = inverter.invert(images, context_ft=c, context_pre=c, names=ids)
    >>> scores = SimilarityScorer(Encoder("open_clip:ViT-B-32@openai"))(images, result.recovered_images)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.diffusion import noisy, predict_noise


def checkerboard_mask(height: int, width: int, block: int = 4) -> Tensor:
    """The block-wise mask, ``(1, 1, H, W)``, 1 where the latent is kept.

    In every ``block`` x ``block`` block the top-left and bottom-right quarters are kept and the other two
    zeroed: half of the latent survives, spread evenly over the image.
    """
    half = block // 2
    top = (torch.arange(height) % block < half)[:, None]
    left = (torch.arange(width) % block < half)[None, :]
    return ((top & left) | (~top & ~left)).float()[None, None]


@dataclass
class InversionResult:
    """What one inversion returns; latents are float32, images are in [0, 1]."""

    latents: Tensor  # z0, the encoded suspect images
    start_latents: Tensor  # z_init, the masked latents decoded and re-encoded
    recovered_latents: Tensor  # M*z0 + (1-M)*(z_init + delta)
    masked_images: Tensor  # decode(M * z0), rounded to 8 bits for a latent model
    recovered_images: Tensor  # decode(recovered latents), rounded to 8 bits
    losses: Tensor  # (steps, B) objective per step; NaN after an image stopped
    failed: dict[int, str] = field(default_factory=dict)  # batch index -> why the image stopped


class ContrastingGradientInversion(nn.Module):
    """Recovers the masked half of a latent by minimising the fine-tuned minus the pretrained denoising error.

    Args:
        pretrained_unet / finetuned_unet: noise predictors (``UNet2DConditionModel`` or ``UNet2DModel``),
            frozen; their parameter dtype is the compute dtype.
        alphas_cumprod: the shared scheduler's cumulative alphas, ``(T,)``.
        vae: ``AutoencoderKL`` of a latent model, or None for a pixel-space model (identity encoder).
        scaling_factor: the VAE's latent scaling factor (SD: 0.18215).
        prediction_type: ``epsilon`` or ``v_prediction`` (SD 2.x 768): the target of the denoising error.
        radius: L2 radius of the PGD ball around the starting latent (released code: 70).
        step_size: L2 length of each step along the normalised gradient (released code: 2.0).
        steps: PGD steps (released code: 1000).
        clip: latent values are clipped to [-clip, clip] (released code: 100).
        t_min / t_max: timesteps are drawn uniformly from {t_min..t_max} (released code: 1..999).
        shared_noise: draw one noise for both terms instead of two (variance reduction; the release draws two).
        timesteps_per_step: Monte Carlo timesteps averaged per step (the release uses 1).
        mask_block: side of the checkerboard blocks (paper: 4).
    """

    def __init__(
        self,
        pretrained_unet: nn.Module,
        finetuned_unet: nn.Module,
        alphas_cumprod: Tensor,
        vae: nn.Module | None = None,
        scaling_factor: float = 1.0,
        prediction_type: str = "epsilon",
        radius: float = 70.0,
        step_size: float = 2.0,
        steps: int = 1000,
        clip: float = 100.0,
        t_min: int = 1,
        t_max: int = 999,
        shared_noise: bool = False,
        timesteps_per_step: int = 1,
        mask_block: int = 4,
    ) -> None:
        super().__init__()
        self.pretrained_unet = _frozen(pretrained_unet)
        self.finetuned_unet = _frozen(finetuned_unet)
        self.vae = _frozen(vae) if vae is not None else None
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float().clone(), persistent=False)
        self.scaling_factor = scaling_factor
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r} is not 'epsilon' or 'v_prediction'")
        self.prediction_type = prediction_type
        self.radius, self.step_size, self.steps, self.clip = radius, step_size, steps, clip
        self.t_min, self.t_max = t_min, t_max
        self.shared_noise, self.timesteps_per_step, self.mask_block = shared_noise, timesteps_per_step, mask_block

    # ----------------------------------------------------------------- latent space
    def encode(self, images: Tensor) -> Tensor:
        """[0, 1] images -> latents (the VAE mean times the scaling factor, or pixels in [-1, 1])."""
        x = images.float() * 2 - 1
        if self.vae is None:
            return x
        x = x.to(_dtype(self.vae))
        return self.vae.encode(x).latent_dist.mean.float() * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> [0, 1] images."""
        if self.vae is not None:
            latents = self.vae.decode((latents / self.scaling_factor).to(_dtype(self.vae))).sample.float()
        return ((latents + 1) / 2).clamp(0, 1)

    @staticmethod
    def to_8bit(images: Tensor) -> Tensor:
        """[0, 1] images rounded to 8 bits, as the released code's ``numpy_to_pil`` (then PNG) does."""
        return (images * 255).round() / 255

    def mask(self, latents: Tensor) -> Tensor:
        return checkerboard_mask(latents.shape[-2], latents.shape[-1], self.mask_block).to(latents.device)

    # ----------------------------------------------------------------- objective
    def objective(self, z: Tensor, context_ft: Tensor | None, context_pre: Tensor | None,
                  generator: torch.Generator | None = None) -> Tensor:
        """Per-image ``||eps_ft(x_t) - eps||^2 - ||eps_pre(x_t') - eps'||^2``, averaged over timestep draws."""
        total = z.new_zeros(z.shape[0])
        for _ in range(self.timesteps_per_step):
            t = torch.randint(self.t_min, self.t_max + 1, (z.shape[0],), device=z.device, generator=generator)
            noise_ft = torch.randn(z.shape, device=z.device, generator=generator)
            noise_pre = noise_ft if self.shared_noise else torch.randn(z.shape, device=z.device, generator=generator)
            total = total + self._error(self.finetuned_unet, z, noise_ft, t, context_ft)
            total = total - self._error(self.pretrained_unet, z, noise_pre, t, context_pre)
        return total / self.timesteps_per_step

    def _error(self, unet: nn.Module, z: Tensor, noise: Tensor, t: Tensor, context: Tensor | None) -> Tensor:
        dtype = _dtype(unet)
        x_t = noisy(self.alphas_cumprod, z, noise, t)
        pred = predict_noise(unet, x_t.to(dtype), t, None if context is None else context.to(dtype)).float()
        target = noise
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            target = a.sqrt() * noise - (1 - a).sqrt() * z
        return F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)

    # ----------------------------------------------------------------- PGD
    def project(self, delta: Tensor, start: Tensor) -> Tensor:
        """Back into the L2 ball of ``radius`` (per image), then values of ``start + delta`` into [-clip, clip].

        Clipping moves every coordinate towards ``start`` (itself inside the box), so it never leaves the ball.
        """
        norm = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * (self.radius / norm.clamp_min(1e-12)).clamp(max=1.0)
        return (start + delta).clamp(-self.clip, self.clip) - start

    def invert(self, images: Tensor, context_ft: Tensor | None = None, context_pre: Tensor | None = None,
               names: Sequence[str] | None = None, generator: torch.Generator | None = None) -> InversionResult:
        """Mask, then recover the masked half of each image's latent by PGD; one batch, gradients to the latent only.

        An image whose objective or gradient turns NaN or infinite stops there (its last finite latent is
        kept) and is reported in ``failed``; the other images go on.
        """
        names = list(names) if names is not None else [f"image {i}" for i in range(images.shape[0])]
        with torch.no_grad():
            z0 = self.encode(images)
            keep = self.mask(z0)
            masked_images = self.decode(z0 * keep)
            if self.vae is not None:
                # as released: the masked image is decoded to an 8-bit picture, then encoded again
                masked_images = self.to_8bit(masked_images)
            start = self.encode(masked_images) if self.vae is not None else z0 * keep
        delta = torch.zeros_like(z0)
        active = torch.ones(z0.shape[0], dtype=torch.bool, device=z0.device)
        failed: dict[int, str] = {}
        losses = []
        for step in range(self.steps):
            delta.requires_grad_(True)
            z = keep * z0 + (1 - keep) * (start + delta)
            loss = self.objective(z, context_ft, context_pre, generator)
            usable = active & torch.isfinite(loss)
            (grad,) = torch.autograd.grad(torch.where(usable, loss, torch.zeros_like(loss)).sum(), delta)
            with torch.no_grad():
                usable &= torch.isfinite(grad).flatten(1).all(1)
                for i in torch.nonzero(active & ~usable).flatten().tolist():
                    failed[i] = (f"{names[i]}: CGI-DM objective is {float(loss[i])} (gradient finite: "
                                 f"{bool(torch.isfinite(grad[i]).all())}) at step {step}; inversion of this image stopped")
                active &= usable
                losses.append(torch.where(active, loss.detach(), torch.full_like(loss, float("nan"))))
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0) * (1 - keep)
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
                moved = self.project(delta - self.step_size * grad / norm, start)
                delta = torch.where(active.view(-1, *([1] * (grad.dim() - 1))), moved, delta.detach())
            if not active.any():
                break
        with torch.no_grad():
            recovered = keep * z0 + (1 - keep) * (start + delta)
            # as released, the recovered image is an 8-bit picture (saved as PNG, then scored)
            recovered_images = self.to_8bit(self.decode(recovered))
        return InversionResult(
            latents=z0, start_latents=start, recovered_latents=recovered, masked_images=masked_images,
            recovered_images=recovered_images,
            losses=torch.stack(losses) if losses else z0.new_zeros(0, z0.shape[0]), failed=failed,
        )


class SimilarityScorer(nn.Module):
    """Cosine similarity of suspect images to recovered images in a frozen encoder's embedding space.

    Images go through the encoder's own geometric pre-processing (its ``Resize`` and ``CenterCrop``
    steps, applied to the tensors, antialiased) and its normalisation, as the released code feeds the
    encoder through CLIP's ``preprocess`` / DINO's transform.

    Args:
        encoder: a ``zoo.backbones.Encoder`` (CLIP ViT-B/32, DINO ViT-S/16 or any).
        last_blocks: 1 uses the encoder's output; n > 1 (a timm ViT) concatenates the class tokens of its
            last n blocks, each through the final norm, as the released DINO scoring (n = 4: 4 x 384 = 1536-d).
        resize: the side the shorter image side is resized to before the encoder's centre crop, with the
            encoder's own interpolation; None keeps the encoder's (timm's DINO ViT-S/16: 248, from its
            crop_pct 0.9; the released DINO scoring: 256).
    """

    def __init__(self, encoder: nn.Module, last_blocks: int = 1, resize: int | None = None) -> None:
        super().__init__()
        from zoo.errors import ZooError

        self.encoder = encoder
        if last_blocks < 1:
            raise ZooError(f"last_blocks={last_blocks} must be at least 1")
        if last_blocks > 1 and (getattr(encoder, "library", None) != "timm"
                                or not hasattr(encoder.model, "forward_intermediates")):
            raise ZooError(f"last_blocks={last_blocks} needs a timm ViT encoder; {getattr(encoder, 'spec', encoder)!r} "
                           "has no intermediate blocks to concatenate")
        self.last_blocks = last_blocks
        steps = list(getattr(encoder.transform, "transforms", []))
        self.geometry = [step for step in steps if type(step).__name__ in ("Resize", "CenterCrop")]
        if resize is not None:
            from torchvision.transforms import v2

            self.geometry = [v2.Resize(resize, interpolation=step.interpolation, antialias=True)
                             if type(step).__name__ == "Resize" else step for step in self.geometry]
        if not self.geometry:  # an encoder without a resize step: its input size, squashed
            from torchvision.transforms import v2

            self.geometry = [v2.Resize((int(encoder.image_size),) * 2, antialias=True)]
        mean, std = _normalisation(steps)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the encoder's input: its resize and crop, then its normalisation."""
        x = images.float()
        for step in self.geometry:
            x = step(x)
        return (x.clamp(0, 1) - self.mean) / self.std

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """[0, 1] images -> unit embeddings."""
        x = self.preprocess(images)
        if self.last_blocks == 1:
            features = self.encoder(x)
        else:
            blocks = self.encoder.model.forward_intermediates(
                x, indices=self.last_blocks, norm=True, return_prefix_tokens=True, output_fmt="NLC",
                intermediates_only=True)
            features = torch.cat([prefix[:, 0] for _, prefix in blocks], dim=-1)
        return F.normalize(features.float(), dim=-1)

    def forward(self, suspects: Tensor, recovered: Tensor, groups: Sequence[str] | None = None) -> Tensor:
        """Scores, ``(B,)``: similarity to the own recovered image, or with ``groups`` the paper's rule,
        the maximum similarity to every recovered image of the same group (set)."""
        a, b = self.embed(suspects), self.embed(recovered)
        if groups is None:
            return (a * b).sum(-1)
        sims = a @ b.T
        same = torch.tensor([[g == h for h in groups] for g in groups], device=sims.device)
        return sims.masked_fill(~same, float("-inf")).amax(dim=1)


def _normalisation(steps: Sequence[object]) -> tuple[list[float], list[float]]:
    """The mean and std of the ``Normalize`` step among an encoder's transform steps."""
    for step in steps:
        if hasattr(step, "mean") and hasattr(step, "std"):
            return [float(m) for m in step.mean], [float(s) for s in step.std]
    return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
