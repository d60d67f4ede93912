"""CNN detectors of generated images: a timm encoder with a one-logit head, and the paper's augmentations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zoo.backbones import Encoder, parse_spec
from zoo.errors import ZooError


class CNNDetectorNet(nn.Module):
    """Any timm encoder (classifier removed) followed by a linear layer to one logit.

    Args:
        encoder: a ``timm:<name>[.<tag>]`` spec, e.g. ``timm:resnet50.a1_in1k``.
        pretrained: start from timm's pretrained weights.
        image_size: input size; None keeps the encoder's own.
        model_kwargs: extra timm constructor arguments (tiny variants).
    """

    def __init__(self, encoder: str, pretrained: bool = True, image_size: int | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if parse_spec(encoder)[0] != "timm":
            raise ZooError(f"encoder={encoder!r}: a CNN detector needs a timm encoder, 'timm:<name>[.<tag>]'")
        self.encoder = Encoder(encoder, pretrained=pretrained, image_size=image_size,
                               model_kwargs=model_kwargs)
        self.head = nn.Linear(self.encoder.dim, 1)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) pre-processed images -> (B,) logits, higher = generated."""
        return self.head(self.encoder(images)).squeeze(1)


def release_cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, lr_min: float) -> Any:
    """The release's per-batch cosine decay: timm's ``CosineLRScheduler`` built as ``train.py`` builds it.

    davide-coccomini/Detecting-Images-Generated-by-Diffusers ``train.py``: ``CosineLRScheduler(optimizer,
    t_initial=num_epochs * len(dl), lr_min=lr * 1e-3, cycle_limit=9, t_in_epochs=False)``, then
    ``step_update(epoch * len(dl) + index)`` after each ``optimizer.step()``: batch 0 trains at the base
    rate and batch k > 0 at the rate of step k - 1. The caller steps it the same way.
    """
    from timm.scheduler.cosine_lr import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=steps, lr_min=lr_min, cycle_limit=9, t_in_epochs=False)


def normalization_of(transform: Any) -> tuple[Tensor, Tensor]:
    """Mean and std of the ``Normalize`` step inside a torchvision/timm/open_clip transform."""
    for step in getattr(transform, "transforms", [transform]):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return torch.as_tensor(step.mean, dtype=torch.float32), torch.as_tensor(step.std, dtype=torch.float32)
    raise ZooError(f"cannot find the normalisation of the transform {transform!r} to augment its images")


class PixelAugment(nn.Module):
    """Base of the training augmentations: undo the encoder's normalisation, augment 8-bit images, redo it.

    The augmentations act on the pre-processed batch, so the model's pre-processing stays the encoder's.
    A subclass implements ``augment_uint8`` (one (3, H, W) uint8 image on the CPU, for the codecs and
    filters that work on 8-bit images) and ``augment_float`` (one (3, H, W) image in [0, 1]).

    Args:
        mean / std: the encoder's normalisation.
    """

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def augment_uint8(self, image: Tensor) -> Tensor:
        return image

    def augment_float(self, image: Tensor) -> Tensor:
        return image

    def forward(self, images: Tensor) -> Tensor:
        pixels = (images.float() * self.std + self.mean).clamp(0, 1)
        # one image at a time, so that every image draws its own parameters
        as_bytes = (pixels * 255).round().to(torch.uint8).cpu()
        out = [self.augment_float(self.augment_uint8(image).to(images.device, torch.float32) / 255)
               for image in as_bytes]
        return ((torch.stack(out) - self.mean) / self.std).to(images.dtype)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def gauss_noise(image: Tensor, var_limit: tuple[float, float] = (10.0, 50.0)) -> Tensor:
    """albumentations' ``GaussNoise``: a variance drawn in ``var_limit`` (8-bit units), noise per pixel and channel."""
    sigma = _uniform(*var_limit) ** 0.5 / 255
    return (image + sigma * torch.randn_like(image)).clamp(0, 1)


def brightness_contrast(image: Tensor, limit: float = 0.2) -> Tensor:
    """albumentations' ``RandomBrightnessContrast``: ``x * (1 + c) + b``, c and b drawn in ``[-limit, limit]``."""
    return (image * (1 + _uniform(-limit, limit)) + _uniform(-limit, limit)).clamp(0, 1)


def fancy_pca(image: Tensor, alpha: float | None = None, alpha_std: float = 0.1) -> Tensor:
    """albumentations' ``FancyPCA`` as the release runs it (albumentations 1.3, ``functional.fancy_pca``).

    One scalar ``alpha`` ~ N(0, ``alpha_std``) per image (``FancyPCA.get_params``), the 3x3 colour covariance
    of the 8-bit image in [0, 1], its eigenvalues sorted in decreasing order, and a shift of
    ``column_stack(eigenvectors) @ (alpha * eigenvalues)`` added to every pixel, clipped and truncated to 8
    bits. This is albumentations' arithmetic, not Krizhevsky et al.'s (2012), who draw an alpha per
    component and use the eigenvectors as columns (``column_stack`` of the matrix uses them as rows).

    Args:
        image: (3, H, W) in [0, 1]; it is read as 8-bit values (rounded), as the release's images are.
        alpha: the drawn alpha (None: draw one).
        alpha_std: the standard deviation of alpha (albumentations' ``FancyPCA(alpha=0.1)``).
    """
    if alpha is None:
        alpha = float(torch.randn(())) * alpha_std
    values = (image.double() * 255).round()  # the 8-bit image
    pixels = (values / 255).reshape(3, -1)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(pixels))
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # decreasing, as albumentations sorts
    shift = eigenvectors.T @ (alpha * eigenvalues)  # np.column_stack(eig_vecs) stacks the rows as columns
    out = (values + shift.view(3, 1, 1) * 255).clamp(0, 255).floor()  # np.clip, then astype(np.uint8)
    return (out / 255).to(image.dtype)


class Augment(PixelAugment):
    """The training augmentations of the released ``images_dataset.py`` (``create_train_transforms``).

    Each image draws its own: JPEG re-compression (quality 60-100) with p 0.2, Gaussian noise (variance
    10-50 in 8-bit units) with p 0.3, horizontal flip with p 0.5, one of brightness-contrast, FancyPCA and
    hue-saturation-value with p 0.4, grayscale with p 0.2, and shift-scale-rotate (shift 0.1, scale 0.2,
    rotation 5 degrees, bilinear, black border) with p 0.5.

    Args:
        mean / std: the encoder's normalisation.
    """

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__(mean, std)
        from torchvision.transforms import v2

        self.jpeg = v2.RandomApply([v2.JPEG(quality=[60, 100])], p=0.2)  # ImageCompression(60, 100, p=0.2)
        self.pixels = v2.Compose([
            v2.RandomApply([gauss_noise], p=0.3),  # GaussNoise(p=0.3), var_limit (10, 50)
            v2.RandomHorizontalFlip(p=0.5),  # HorizontalFlip()
            # OneOf([RandomBrightnessContrast(), FancyPCA(), HueSaturationValue()], p=0.4); the hue, saturation
            # and value shifts (20, 30, 20 in OpenCV's 8-bit HSV) are torchvision's: hue 20/180 of the circle,
            # saturation and value as factors 1 +- 30/255 and 1 +- 20/255 where albumentations adds
            v2.RandomApply([v2.RandomChoice([
                brightness_contrast, fancy_pca,
                v2.ColorJitter(brightness=20 / 255, saturation=30 / 255, hue=20 / 180),
            ])], p=0.4),
            v2.RandomGrayscale(p=0.2),  # ToGray(p=0.2)
            # ShiftScaleRotate(shift_limit=0.1, scale_limit=0.2, rotate_limit=5, border_mode=BORDER_CONSTANT, p=0.5)
            v2.RandomApply([v2.RandomAffine(degrees=5, translate=(0.1, 0.1), scale=(0.8, 1.2),
                                            interpolation=v2.InterpolationMode.BILINEAR, fill=0)], p=0.5),
        ])

    def augment_uint8(self, image: Tensor) -> Tensor:
        return self.jpeg(image)

    def augment_float(self, image: Tensor) -> Tensor:
        return self.pixels(image)
