"""CNN detectors of generated images: a timm encoder with a one-logit head (the augmentations: zoo.recipes)."""

from __future__ import annotations

from typing import Any

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
