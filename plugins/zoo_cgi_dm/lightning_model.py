"""CGI-DM as a zoo method: copyright authentication by contrasting gradient inversion (nothing is trained)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from zoo.module import ZooModule, seeded

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SCORE_RULES = ("pair", "max")
SCORES = ("encoder", "pixel")
ARTIFACT_SIZE = 128


class CGIDM(ZooModule):
    """Scores a suspect image by how well the fine-tuned-vs-pretrained gradient inversion recovers it.

    The diffusion models are given by name (Hub id, folder or ``zoo-mini``) and are not part of the
    saved weights; the scoring encoder is.

    Args:
        pretrained: the pretrained pipeline or UNet folder (Hub id or folder).
        finetuned: the fine-tuned model: a pipeline/UNet folder (``finetune_type="full"``) or a LoRA
            adapter on ``pretrained`` (``finetune_type="lora"``).
        finetune_type: ``full`` (DreamBooth, full fine-tune) or ``lora``.
        prompt: the text condition c of both models (conditional UNets).
        prompts: a prompt per set (the batch's ``source``), e.g. ``{"member": "sks style"}``; others use ``prompt``.
        encoder: the scoring encoder by name (paper: CLIP ViT-B/32 and DINO ViT-S/16).
        encoder_pretrained: load the encoder's pretrained weights.
        encoder_kwargs: extra ``zoo.backbones.Encoder`` constructor arguments (tiny variants).
        encoder_blocks: 1 scores with the encoder's output; 4 concatenates the class tokens of a timm ViT's
            last 4 blocks (the released DINO scoring, 1536-d for ViT-S/16).
        encoder_resize: the shorter side is resized to this before the encoder's centre crop; None keeps the
            encoder's own (the released DINO scoring: 256 before its crop 224, where timm's DINO has 248).
        score_rule: ``pair`` (similarity to the own recovered image) or ``max`` (paper's set rule: maximum
            similarity over all recovered images of the same set, i.e. same ``source``, in the batch).
        score: ``encoder`` (paper: the scoring encoder's similarity, see ``score_rule``) or ``pixel`` (minus
            the mean squared error between the suspect and its recovered image over the whole image, in
            [0, 1] units; for a pixel-space model the kept half is the original, so this ranks as the error
            over the recovered half). Predictions carry both as ``encoder_score`` and ``pixel_score``.
        radius, step_size, steps, clip, shared_noise, timesteps_per_step: PGD, see ``ContrastingGradientInversion``.
        precision: UNet dtype on CUDA, ``bf16`` or ``fp16`` (always fp32 on the CPU).
        image_size: the resolution of the diffusion model's images; None: UNet sample size x VAE factor.
        seed: seed of the timesteps and noises drawn during PGD.
        save_artifacts: write an original / masked / recovered PNG per image into the run's artifact folder.
    """

    task = "copyright"
    paper = ("CGI-DM: Digital Copyright Authentication for Diffusion Models via Contrasting Gradient Inversion "
             "(CVPR 2024)")
    display_name = "CGI-DM"
    trains = False
    tiny_trainer = {"max_epochs": 1}
    _tiny = {"pretrained": "zoo-mini", "encoder": "open_clip:zoo-tiny-clip", "encoder_pretrained": False,
             "steps": 20, "radius": 8.0, "step_size": 0.5}
    variants = {
        "tiny": {**_tiny, "finetuned": "zoo-mini:full", "finetune_type": "full"},
        "tiny_lora": {**_tiny, "finetuned": "zoo-mini:lora", "finetune_type": "lora"},
        # the mini suite's: the released PGD scaled to the mini models' 3x16x16 pixel "latent". Radius 70 on a
        # 4x64x64 SD latent (16384 elements) is 70 / sqrt(16384) ~ 0.55 per element (root mean square), i.e.
        # 0.55 * sqrt(768) ~ 15 on 768 elements; the step 0.5 is the released 2.0 scaled alike (~0.43); 500
        # steps (released: 1000) cross that ball many times. Shared noise: both models denoise the same draw,
        # so their difference is not drowned in the noise of two draws. Pixel score: the encoder is random-init.
        "mini": {**_tiny, "finetuned": "zoo-mini:full", "finetune_type": "full", "steps": 500, "radius": 15.0,
                 "shared_noise": True, "score": "pixel"},
    }

    def __init__(
        self,
        pretrained: str = "CompVis/stable-diffusion-v1-4",  # paper and released code: SD 1.4
        finetuned: str = "",
        finetune_type: str = "full",
        prompt: str = "",
        prompts: dict[str, str] | None = None,
        encoder: str = "open_clip:ViT-B-32@openai",  # paper: CLIP ViT-B/32 (and DINO ViT-S/16)
        encoder_pretrained: bool = True,
        encoder_kwargs: dict[str, Any] | None = None,
        encoder_blocks: int = 1,  # released code: CLIP's output; DINO: class tokens of the last 4 blocks
        encoder_resize: int | None = None,  # released code: CLIP's own; DINO: Resize(256) (dino_distance.py)
        score_rule: str = "pair",
        score: str = "encoder",
        radius: float = 70.0,  # released code: L2 radius 70
        step_size: float = 2.0,  # released code: L2 step 2.0
        steps: int = 1000,  # released code: 1000 PGD steps
        clip: float = 100.0,  # released code: latents clipped to [-100, 100]
        shared_noise: bool = False,  # released code: two independent noise draws
        timesteps_per_step: int = 1,  # released code: one timestep per step
        precision: str = "bf16",
        image_size: int | None = None,
        seed: int = 0,
        save_artifacts: bool = True,
    ) -> None:
        super().__init__()
        from zoo.errors import ZooError

        if not finetuned:
            raise ZooError("CGIDM needs finetuned=<folder, Hub id or LoRA adapter> beside pretrained")
        if finetune_type not in ("full", "lora"):
            raise ZooError(f"CGIDM finetune_type={finetune_type!r}: choose 'full' or 'lora'")
        if score_rule not in SCORE_RULES:
            raise ZooError(f"CGIDM score_rule={score_rule!r}: choose one of {', '.join(SCORE_RULES)}")
        if score not in SCORES:
            raise ZooError(f"CGIDM score={score!r}: choose one of {', '.join(SCORES)}")
        if precision not in PRECISIONS:
            raise ZooError(f"CGIDM precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.prompt, self.prompts = prompt, dict(prompts or {})
        self.score_rule, self.score, self.precision = score_rule, score, precision
        self.seed, self.save_artifacts = seed, save_artifacts
        self._build_inverter(pretrained, finetuned, finetune_type, dict(
            radius=radius, step_size=step_size, steps=steps, clip=clip, shared_noise=shared_noise,
            timesteps_per_step=timesteps_per_step))
        with seeded(seed):  # a random-init scoring encoder is the same model on every run of the same seed
            self.scorer = self._build_scorer(encoder, encoder_pretrained, encoder_kwargs, encoder_blocks, encoder_resize)
        self.image_size = image_size or self._native_size
        self.register_buffer("calibrated", torch.tensor(False))
        self._contexts: dict[tuple[str, str], Tensor | None] = {}
        self._calls = 0

    def _build_inverter(self, pretrained: str, finetuned: str, finetune_type: str, pgd: dict[str, Any]) -> None:
        from zoo_cgi_dm import models
        from zoo_cgi_dm.torch_model import ContrastingGradientInversion

        pre = models.load_model(pretrained)
        ft = models.apply_lora(pre, finetuned) if finetune_type == "lora" else models.load_model(finetuned, base=pre)
        vae, scaling = models.load_vae_of(pretrained)
        models.check_compatible(pre, ft, vae)
        self._pre, self._ft = pre, ft
        factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self._native_size = int(pre.unet.config.sample_size) * factor
        # not registered as submodules: the diffusion models are named by the config, not saved with the method
        self._inverter = [ContrastingGradientInversion(
            pre.unet, ft.unet, pre.scheduler.alphas_cumprod, vae=vae, scaling_factor=scaling,
            prediction_type=pre.scheduler.config.prediction_type, **pgd)]

    @staticmethod
    def _build_scorer(spec: str, pretrained: bool, kwargs: dict[str, Any] | None, blocks: int,
                      resize: int | None = None) -> torch.nn.Module:
        from zoo.backbones import Encoder, freeze
        from zoo_cgi_dm.torch_model import SimilarityScorer

        return SimilarityScorer(freeze(Encoder(spec, pretrained=pretrained, model_kwargs=kwargs)), blocks, resize)

    def is_calibrated(self) -> bool:
        return bool(self.calibrated)

    @property
    def inverter(self) -> torch.nn.Module:
        return self._inverter[0]

    def image_transform(self) -> Callable[[Any], Tensor]:
        """As released: the shorter side resized to the model's resolution (bilinear), a centre crop, [0, 1]."""
        from torchvision.transforms import v2

        # the encoder resizes, crops and normalises the [0, 1] image itself
        return v2.Compose([
            v2.Lambda(_rgb),
            v2.Resize(self.image_size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(self.image_size), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
        ])

    def _place(self, device: torch.device) -> None:
        inverter = self.inverter
        if inverter.alphas_cumprod.device != device:
            dtype = PRECISIONS[self.precision] if device.type == "cuda" else torch.float32
            inverter.to(device)
            inverter.pretrained_unet.to(dtype)
            inverter.finetuned_unet.to(dtype)
            self._contexts.clear()

    def _context(self, model: Any, prompts: list[str], device: torch.device) -> Tensor | None:
        out = []
        for prompt in prompts:
            key = (model.source, prompt)
            if key not in self._contexts:
                self._contexts[key] = model.encode_prompt(prompt, device)
            out.append(self._contexts[key])
        if out[0] is None:
            return None
        return torch.cat(out)

    def invert(self, images: Tensor, sources: list[str], names: list[str]) -> Any:
        """The inversion of one batch (see ``ContrastingGradientInversion.invert``); NaN images are reported."""
        device = images.device
        self._place(device)
        prompts = [self.prompts.get(s, self.prompt) for s in sources]
        generator = torch.Generator(device).manual_seed(self.seed + self._calls)
        self._calls += 1
        # evaluation runs under inference mode; the inversion needs autograd for its latent
        with torch.inference_mode(False), torch.enable_grad():
            result = self.inverter.invert(
                images.clone(), self._context(self._ft, prompts, device), self._context(self._pre, prompts, device),
                names=names, generator=generator)
        for message in result.failed.values():
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return result

    def predict_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        # without labels (your own images) the batch is one set under the default prompt
        images, names = batch["image"], list(batch["id"])
        sources = list(batch.get("source") or [""] * len(names))
        result = self.invert(images, sources, names)
        with torch.inference_mode(False), torch.no_grad():
            encoder = self.scorer(images.clone(), result.recovered_images,
                                  groups=sources if self.score_rule == "max" else None).float()
            recovered = result.recovered_images.to(images.device)
            pixel = -(images.float().clamp(0, 1) - recovered.float()).square().flatten(1).mean(1)
        both = {"encoder": encoder, "pixel": pixel}
        for i in torch.nonzero(~torch.isfinite(both[self.score])).flatten().tolist():
            warnings.warn(f"{names[i]}: CGI-DM score is not finite (the image holds NaN or inf); scored -1",
                          RuntimeWarning, stacklevel=2)
        # the encoder's similarity lies in [-1, 1] and minus a squared error in [-1, 0]: -1 is the worst of both
        both = {k: torch.nan_to_num(v, nan=-1.0, posinf=-1.0, neginf=-1.0) for k, v in both.items()}
        pred: dict[str, Any] = {"score": both[self.score], "encoder_score": both["encoder"],
                                "pixel_score": both["pixel"]}
        written = self._write_artifacts(images, result, names)
        if written:
            pred["artifact"] = written
        return pred

    def _write_artifacts(self, images: Tensor, result: Any, names: list[str]) -> list[str]:
        """One picture per image (original | masked | recovered); their paths, or none without a folder."""
        paths = self.artifact_paths(names) if self.save_artifacts else None
        if paths is None:
            return []
        from torchvision.utils import save_image

        for i, path in enumerate(paths):
            panels = torch.stack([images[i].float().clamp(0, 1), result.masked_images[i], result.recovered_images[i]])
            if panels.shape[-1] < ARTIFACT_SIZE:  # tiny images blown up so that they can be seen
                panels = torch.nn.functional.interpolate(panels, scale_factor=ARTIFACT_SIZE // panels.shape[-1])
            save_image(panels.cpu(), path, nrow=3, padding=1)
        return [str(p) for p in paths]

    # ----------------------------------------------------------------- threshold without a validate run
    def on_validation_epoch_end(self) -> None:
        calibrate = bool(self._val_scores)
        super().on_validation_epoch_end()
        if calibrate:
            self.calibrated.fill_(True)

    def on_test_start(self) -> None:
        """``zoo test`` alone: calibrate the threshold on the validation split first, as the harness would."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if bool(self.calibrated) or datamodule is None or not getattr(datamodule, "splits", {}).get("val"):
            return
        from zoo.tasks.metrics import best_accuracy_threshold

        scores, labels = [], []
        for batch in datamodule.val_dataloader():
            batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            scores.append(self.predict_batch(batch)["score"].cpu())
            labels.append(batch["label"].cpu())
        scores_, labels_ = torch.cat(scores), torch.cat(labels)
        if labels_.min() != labels_.max():
            self.threshold.fill_(best_accuracy_threshold(scores_, labels_))
            self.calibrated.fill_(True)


def _rgb(image: Any) -> Any:
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
