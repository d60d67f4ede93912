"""CNN detectors of generated images: a timm backbone with a one-logit head, and the paper's augmentations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zoo.backbones import Encoder
from zoo.errors import ZooError


class CNNDetectorNet(nn.Module):
    """Any timm backbone (classifier removed) followed by a linear layer to one logit.

    Args:
        backbone: a timm model name, with an optional ``.tag``, e.g. ``resnet50.a1_in1k``.
        pretrained: start from timm's pretrained weights.
        image_size: input size; None keeps the backbone's own.
        model_kwargs: extra timm constructor arguments (tiny variants).
    """

    def __init__(self, backbone: str, pretrained: bool = True, image_size: int | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.encoder = Encoder(f"timm:{backbone}", pretrained=pretrained, image_size=image_size,
                               model_kwargs=model_kwargs)
        self.head = nn.Linear(self.encoder.dim, 1)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) pre-processed images -> (B,) logits, higher = generated."""
        return self.head(self.encoder(images)).squeeze(1)


def normalization_of(transform: Any) -> tuple[Tensor, Tensor]:
    """Mean and std of the ``Normalize`` step inside a torchvision/timm/open_clip transform."""
    for step in getattr(transform, "transforms", [transform]):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return torch.as_tensor(step.mean, dtype=torch.float32), torch.as_tensor(step.std, dtype=torch.float32)
    raise ZooError(f"cannot find the normalisation of the transform {transform!r} to augment its images")


class Augment(nn.Module):
    """The paper's training augmentations, drawn independently for every image of a batch.

    JPEG re-compression (quality 60-100), Gaussian noise, horizontal flip, colour jitter, grayscale and
    shift-scale-rotate, each applied with probability ``p``. They act on the pre-processed batch:
    the images are brought back to [0, 1] with the encoder's own mean and std, augmented, and
    normalised again, so the model's pre-processing stays the encoder's.

    Args:
        mean / std: the encoder's normalisation.
        p: probability of each augmentation.
        jpeg_quality: range of the JPEG quality.
        noise_std: standard deviation of the Gaussian noise, in [0, 1] pixel units.
    """

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, p: float = 0.5,
                 jpeg_quality: tuple[int, int] = (60, 100), noise_std: float = 0.02) -> None:
        super().__init__()
        from torchvision.transforms import v2

        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.jpeg = v2.RandomApply([v2.JPEG(quality=list(jpeg_quality))], p=p)
        self.pixels = v2.Compose([
            v2.RandomApply([v2.GaussianNoise(sigma=noise_std, clip=True)], p=p),
            v2.RandomHorizontalFlip(p=p),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)], p=p),
            v2.RandomGrayscale(p=p),
            # albumentations' ShiftScaleRotate defaults: shift 6%, scale +-10%, rotation +-45 degrees
            v2.RandomApply([v2.RandomAffine(degrees=45, translate=(0.0625, 0.0625), scale=(0.9, 1.1))], p=p),
        ])

    def forward(self, images: Tensor) -> Tensor:
        pixels = (images.float() * self.std + self.mean).clamp(0, 1)
        # JPEG is encoded by libjpeg on the CPU, one image at a time so every image draws its own quality
        as_bytes = (pixels * 255).round().to(torch.uint8).cpu()
        out = []
        for image in as_bytes:
            image = self.jpeg(image).to(images.device, torch.float32) / 255
            out.append(self.pixels(image))
        return ((torch.stack(out) - self.mean) / self.std).to(images.dtype)
